"""The data side of the Eve stages: which tokenizer, and the batches the stage network takes.

Tokenizer (`resolve_tokenizer`), first that applies:
1. `data.tokenizer_path` (a tokenizer.json file or a Hugging Face tokenizer directory);
2. the `tokenizer/` folder of the `load_checkpoint` directory (each stage's output carries
   the tokenizer it was trained with, so a chain of stages needs it named once);
3. `task_options.tokenizer_vocab_size` > 0: a byte-level BPE of that size trained on the
   stage's data (plus `task_options.tokenizer_corpus` files), cached in
   `<output_dir>/tokenizer` (reused when there) so a resumed run reads the same one.
   Rank 0 trains it; the other ranks wait for it.

`StageLoader` wraps this rank's `LlavaLoader` and adds to each batch what the network needs
beyond the data pipeline's keys (the position, `state_dict` and `len` stay the loader's):
- `routing_noise` (stage 3): float32 [num_evf_layers, B, S] uniform in [0, 1) from a numpy
  generator seeded by (seed, epoch, global micro-batch index), the index being the
  micro-batch's place in the epoch's global order (local index x world size + rank). The
  noise is thus a function of the data position alone: a run resumed after a crash draws
  exactly the noise it would have drawn, and any split of the same global batch over ranks
  and accumulation steps gives every micro-batch the same noise.
- text-only batches get `pixel_values` of shape [0, 3, H, W] instead of B zero images: the
  network sees the empty image batch (a static shape, so graph mode compiles a second graph
  for it) and skips the vision tower and adapter instead of encoding zeros. Batches that mix
  image and text samples (`group_by_modality: false`) keep their pixels.
"""
from __future__ import annotations

import os
from typing import Iterator

import numpy as np

from eve_ms.config import ConfigError
from eve_ms.data.config import DataConfig
from eve_ms.training.distributed import DistInfo, all_reduce_sum

TOKENIZER_DIR = "tokenizer"


def _checkpoint_tokenizer(load_checkpoint: str | None) -> str | None:
    if not load_checkpoint:
        return None
    folder = load_checkpoint if os.path.isdir(load_checkpoint) else os.path.dirname(load_checkpoint)
    candidate = os.path.join(folder, TOKENIZER_DIR)
    return candidate if os.path.isdir(candidate) else None


def resolve_tokenizer(data: DataConfig, load_checkpoint: str | None, output_dir: str, vocab_size: int,
                      extra_corpus: list, dist: DistInfo, log=print):
    """(tokenizer, where it came from); see the module docstring for the order."""
    from eve_ms.data.tokenizer import conversation_texts, load_tokenizer, train_bpe_tokenizer

    if data.tokenizer_path:
        return load_tokenizer(data.tokenizer_path), data.tokenizer_path
    inherited = _checkpoint_tokenizer(load_checkpoint)
    if inherited:
        return load_tokenizer(inherited), inherited
    if vocab_size <= 0:
        raise ConfigError(
            "no tokenizer: set data.tokenizer_path, or load_checkpoint to a directory with a tokenizer/ folder, "
            "or task_options.tokenizer_vocab_size to train a BPE on the data"
        )
    cache = os.path.join(output_dir, TOKENIZER_DIR)
    if dist.is_main and not os.path.isdir(cache):
        texts = []
        for path in [data.data_path, *extra_corpus]:
            if not os.path.exists(path):
                raise ConfigError(f"tokenizer corpus file not found: {path}")
            texts += conversation_texts(path)
        # Every rendered sample carries its template's fixed text (system prompt, role names), which
        # conversation values do not contain: weigh it like that, or it tokenizes letter by letter.
        from eve_ms.data.templates import TEMPLATES

        fixed = [" ".join([t.system, *(f"{role}:" for role in t.roles)]) for t in TEMPLATES.values() if t.system]
        texts += fixed * max(1, len(texts) // 4)
        staging = f"{cache}.tmp{os.getpid()}"
        train_bpe_tokenizer(texts, vocab_size, save_dir=staging)
        os.replace(staging, cache)
        log(f"trained a byte-level BPE tokenizer of {vocab_size} tokens on {len(texts)} texts -> {cache}")
    all_reduce_sum([0.0], dist)  # the other ranks wait until rank 0 has written it
    return load_tokenizer(cache), cache


def routing_noise(seed: int, epoch: int, micro_batch: int, shape: tuple) -> np.ndarray:
    """Uniform [0, 1) float32 noise of one micro-batch, a pure function of its global position."""
    return np.random.default_rng([seed, epoch, micro_batch]).random(shape, dtype=np.float32)


class StageLoader:
    """This rank's batches with `routing_noise` added and text-only pixels emptied (module docstring)."""

    def __init__(self, loader, num_evf_layers: int, seed: int, dist: DistInfo):
        self.loader = loader
        self.num_evf_layers = num_evf_layers
        self.seed = seed
        self.dist = dist

    def __len__(self) -> int:
        return len(self.loader)

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)

    def take_reports(self) -> list[dict]:
        return self.loader.take_reports()

    def finish_report(self, reason: str = "run ended") -> list[dict]:
        return self.loader.finish_report(reason)

    def prepare(self, batch: dict, epoch: int, local_index: int) -> dict:
        """`batch` (the loader's keys) -> the stage network's batch, for micro-batch `local_index` of this rank."""
        batch = dict(batch)
        if not np.asarray(batch["has_image"]).any():
            pixels = np.asarray(batch["pixel_values"])
            batch["pixel_values"] = np.zeros((0,) + pixels.shape[1:], pixels.dtype)
        if self.num_evf_layers:
            b, s = np.asarray(batch["input_ids"]).shape
            position = local_index * self.dist.world_size + self.dist.rank
            batch["routing_noise"] = routing_noise(self.seed, epoch, position, (self.num_evf_layers, b, s))
        return batch

    def __iter__(self) -> Iterator[dict]:
        # LlavaLoader counts a micro-batch (its `step`) before handing it out, and moves to the
        # next epoch only when asked for the batch after the epoch's last one.
        for batch in self.loader:
            yield self.prepare(batch, self.loader.epoch, self.loader.step - 1)
