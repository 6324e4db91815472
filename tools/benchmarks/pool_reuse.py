"""Does MindSpore's CPU backend free a graph tensor after its last use? One chain per fresh process.

    python tools/benchmarks/pool_reuse.py

A graph-mode chain of N element-wise ops on a 64 MiB float32 tensor, N = 4 and 16, run once; printed:
the memory pool's high-water mark (`common.memory_pool_bytes`) and the process's RSS growth. If the
backend kept every intermediate, the pool would grow by 64 MiB per op; if it frees a tensor after its
last use, it stays at a few buffers whatever N. Three chains: forward `sin` (nothing kept), forward +
backward of `x + 1` (its gradient reads nothing: nothing kept for the backward) and of `exp` (its
gradient reads its output: one 64 MiB tensor per op kept until the backward, as any allocator must).
Measured with MindSpore 2.9 (README, "Planning a run"), pool for N = 4 / 16: sin forward 128 / 128 MiB,
add forward + backward 128 / 128 MiB, exp forward + backward 320 / 1,088 MiB (= N + 1 buffers): the backend
frees and reuses a tensor's memory after its last use, keeping only what the backward reads, which is the
device model `eve_ms.plan` assumes. (Not every op chain reuses on CPU: README, "Planning a run".)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[1]
CHAINS = ("sin_forward", "add_grad", "exp_grad")


def _child(chain: str, length: int) -> dict:
    sys.path.insert(0, str(TOOLS))
    os.environ.setdefault("GLOG_v", "3")
    import mindspore as ms
    import numpy as np
    from mindspore import nn, ops

    from benchmarks.common import memory_pool_bytes, rss_bytes

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU", runtime_num_threads=2)

    class Chain(nn.Cell):
        def construct(self, x):
            for _ in range(length):
                x = ops.sin(x) if chain == "sin_forward" else (x + 1.0 if chain == "add_grad" else ops.exp(x))
            return x.sum()

    class Grad(nn.Cell):
        def __init__(self, net):
            super().__init__()
            self.grad = ms.value_and_grad(net)

        def construct(self, x):
            return self.grad(x)

    net = Chain() if chain == "sin_forward" else Grad(Chain())
    x = ms.Tensor(np.full((16 * 2**20,), 0.01, np.float32))  # 64 MiB
    before = rss_bytes()
    net(x)
    return {"chain": chain, "ops": length, "pool_mib": memory_pool_bytes() / 2**20,
            "rss_growth_mib": (rss_bytes() - before) / 2**20}


def main() -> int:
    if len(sys.argv) == 3:  # child: one chain in this process
        print(json.dumps(_child(sys.argv[1], int(sys.argv[2]))))
        return 0
    for chain in CHAINS:
        for length in (4, 16):
            out = subprocess.run([sys.executable, __file__, chain, str(length)], capture_output=True, text=True,
                                 check=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
            print(f"{chain:12s} {length:3d} ops: pool {result['pool_mib']:7.0f} MiB, "
                  f"RSS +{result['rss_growth_mib']:6.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
