"""Training: the three Eve stages on one process or data parallel under msrun.

- `config`: `TrainConfig`, the run yaml (MindFormers layout) and its schema.
- `launch`: `eve-ms train --config X.yaml [--resume]`; builds the task named in the yaml.
- `trainer`: `TrainTask` (what a task builder returns) and `Trainer` (the loop).
- `optim`: AdamW (MindSpore's fused kernel, or MindFormers') and the MindFormers lr schedule.
- `lora`: MindFormers LoRA, freezing, merging.
- `checkpoint`: safetensors training states and weights. `distributed`: msrun ranks.
- `metrics`, `plots`: the JSONL step log, progress bar, `eve-ms plot`.
- `stages`: the Eve-specific stage builders (network, frozen parts, data).
"""
