"""Inference: generation with the KV cache, the evaluation predictor and `eve-ms chat`.

Modules, in the order a request passes through them: `inputs` (chat prompts as token ids,
images as pixels), `generate` (`Generator`: prefill and decode steps, left-padded batches,
automatic language-only routing for text prompts), `sampling` (greedy / temperature / top-k /
top-p on the host, seeded), `streaming` (stop strings, streamed text), `scoring`
(continuation log-likelihoods), `predictor` (`build_predictor` for `eve-ms eval`), `chat`.
"""
