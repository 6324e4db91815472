"""Suite `data`: data loader samples/s beside the training step's samples/s.

A synthetic LLaVA-format set (`eve_ms.demo.synthetic.generate`: PNG images, v1 conversations) is
written to a temporary folder, a byte-level BPE tokenizer is trained on it, and `LlavaLoader`
measures its preprocessing speed (`measure_throughput`) with the MindSpore backend (worker
processes) and the plain-Python one, for the tiny preset's image settings. Beside it, in the same
process: the tiny preset's stage-2 training step (graph mode). The loader keeps up when its
samples/s exceed the step's.
"""
from __future__ import annotations

import tempfile

from benchmarks.common import PRESETS, Report, eve_config, interleaved_times, median

SIZES = {"default": {"images": 96, "batches": 12, "rounds": 3, "workers": 2},
         "quick": {"images": 24, "batches": 4, "rounds": 1, "workers": 2}}
MAX_LENGTH = 256
TOKENIZER_VOCAB = 1024  # the loader's own tokenizer: the step below runs on synthetic ids of the preset's vocabulary


def run(size: str, report: Report) -> None:
    from benchmarks.ms_steps import stage_step
    from eve_ms.data import DataConfig, build_loader, train_bpe_tokenizer
    from eve_ms.data.tokenizer import conversation_texts
    from eve_ms.demo.synthetic import generate

    spec = SIZES[size]
    preset = "tiny"
    config = eve_config(preset)
    batch_size = PRESETS[preset]["batch_size"]
    with tempfile.TemporaryDirectory(prefix="eve_bench_data_") as folder:
        paths = generate(folder, image_size=64, num_caption=4, num_instruct_images=spec["images"], num_eval_images=1)
        tokenizer = train_bpe_tokenizer(conversation_texts(paths["instruct"]), vocab_size=TOKENIZER_VOCAB)
        loaders = {}
        for backend in ("mindspore", "python"):
            data = DataConfig(data_path=paths["instruct"], image_folder=paths["image_folder"], template="v1",
                              max_length=MAX_LENGTH, batch_size=batch_size, backend=backend,
                              num_workers=spec["workers"], shuffle=True)
            loaders[backend] = build_loader(data, config, tokenizer, log=lambda *args: None)
        step = stage_step(preset, 2)
        batches = spec["batches"]

        def loader_run(loader):
            return lambda: loader.measure_throughput(batches)

        def steps_run():
            for _ in range(batches):
                step("graph")

        runners = {"loader_mindspore": loader_run(loaders["mindspore"]), "loader_python": loader_run(loaders["python"]),
                   "train_step": steps_run}
        times = {name: median(v) for name, v in interleaved_times(runners, spec["rounds"], warmup=1).items()}
    samples = batches * batch_size
    note = f"{config.vision.image_size}x{config.vision.image_size} images, max_length {MAX_LENGTH}, batch {batch_size}"
    report.add("loader_samples_per_s[mindspore]", samples / times["loader_mindspore"], "samples/s",
               note=f"{spec['workers']} worker processes, {note}; includes worker start-up")
    report.add("loader_samples_per_s[python]", samples / times["loader_python"], "samples/s", note=note)
    step_rate = samples / times["train_step"]
    report.add(f"train_step_samples_per_s[{preset},stage2,graph]", step_rate, "samples/s",
               note=f"sequence {PRESETS[preset]['seq_len']}")
    best = max(samples / times["loader_mindspore"], samples / times["loader_python"])
    report.add("loader_over_train_step", best / step_rate, "x", ">= 1", note="the faster loader backend")
