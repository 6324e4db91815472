"""The suites of tools/bench.py (one module each: `<name>_suite.run(size, report)`) and what they share.

`common` (timing, memory, presets), `ms_steps` / `torch_eve` (the eve-ms and PyTorch training steps),
`step_probe` (one configuration in a fresh process), `profile_step` (where a step's time goes).
"""
