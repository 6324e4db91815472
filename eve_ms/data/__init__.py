"""LLaVA-format data: readers, conversation templates, tokenizers, image preprocessing, batching.

Modules, in the order data passes through them: `readers` (streaming JSON/JSONL, byte-offset
index), `samples` (checks, template rendering, tokenization, labels, truncation), `templates`,
`tokenizer`, `images`, `sampler` (deterministic sharded batch order), `dataset` (batches, the
MindSpore dataset, resumable position), `report` (bad-input errors and counts), `check`
(`eve-ms data check`).
"""
from eve_ms.data.config import DataConfig
from eve_ms.data.dataset import BATCH_KEYS, LlavaLoader, build_loader
from eve_ms.data.images import ImageProcessor
from eve_ms.data.report import BadSampleError, DataError, MalformedJSONError, SkipReport
from eve_ms.data.samples import SampleEncoder, encode_prompt
from eve_ms.data.templates import TEMPLATES, ChatTemplate, Turn, get_template
from eve_ms.data.tokenizer import load_tokenizer, train_bpe_tokenizer

__all__ = [
    "BATCH_KEYS",
    "BadSampleError",
    "ChatTemplate",
    "DataConfig",
    "DataError",
    "ImageProcessor",
    "LlavaLoader",
    "MalformedJSONError",
    "SampleEncoder",
    "SkipReport",
    "TEMPLATES",
    "Turn",
    "build_loader",
    "encode_prompt",
    "get_template",
    "load_tokenizer",
    "train_bpe_tokenizer",
]
