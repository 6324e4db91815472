"""Suite `evf`: the EVF layer's forward + backward against the dense FFN it replaces, side by side.

Both get gradients for their input and every weight (graph mode), on T tokens of width H with
the FFN width of the paper's ratio (6912 / 2048). With capacity factor C = 1.5 the two expert
buffers hold 1.5 T token slots, so the FFN work alone is 1.5x the dense FFN's (the padded-capacity
bound); what the layer adds beyond that is routing, allocation, gathers and the combine.
The allocation's share is the allocation alone (same backend as the layer) over the layer's time.
"""
from __future__ import annotations

import numpy as np

from benchmarks.common import Report, interleaved_times, median, paired_ratio

SIZES = {"default": {"tokens": 4096, "repeats": 7}, "quick": {"tokens": 1024, "repeats": 3}}
HIDDEN = 512
INTERMEDIATE = HIDDEN * 6912 // 2048  # 1728


def _cells():
    from mindspore import nn, ops

    class Objective(nn.Cell):
        """sum(layer(x) * probe) (+ aux loss): a scalar whose gradient reaches every output element.

        The routing inputs are constants of the cell: only x, probe and the weights are differentiated.
        """

        def __init__(self, layer, is_evf, routing):
            super().__init__()
            self.layer, self.is_evf = layer, is_evf
            self.is_image, self.valid, self.noise = routing

        def construct(self, x, probe):
            if self.is_evf:
                y, aux, _ = self.layer(x, self.is_image, self.valid, self.noise)
                return (y * probe).sum() + aux
            return (self.layer(x) * probe).sum()

    class ForwardBackward(nn.Cell):
        def __init__(self, objective):
            super().__init__()
            self.objective = objective
            self.weights = objective.trainable_params()
            self.grad = ops.GradOperation(get_all=True, get_by_list=True)

        def construct(self, x, probe):
            return self.grad(self.objective, self.weights)(x, probe)

    return Objective, ForwardBackward


def run(size: str, report: Report) -> None:
    import mindspore as ms

    from eve_ms.config import EVFConfig, LLMConfig
    from eve_ms.models.evf import EVFLayer
    from eve_ms.models.ffn import FeedForward
    from eve_ms.ops.allocator import TokenAllocator

    spec = SIZES[size]
    tokens = spec["tokens"]
    ms.set_context(mode=ms.GRAPH_MODE)
    objective, forward_backward = _cells()
    config = LLMConfig(vocab_size=8, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_layers=1, num_heads=8)
    evf_config = EVFConfig(enabled=True, capacity_factor=1.5)
    evf = EVFLayer(config, evf_config).set_train(True)  # training capacity factor (C = 1.5)
    rng = np.random.default_rng(0)
    inputs = [ms.Tensor(rng.standard_normal((1, tokens, HIDDEN)).astype(np.float32)),
              ms.Tensor(rng.standard_normal((1, tokens, HIDDEN)).astype(np.float32))]
    routing = (ms.Tensor(rng.random((1, tokens)) < 0.6), ms.Tensor(np.ones((1, tokens), bool)),
               ms.Tensor(rng.random((1, tokens)).astype(np.float32)))
    nets = {"dense": forward_backward(objective(FeedForward(config), False, routing)),
            "evf": forward_backward(objective(evf, True, routing))}
    allocator = TokenAllocator(tokens, evf_config.strategy, evf_config.capacity_factor, evf_config.min_capacity,
                               backend=evf.backend)
    probs = evf.router.probabilities(inputs[0].reshape(tokens, HIDDEN))
    flat = [t.reshape(-1) for t in routing]

    def runner(net):
        def run_once():
            grads = net(*inputs)
            for group in grads:
                for g in group:
                    g.asnumpy()
        return run_once

    def run_allocation():
        for out in allocator(probs, *flat):
            out.asnumpy()

    runners = {name: runner(net) for name, net in nets.items()}
    runners["allocation"] = run_allocation
    raw = interleaved_times(runners, spec["repeats"], warmup=1)
    times = {k: median(v) for k, v in raw.items()}
    note = f"T={tokens}, H={HIDDEN}, I={INTERMEDIATE}, C=1.5, img_gbpr, allocation backend {evf.backend}, graph mode"
    report.add("dense_ffn_fwd_bwd_ms", 1e3 * times["dense"], "ms", note=note)
    report.add("evf_layer_fwd_bwd_ms", 1e3 * times["evf"], "ms", note=note)
    report.add("evf_over_dense", paired_ratio(raw["evf"], raw["dense"]), "x", "<= 1.6",
               note="padded-capacity bound 1.5x: two buffers of 0.75 T")
    report.add("allocation_share_of_evf_layer", paired_ratio(raw["allocation"], raw["evf"]), "fraction",
               note=f"allocation alone {1e3 * times['allocation']:.2f} ms")
