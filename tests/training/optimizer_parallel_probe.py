"""Test support, run under msrun: build eve-ms's AdamW with MindSpore's optimizer parallel on CPU and report."""
import sys

import mindspore as ms
from mindspore import Parameter, ParameterTuple, Tensor
from mindspore.communication import get_group_size, init

from eve_ms.training.config import OptimizerConfig
from eve_ms.training.optim import build_optimizer

ms.set_context(device_target="CPU", mode=ms.GRAPH_MODE)
init()
ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, enable_parallel_optimizer=True,
                             device_num=get_group_size())
params = ParameterTuple([Parameter(Tensor([float(i)] * 4, ms.float32), name=f"w{i}") for i in range(4)])
try:
    build_optimizer(params, OptimizerConfig(), 0.1)
    print("BUILT use_parallel", flush=True)
except RuntimeError as err:
    print(f"REFUSED RuntimeError: {err}", flush=True)
sys.exit(0)
