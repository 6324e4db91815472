"""`DataConfig`: where the training data is and how it becomes batches.

Loadable with `eve_ms.config.from_dict(DataConfig, yaml_section, path, "data")`. The image
size, mean and std come from the model's `VisionConfig`, and the number of image tokens from
`EveConfig.num_image_tokens`: they are not repeated here.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from eve_ms.config import ConfigError

IMAGE_ASPECT_RATIOS = ("pad", "resize", "crop")
BACKENDS = ("mindspore", "python")


@dataclass
class DataConfig:
    """One training data set (LLaVA format) and its batching."""

    data_path: str  # JSON list or JSONL file of {id, image?, conversations}
    image_folder: str = ""  # `image` paths are relative to this folder
    tokenizer_path: str = ""  # tokenizer.json file or a Hugging Face tokenizer directory
    template: str = "v1"  # conversation template, see eve_ms.data.templates.TEMPLATES
    max_length: int = 2048  # longest sequence, image tokens included; longer ones are truncated
    # Optional smaller lengths a batch may be padded to instead of max_length (each batch takes
    # the smallest bucket its longest sample fits); empty = always pad to max_length.
    length_buckets: list = field(default_factory=list)
    image_aspect_ratio: str = "pad"  # pad (to a square of the mean colour) | resize | crop
    add_bos: bool = True  # start every sequence with the tokenizer's bos token, as LLaVA does
    skip_bad_samples: bool = True  # False: the first bad sample is an error naming file and id
    max_reported_ids: int = 5  # sample ids listed per problem in the end-of-epoch report
    # Micro batch per rank; global batch = batch_size x world size x gradient accumulation steps.
    # A training run owns this number (runner_config.batch_size): there, a data.batch_size that
    # differs is an error at load (eve_ms.training.sections.data_config), so leave it out of run yamls.
    batch_size: int = 4
    seed: int = 42
    shuffle: bool = True
    group_by_modality: bool = True  # image and text-only samples in separate batches
    # An epoch's last incomplete global batch of each modality: False fills it up with samples
    # from the start of the same modality's order (every sample is seen), True drops it.
    drop_last: bool = False
    backend: str = "mindspore"  # mindspore (GeneratorDataset with worker processes) | python
    num_workers: int = 2  # decoding worker processes of the mindspore backend (0/1: in the main process)
    # Folder keeping the record index of data_path (byte offsets, one scan of the file) between runs;
    # empty = scan the file at every start (about a minute per 665k records).
    index_cache_dir: str = ""

    def __post_init__(self):
        if self.image_aspect_ratio not in IMAGE_ASPECT_RATIOS:
            raise ConfigError(
                f"data.image_aspect_ratio must be one of {IMAGE_ASPECT_RATIOS}, got {self.image_aspect_ratio!r}"
            )
        if self.backend not in BACKENDS:
            raise ConfigError(f"data.backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.max_length < 2:
            raise ConfigError(f"data.max_length must be at least 2, got {self.max_length}")
        if self.batch_size < 1:
            raise ConfigError(f"data.batch_size must be at least 1, got {self.batch_size}")
        bad = [b for b in self.length_buckets if not isinstance(b, int) or not 1 <= b <= self.max_length]
        if bad:
            raise ConfigError(f"data.length_buckets must be ints in 1..max_length={self.max_length}, got {bad}")

    def check_data_path(self) -> None:
        """A MissingDataError naming `data.data_path` when it is not a file (the loader checks the image folder)."""
        import os

        from eve_ms.data.report import MissingDataError

        if not os.path.isfile(self.data_path):
            what = "is a folder, not a file" if os.path.isdir(self.data_path) else "not found"
            raise MissingDataError(f"data.data_path {what}: {self.data_path}")

    @property
    def buckets(self) -> list[int]:
        """Sequence lengths a batch may have, ascending; the last is max_length."""
        return sorted(set(self.length_buckets) | {self.max_length})
