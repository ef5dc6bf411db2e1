"""Architectures: build_model(reader) picks the forward-pass class by general.architecture.

    llama   -> ggq.models.llama.Llama     (llama family: SmolLM2, Llama 2/3, ...)
    gemma3  -> ggq.models.gemma3.Gemma3   (Gemma 3 text models)

Shared kernels and the model skeleton live in ggq.models.base."""
from __future__ import annotations

from ..errors import ModelError

ARCHITECTURES = {
    "llama": ("ggq.models.llama", "Llama"),
    "gemma3": ("ggq.models.gemma3", "Gemma3"),
}


def model_class(arch: str, source: str = "model"):
    """The class for an architecture name, or a ModelError naming the file and the arch."""
    import importlib

    if arch not in ARCHITECTURES:
        raise ModelError(f"{source}: architecture {arch!r} is not supported "
                         f"(supported: {', '.join(ARCHITECTURES)})")
    module, name = ARCHITECTURES[arch]
    mod = importlib.import_module(module)
    _guard_cache(mod)
    return getattr(mod, name)


def _guard_cache(mod) -> None:
    """An architecture's kernels inline base.py's (Numba would not see an edit there alone)."""
    from pathlib import Path

    from ..jit_cache import guard
    from . import base

    guard([mod], [Path(mod.__file__), Path(base.__file__)], mod.__name__.rsplit(".", 1)[-1])


def build_model(reader, n_ctx: int | None = None, source: str = "model", use_mmap: bool = True,
                offload=None):
    """The forward-pass object (Llama, Gemma3, ...) for a GGQReader's file. All have the same
    interface: forward(tokens, start_pos, all_logits), config, n_ctx, vocab_size, set_exact(),
    matrices(). offload: None (every layer on the CPU engine) or an object with n_layers (how
    many of the last layers) and ops (their backend, e.g. ggq.torch_backend.TorchOps)."""
    arch = reader.metadata.get("general.architecture", "llama")  # absent: llama, as always before
    return model_class(str(arch), source)(reader, n_ctx=n_ctx, source=source, use_mmap=use_mmap,
                                          offload=offload)
