"""Shared constants of the .ggq container (spec/FORMAT.md is normative; keep the two in step).

Header (64 bytes, little-endian):
    0  8  magic            89 47 47 51 0D 0A 1A 0A  ("\\x89GGQ\\r\\n\\x1a\\n")
    8  2  u16 version_major 1
   10  2  u16 version_minor 0
   12  4  u32 alignment     power of two, MIN_ALIGNMENT..MAX_ALIGNMENT
   16  4  u32 metadata_count
   20  4  u32 tensor_count
   24  8  u64 metadata_size  (section starts at 64)
   32  8  u64 table_size     (section starts at 64 + metadata_size)
   40  8  u64 data_offset    == align_up(64 + metadata_size + table_size, alignment)
   48  8  u64 data_size      data_offset + data_size == file size
   56  4  u32 header_crc32   CRC-32 of bytes [0, data_offset) with this field read as zero
   60  4  u32 flags          0 (reserved)
"""
from __future__ import annotations

import struct

MAGIC = b"\x89GGQ\r\n\x1a\n"
VERSION_MAJOR = 1
VERSION_MINOR = 0

HEADER = struct.Struct("<8sHHIIIQQQQII")
HEADER_SIZE = HEADER.size  # 64
CRC_FIELD_OFFSET = 56
assert HEADER_SIZE == 64

DEFAULT_ALIGNMENT = 64
MIN_ALIGNMENT = 32
MAX_ALIGNMENT = 65536

# Limits. A reader rejects anything beyond them before allocating.
MAX_METADATA_COUNT = 65536
MAX_TENSOR_COUNT = 1 << 20
MAX_METADATA_SIZE = 256 << 20     # bytes of the whole metadata section
MAX_TABLE_SIZE = 256 << 20        # bytes of the whole tensor table
MAX_KEY_BYTES = 256
MAX_STRING_BYTES = 64 << 20       # one string value (a whole tokenizer.json fits)
MAX_ARRAY_COUNT = 1 << 24         # elements of one array value
MAX_NAME_BYTES = 256              # tensor name
MAX_DIMS = 4
MAX_DIM = 1 << 40                 # one dimension
MAX_ELEMENTS = 1 << 48            # product of the dimensions

# Metadata value type codes (same numbers as GGUF's).
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)

VTYPE_NAMES = {
    U8: "u8", I8: "i8", U16: "u16", I16: "i16", U32: "u32", I32: "i32", F32: "f32",
    BOOL: "bool", STRING: "string", ARRAY: "array", U64: "u64", I64: "i64", F64: "f64",
}
VTYPE_CODES = {v: k for k, v in VTYPE_NAMES.items()}
VTYPE_CODES["str"] = STRING

# Fixed-size scalar types: struct format, numpy dtype, integer range (None for floats/bool).
SCALAR_FORMATS = {
    U8: ("<B", "<u1", (0, 2**8 - 1)),
    I8: ("<b", "<i1", (-(2**7), 2**7 - 1)),
    U16: ("<H", "<u2", (0, 2**16 - 1)),
    I16: ("<h", "<i2", (-(2**15), 2**15 - 1)),
    U32: ("<I", "<u4", (0, 2**32 - 1)),
    I32: ("<i", "<i4", (-(2**31), 2**31 - 1)),
    U64: ("<Q", "<u8", (0, 2**64 - 1)),
    I64: ("<q", "<i8", (-(2**63), 2**63 - 1)),
    F32: ("<f", "<f4", None),
    F64: ("<d", "<f8", None),
    BOOL: ("<B", "<u1", None),
}


def align_up(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


def valid_alignment(a: int) -> bool:
    return MIN_ALIGNMENT <= a <= MAX_ALIGNMENT and (a & (a - 1)) == 0
