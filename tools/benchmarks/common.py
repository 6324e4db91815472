"""What every benchmark suite shares: result rows, side-by-side timing, memory readings, model presets.

Timing rule: things that are compared run in one process, taking turns inside every
repeat, in alternating order (A B C, C B A, ...), so a busy machine slows them alike; warm-up
calls (graph compilation included) are not timed; the median of the repeats is reported, and a
ratio of two things is the median of their per-repeat ratios (each repeat pairs runs made
moments apart).
"""
from __future__ import annotations

import dataclasses
import gc
import math
import os
import resource
import re
import statistics
import time
from typing import Callable, Optional


@dataclasses.dataclass
class Metric:
    """One number of the report. `target` is a comparison such as '<= 1.6' or a range '0.8..1.25'; `met` is None
    without one."""

    suite: str
    name: str
    value: float
    unit: str
    target: str = ""
    note: str = ""

    @property
    def met(self) -> Optional[bool]:
        if not self.target:
            return None
        if ".." in self.target:  # a range 'low..high', both ends included
            low, high = (float(x) for x in self.target.split(".."))
            return bool(low <= self.value <= high) if math.isfinite(self.value) else False
        op, bound = self.target.split()
        bound = float(bound)
        checks = {"<=": self.value <= bound, ">=": self.value >= bound, "<": self.value < bound,
                  ">": self.value > bound}
        return bool(checks[op]) if math.isfinite(self.value) else False

    def as_dict(self) -> dict:
        return {"value": self.value, "unit": self.unit, "target": self.target or None, "met": self.met,
                "note": self.note}


class Report:
    """Metrics of one suite, in the order they were measured."""

    def __init__(self, suite: str):
        self.suite = suite
        self.metrics: list[Metric] = []

    def add(self, name: str, value: float, unit: str, target: str = "", note: str = "") -> float:
        self.metrics.append(Metric(self.suite, name, float(value), unit, target, note))
        return float(value)


# --------------------------------------------------------------------------- timing


def interleaved_times(runners: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                      max_rounds: Optional[dict] = None, warmups: Optional[dict] = None) -> dict[str, list]:
    """Seconds per call of each runner (each call must block until its work is done), taking turns.

    `max_rounds` {name: n} lets a slow runner take part in the first n rounds only; `warmups`
    {name: n} overrides `warmup` for a runner.
    """
    max_rounds, warmups = max_rounds or {}, warmups or {}
    for name, run in runners.items():
        for _ in range(warmups.get(name, warmup)):
            run()
    times = {name: [] for name in runners}
    for round_index in range(repeats):
        order = list(runners.items())
        for name, run in order if round_index % 2 == 0 else order[::-1]:
            if round_index >= max_rounds.get(name, repeats):
                continue
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def paired_ratio(numerator: list, denominator: list) -> float:
    """Median over repeats of numerator[i] / denominator[i] (both from the same interleaved rounds)."""
    return median([a / b for a, b in zip(numerator, denominator)])


def median(values) -> float:
    return float(statistics.median(values))


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


_SHARED: dict = {}


def shared(key, factory: Callable[[], object]):
    """One object per key for the whole run: suites reuse compiled training steps instead of compiling again."""
    if key not in _SHARED:
        _SHARED[key] = factory()
    return _SHARED[key]


# --------------------------------------------------------------------------- memory


def rss_bytes() -> int:
    """Current resident set size of this process."""
    with open("/proc/self/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0); False when not possible."""
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak RSS since the last `reset_peak_rss` (VmHWM), else since the process started (ru_maxrss)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


POOL_MIN_MAPPING = 2**30
_MAPPING = re.compile(r"^[0-9a-f]+-[0-9a-f]+ ")


def memory_pool_bytes() -> int:
    """Resident bytes of MindSpore's CPU memory pool: the anonymous mappings of 1 GiB or more.

    Every tensor MindSpore allocates on CPU (graph intermediates and outputs, PyNative results such as
    the trainer's gradient buffers) comes from one pool, which reserves address space in blocks of at
    least 1 GiB (measured with MindSpore 2.9: one 1,024-1,062 MiB anonymous mapping from the first
    tensor on, a 2,048 MiB one when a graph needs more) and touches a page only when it hands it out,
    never returning it: the mappings' resident size is the pool's high-water mark, i.e. the peak of
    what the steps kept alive, with the pool's own fragmentation. Outside it, in the malloc heap:
    parameters made from numpy arrays, compiled graphs, and the CPU kernels' own buffers.
    `mindspore.runtime.memory_stats()` is empty on CPU (its documentation), hence /proc.
    Nothing else in a benchmark process maps 1 GiB at once (its largest numpy arrays are < 100 MiB).
    """
    total, anonymous, large = 0, False, False
    with open("/proc/self/smaps", encoding="ascii", errors="replace") as fh:
        for line in fh:
            fields = line.split()
            if _MAPPING.match(line):  # a mapping's header: address range, perms, offset, dev, inode[, path]
                anonymous, large = len(fields) < 6, False
            elif fields[0] == "Size:":
                large = anonymous and int(fields[1]) * 1024 >= POOL_MIN_MAPPING
            elif fields[0] == "Rss:" and large:
                total += int(fields[1]) * 1024
    return total


# --------------------------------------------------------------------------- presets

# Model sizes of the training benchmarks (data, not code: one place maps a name to numbers).
# small: 8 layers, width 512 (FFN 1728 = the paper's 6912/2048 ratio), 64x64 images.
PRESETS = {
    "tiny": {
        "vision": dict(backbone="siglip", image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                       num_layers=2, num_heads=2),
        "llm": dict(vocab_size=256, hidden_size=64, intermediate_size=172, num_layers=2, num_heads=4,
                    num_kv_heads=2, max_position_embeddings=128),
        "batch_size": 4,
        "seq_len": 32,
    },
    "small": {
        "vision": dict(backbone="siglip", image_size=64, patch_size=8, hidden_size=256, intermediate_size=1024,
                       num_layers=4, num_heads=4),
        "llm": dict(vocab_size=8000, hidden_size=512, intermediate_size=1728, num_layers=8, num_heads=8,
                    max_position_embeddings=512),
        "batch_size": 4,
        "seq_len": 128,
    },
}
LORA = dict(lora_rank=8, lora_alpha=16, lora_dropout=0.05)  # the stage-2 pet_config of the reference yaml
LEARNING_RATE = {1: 1e-3, 2: 2e-5, 3: 2e-5}  # DESIGN section 2


def eve_config(preset: str, evf: bool = False):
    """The `EveConfig` of a preset (LDP adapter; EVF layers in alternate layers when `evf`)."""
    from eve_ms.config import AdapterConfig, EVFConfig, EveConfig, LLMConfig, VisionConfig

    spec = PRESETS[preset]
    return EveConfig(vision=VisionConfig(**spec["vision"]), adapter=AdapterConfig(type="ldp"),
                     llm=LLMConfig(**spec["llm"]), evf=EVFConfig(enabled=evf))


def synthetic_batch(config, batch_size: int, seq_len: int, seed: int = 0) -> dict:
    """A multimodal micro-batch as the data pipeline makes it: each sample starts with its image tokens
    (IMAGE_TOKEN_INDEX) after a bos, a prompt without loss, then answer tokens with loss; the last
    sample is right-padded by a quarter of the sequence."""
    import numpy as np

    from eve_ms.config import IGNORE_INDEX

    rng = np.random.default_rng(seed)
    n_image = config.num_image_tokens
    vocab = config.llm.vocab_size
    ids = rng.integers(4, vocab, (batch_size, seq_len)).astype(np.int32)
    ids[:, 0] = config.llm.bos_token_id
    ids[:, 1:1 + n_image] = config.image_token_index
    mask = np.ones((batch_size, seq_len), np.int32)
    pad = seq_len // 4
    ids[-1, seq_len - pad:] = config.llm.pad_token_id
    mask[-1, seq_len - pad:] = 0
    labels = np.where(mask.astype(bool), ids, IGNORE_INDEX).astype(np.int32)
    labels[:, :1 + n_image + (seq_len - n_image) // 2] = IGNORE_INDEX
    size = config.vision.image_size
    pixels = rng.standard_normal((batch_size, 3, size, size)).astype(np.float32)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "pixel_values": pixels,
            "has_image": np.ones(batch_size, np.int32)}


def set_threads(num_threads: int) -> None:
    """The same thread count for PyTorch as MindSpore's runtime_num_threads (side-by-side fairness)."""
    import torch

    torch.set_num_threads(num_threads)


def torch_runners(run: Callable[[], object]) -> dict:
    """PyTorch runs with the run's thread count ('torch') and, when that is more than one, with one thread
    ('torch_1thread'): on a shared machine PyTorch's OpenMP threads wait for each other whenever another
    process holds a core, and can lose 10x, while MindSpore's pool does not. The faster of the two is the
    PyTorch number that comparisons use, so contention never flatters eve-ms."""
    import torch

    threads = torch.get_num_threads()

    def with_threads(count):
        def call():
            torch.set_num_threads(count)
            try:
                return run()
            finally:
                torch.set_num_threads(threads)
        return call

    runners = {"torch": with_threads(threads)}
    if threads > 1:
        runners["torch_1thread"] = with_threads(1)
    return runners


def fastest_torch(medians: dict) -> tuple:
    """(name, seconds) of the faster PyTorch runner among `torch_runners`' names in `medians`."""
    name = min((n for n in medians if n.startswith("torch")), key=medians.get)
    return name, medians[name]
