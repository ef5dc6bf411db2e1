""".ggq container: a GGUF-like file (typed metadata, tensor table, aligned data) with
byte-length-bounded sections and CRC-32 checksums. Normative spec: spec/FORMAT.md."""
from .layout import DEFAULT_ALIGNMENT, MAGIC, VERSION_MAJOR, VERSION_MINOR
from .reader import GGQReader, TensorInfo
from .writer import GGQWriter

__all__ = ["GGQReader", "GGQWriter", "TensorInfo", "MAGIC", "VERSION_MAJOR", "VERSION_MINOR",
           "DEFAULT_ALIGNMENT"]
