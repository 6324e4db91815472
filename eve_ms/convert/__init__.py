"""Checkpoint conversion: Hugging Face and PyTorch Eve checkpoints into eve_ms cells and back."""


def load_hf_llm(path, **kwargs):
    """A Hugging Face Llama-architecture directory -> eve_ms LLM cell with its weights."""
    from eve_ms.convert.hf_llm import load_hf_llm as _load

    return _load(path, **kwargs)


def load_hf_vision(path, select_layer=None, **kwargs):
    """A Hugging Face SigLIP / CLIP / ResNet directory -> frozen encoder (select_layer None = backbone default)."""
    from eve_ms.convert.hf_vision import load_hf_vision as _load

    return _load(path, select_layer=select_layer, **kwargs)


__all__ = ["load_hf_llm", "load_hf_vision"]
