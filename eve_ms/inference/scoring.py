"""Token log-probabilities of texts, for the multiple-choice language benchmarks (the language-only path).

`sequence_mean_losses` gives OpenCompass's perplexity score of whole token sequences (the
protocol of the choice benchmarks); `continuation_logliks` scores (context ids, continuation ids)
pairs: the sum over the continuation's tokens of log p(token | everything before it).
Sequences are right-padded into batches (a causal model: padding after a sequence does not
change it); a sequence longer than the model's positions keeps its last `max_position_embeddings`
tokens (the start of the context is dropped, as lm-evaluation-harness does for log-likelihoods).
With `length_bucket` > 1 (graph mode, which compiles one graph per input shape) every batch is
padded to a multiple of it in length and to `batch_size` rows, so a whole evaluation runs on a
few shapes instead of compiling one per batch; padding after and below the real tokens changes
none of their scores (tests/inference/test_predictor.py checks graph mode against PyNative).
The log-softmax and the pick of each target's log-probability run inside the model call, so only
[B, S] numbers come back to the host.
"""
from __future__ import annotations

from typing import Sequence

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops


class TokenLogProbs(nn.Cell):
    """input_ids, attention_mask [B, S] -> log p(input_ids[:, t + 1] | input_ids[:, :t + 1]) [B, S - 1] float32."""

    def __init__(self, model):
        super().__init__(auto_prefix=False)  # keep the model's parameter names
        self.llm = model.llm

    def construct(self, input_ids, attention_mask):
        logits = self.llm.forward_embeds(self.llm.embed(input_ids), attention_mask)[0]
        log_probs = ops.log_softmax(logits[:, :-1].astype(ms.float32), -1)
        targets = input_ids[:, 1:].astype(ms.int32).expand_dims(-1)
        return ops.gather_elements(log_probs, 2, targets).squeeze(-1)


def _token_log_probs(cell: TokenLogProbs, sequences: list[list[int]], batch_size: int, pad_token_id: int,
                     length_bucket: int = 1):
    """log p(sequence[t] | sequence[:t]) for t = 1..n-1 of each sequence, as float64 arrays, in order."""
    for first in range(0, len(sequences), batch_size):
        batch = sequences[first:first + batch_size]
        length = max(len(s) for s in batch)
        rows = len(batch)
        if length_bucket > 1:
            length = -(-length // length_bucket) * length_bucket
            rows = batch_size
        ids = np.full((rows, length), pad_token_id, np.int32)
        mask = np.zeros((rows, length), np.int32)
        for row, sequence in enumerate(batch):
            ids[row, :len(sequence)] = sequence
            mask[row, :len(sequence)] = 1
        log_probs = cell(Tensor(ids), Tensor(mask)).asnumpy()
        for row, sequence in enumerate(batch):
            yield log_probs[row, :len(sequence) - 1].astype(np.float64)


def sequence_mean_losses(cell: TokenLogProbs, sequences: Sequence, batch_size: int = 8,
                         pad_token_id: int = 0, length_bucket: int = 1) -> list[float]:
    """OpenCompass's ppl score of each token sequence (bos first): the summed loss of its n - 1 predicted
    tokens divided by its n tokens, as `_get_ppl` of OpenCompass's HuggingFace model computes it
    (`loss.sum(-1) / lens`, lens counting every token of the unpadded input)."""
    sequences = [list(s) for s in sequences]
    for index, sequence in enumerate(sequences):
        if len(sequence) < 2:
            raise ValueError(f"sequence {index}: {len(sequence)} token(s); a loss needs at least two")
    return [float(-lp.sum() / len(s))
            for lp, s in zip(_token_log_probs(cell, sequences, batch_size, pad_token_id, length_bucket), sequences)]


def continuation_logliks(cell: TokenLogProbs, pairs: Sequence[tuple], max_length: int, batch_size: int = 8,
                         pad_token_id: int = 0, length_bucket: int = 1) -> list[float]:
    """Summed log-probability of each pair's continuation given its context (both 1-D token id lists)."""
    sequences, starts = [], []
    for index, (context, continuation) in enumerate(pairs):
        context, continuation = list(context), list(continuation)
        if not context:
            raise ValueError(f"pair {index}: empty context (a continuation needs at least one token before it)")
        if not continuation:
            raise ValueError(f"pair {index}: empty continuation")
        if len(continuation) >= max_length:
            raise ValueError(f"pair {index}: continuation of {len(continuation)} tokens does not fit "
                             f"max_position_embeddings={max_length}")
        sequence = (context + continuation)[-max_length:]
        sequences.append(sequence)
        starts.append(len(sequence) - len(continuation))
    # position t - 1 predicts token t: the continuation's tokens start..n-1 are entries start-1..n-2
    return [float(lp[start - 1:].sum())
            for lp, start in zip(_token_log_probs(cell, sequences, batch_size, pad_token_id, length_bucket),
                                 starts)]
