"""One exception family. The CLI prints `ggq: error: <message>` for any GGQError and exits 1."""


class GGQError(Exception):
    """Base class: every error ggq raises on bad input or a failed operation. The message is
    always one line: control characters a file put into a name or key it quotes (newline,
    carriage return, NUL...) are shown escaped, as repr() would."""

    def __init__(self, *args):
        if len(args) == 1 and isinstance(args[0], str):
            args = (_one_line(args[0]),)
        super().__init__(*args)


def _one_line(msg: str) -> str:
    if msg.isprintable():
        return msg
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in msg)


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
