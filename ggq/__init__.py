"""ggq: a hackable quantized-LLM toolkit (GGUF-compatible blocks, Numba CPU runtime)."""
__version__ = "0.1.0"


def load(path=None, **kwargs):
    """Load a .ggq (or .gguf) model for inference. See ggq.api.load."""
    from .api import load as _load

    return _load(path, **kwargs)
