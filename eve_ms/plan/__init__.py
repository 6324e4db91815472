"""`eve-ms plan`: a training run's memory and time per device, predicted from its yaml (no MindSpore needed).

- `inventory`: parameters and matrix products of an Eve model, from its config;
- `stage`: what a run yaml trains and the shape of its step (`StageSpec`);
- `step`: one micro-batch block by block: FLOPs forward / backward / recompute, saved activations;
- `memory`: peak memory by part; `planner`: step time, all-reduce, fit and advice; `devices`: device specs
  (`devices.yaml`, with sources); `cli`: the command.
"""
