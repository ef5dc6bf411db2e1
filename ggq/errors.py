"""One exception family. The CLI prints `ggq: error: <message>` for any GGQError and exits 1."""


class GGQError(Exception):
    """Base class: every error ggq raises on bad input or a failed operation."""


class FormatError(GGQError):
    """A .ggq (or .gguf / .safetensors) file is malformed, truncated or inconsistent."""


class QuantError(GGQError):
    """A quant type is unknown or cannot encode the given shape."""


class ConvertError(GGQError):
    """A conversion cannot proceed (unsupported architecture, dtype, existing output...)."""


class ModelError(GGQError):
    """A model file lacks a tensor or hyperparameter the runtime needs."""


class TokenizerError(GGQError):
    """The embedded tokenizer is missing or unusable."""


class UsageError(GGQError):
    """Invalid argument values (sampler settings, context size, prompt too long...)."""
