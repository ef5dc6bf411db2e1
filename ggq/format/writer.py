"""GGQWriter: streaming, atomic .ggq writer.

Plan first (add_metadata, add_tensor for every tensor), then write_tensor() each tensor in
declared order: peak memory is one tensor. Bytes go to `<out>.tmp-<random>` next to the
output; on success the table and header checksums are patched in, the file is fsynced and
moved into place; on any exception (Ctrl-C included) the temp file is removed.
"""
from __future__ import annotations

import math
import os
import secrets
import struct
import zlib

import numpy as np

from ..errors import ConvertError, FormatError, QuantError
from ..quants import QuantType, find_by_id, get_type
from . import layout as L
from .atomic import sync_folder

_NP_VTYPES = {
    np.dtype(np.uint8): L.U8, np.dtype(np.int8): L.I8, np.dtype(np.uint16): L.U16,
    np.dtype(np.int16): L.I16, np.dtype(np.uint32): L.U32, np.dtype(np.int32): L.I32,
    np.dtype(np.uint64): L.U64, np.dtype(np.int64): L.I64, np.dtype(np.float32): L.F32,
    np.dtype(np.float64): L.F64, np.dtype(np.bool_): L.BOOL,
}
# natural element dtype accepted by write_tensor besides uint8
_FLOAT_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2")}


def _parse_vtype(vtype: str | None) -> tuple[int | None, int | None]:
    """'u32' -> (U32, None); 'array[u32]' -> (ARRAY, U32); None -> (None, None)."""
    if vtype is None:
        return None, None
    v = vtype.strip().lower()
    if v.startswith("array[") and v.endswith("]"):
        et = L.VTYPE_CODES.get(v[6:-1])
        if et is None or et == L.ARRAY:
            raise ValueError(f"unknown array element type {vtype!r}")
        return L.ARRAY, et
    code = L.VTYPE_CODES.get(v)
    if code is None or code == L.ARRAY:
        raise ValueError(f"unknown value type {vtype!r}")
    return code, None


def _infer_scalar(value) -> int:
    if isinstance(value, np.generic):
        vt = _NP_VTYPES.get(value.dtype)
        if vt is None:
            raise ValueError(f"unsupported numpy type {value.dtype}")
        return vt
    if isinstance(value, bool):
        return L.BOOL
    if isinstance(value, int):
        return L.I64
    if isinstance(value, float):
        return L.F64
    if isinstance(value, str):
        return L.STRING
    raise ValueError(f"cannot store a {type(value).__name__} (use bool, int, float, str or a list/array of them)")


def _infer_elements(values: list) -> int:
    if not values:
        raise ValueError("an empty list needs an explicit vtype such as 'array[u32]'")
    kinds = {_infer_scalar(v) for v in values}
    if len(kinds) == 1:
        return kinds.pop()
    if kinds <= {L.I64, L.F64} or all(k in L.SCALAR_FORMATS and k != L.BOOL for k in kinds):
        return L.F64 if (L.F64 in kinds or L.F32 in kinds) else L.I64
    raise ValueError("a list mixes value types that do not share one element type")


def _encode_scalar(vt: int, value) -> bytes:
    if vt == L.STRING:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {type(value).__name__}")
        b = value.encode("utf-8")
        if len(b) > L.MAX_STRING_BYTES:
            raise ValueError(f"string of {len(b)} bytes exceeds the limit {L.MAX_STRING_BYTES}")
        return struct.pack("<I", len(b)) + b
    fmt, _, rng = L.SCALAR_FORMATS[vt]
    if vt == L.BOOL:
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"expected a bool, got {type(value).__name__}")
        return struct.pack(fmt, int(bool(value)))
    if rng is not None:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"expected an integer, got {type(value).__name__}")
        v = int(value)
        if not rng[0] <= v <= rng[1]:
            raise ValueError(f"{v} is out of range for {L.VTYPE_NAMES[vt]}")
        return struct.pack(fmt, v)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"expected a number, got {type(value).__name__}")
    v = float(value)
    if vt == L.F32 and math.isfinite(v) and abs(v) > float(np.finfo(np.float32).max):
        raise ValueError(f"{v} overflows f32")
    return struct.pack(fmt, v)


def encode_value(value, vtype: str | None = None) -> tuple[int, int | None, bytes]:
    """-> (value type code, element type code or None, encoded bytes after the type byte)."""
    vt, et = _parse_vtype(vtype)
    is_seq = isinstance(value, (list, tuple, np.ndarray))
    if vt is not None and vt != L.ARRAY and is_seq:
        vt, et = L.ARRAY, vt  # add_metadata("k", [1, 2], "u32") means array of u32
    if vt is None:
        vt = L.ARRAY if is_seq else _infer_scalar(value)
    if vt != L.ARRAY:
        if is_seq:
            raise ValueError("a list/array value needs an array type")
        return vt, None, _encode_scalar(vt, value)
    if not is_seq:
        raise ValueError(f"an array type needs a list or array, got {type(value).__name__}")
    if isinstance(value, np.ndarray):
        if value.ndim != 1:
            raise ValueError(f"array values must be 1-D, got shape {value.shape}")
        if et is None:
            et = _NP_VTYPES.get(value.dtype)
            if et is None:
                if value.dtype.kind in "US":
                    et = L.STRING
                else:
                    raise ValueError(f"unsupported array dtype {value.dtype}")
        value = value.tolist()
    value = list(value)
    if len(value) > L.MAX_ARRAY_COUNT:
        raise ValueError(f"array of {len(value)} elements exceeds the limit {L.MAX_ARRAY_COUNT}")
    if et is None:
        et = _infer_elements(value)
    if et == L.STRING:
        body = b"".join(_encode_scalar(L.STRING, v) for v in value)
    else:
        _, dt, rng = L.SCALAR_FORMATS[et]
        for v in value:  # same checks as scalars (range, type), cheap enough for metadata
            _encode_scalar(et, v)
        body = np.asarray(value, dtype=dt).tobytes() if value else b""
    return L.ARRAY, et, bytes([et]) + struct.pack("<I", len(value)) + body


class _Planned:
    __slots__ = ("name", "type_id", "qtype", "shape", "offset", "nbytes", "crc", "crc_pos")

    def __init__(self, name, type_id, qtype, shape, nbytes):
        self.name, self.type_id, self.qtype, self.shape, self.nbytes = name, type_id, qtype, shape, nbytes
        self.offset = 0
        self.crc = 0
        self.crc_pos = 0


class GGQWriter:
    def __init__(self, path, force: bool = False, alignment: int = L.DEFAULT_ALIGNMENT):
        self.path = os.fspath(path)
        self.force = force
        if not L.valid_alignment(alignment):
            raise FormatError(f"{self.path}: alignment {alignment} must be a power of two in "
                              f"{L.MIN_ALIGNMENT}..{L.MAX_ALIGNMENT}")
        self.alignment = alignment
        if not force and os.path.lexists(self.path):
            raise ConvertError(f"{self.path} already exists; refusing to overwrite it (use --force)")
        d = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(d):
            raise ConvertError(f"{self.path}: directory {d} does not exist")
        self._meta: list[tuple[str, bytes]] = []
        self._keys: set[str] = set()
        self._tensors: list[_Planned] = []
        self._by_name: dict[str, _Planned] = {}
        self._next = 0
        self._fh = None
        self.tmp_path: str | None = None
        self._meta_bytes = self._table = None
        self._pos = 0
        self._done = False

    # -- plan -----------------------------------------------------------------------
    def _fail(self, what: str) -> FormatError:
        return FormatError(f"{self.path}: {what}")

    def _check_planning(self, what: str) -> None:
        if self._done:
            raise self._fail(f"writer is closed; cannot {what}")
        if self._fh is not None:
            raise self._fail(f"cannot {what} after the first write_tensor()")

    def add_metadata(self, key: str, value, vtype: str | None = None) -> None:
        """Typed metadata. Inference: bool->bool, int->i64, float->f64, str->string,
        numpy scalars keep their dtype, list/tuple/1-D ndarray -> typed array. vtype names a
        type explicitly: 'u8' 'i8' 'u16' 'i16' 'u32' 'i32' 'u64' 'i64' 'f32' 'f64' 'bool'
        'string' (alias 'str'), or 'array[u32]' etc. (a scalar type name with a list means its array)."""
        self._check_planning("add metadata")
        if not isinstance(key, str):
            raise self._fail(f"metadata key must be a string, got {type(key).__name__}")
        kb = key.encode("utf-8")
        if not 1 <= len(kb) <= L.MAX_KEY_BYTES:
            raise self._fail(f"metadata key {key[:40]!r} must be 1..{L.MAX_KEY_BYTES} bytes")
        if "\0" in key:
            raise self._fail(f"metadata key {key[:40]!r} contains a NUL character")
        if key in self._keys:
            raise self._fail(f"duplicate metadata key {key!r}")
        try:
            vt, _, body = encode_value(value, vtype)
        except ValueError as e:
            raise self._fail(f"metadata {key!r}: {e}") from None
        self._keys.add(key)
        self._meta.append((key, struct.pack("<I", len(kb)) + kb + bytes([vt]) + body))

    def add_tensor(self, name: str, qtype, shape, nbytes: int | None = None) -> None:
        """Declare a tensor. qtype: QuantType, name or GGML id; an id this build does not
        know is allowed only with an explicit nbytes (opaque bytes)."""
        self._check_planning("add a tensor")
        nb = name.encode("utf-8") if isinstance(name, str) else b""
        if not 1 <= len(nb) <= L.MAX_NAME_BYTES:
            raise self._fail(f"tensor name {str(name)[:40]!r} must be a string of 1..{L.MAX_NAME_BYTES} bytes")
        if "\0" in name:
            raise self._fail(f"tensor name {name[:40]!r} contains a NUL character")
        if name in self._by_name:
            raise self._fail(f"duplicate tensor name {name!r}")
        shape = tuple(int(s) for s in shape)
        if not 1 <= len(shape) <= L.MAX_DIMS:
            raise self._fail(f"tensor {name!r}: {len(shape)} dimensions (allowed 1..{L.MAX_DIMS})")
        if any(not 1 <= s <= L.MAX_DIM for s in shape) or math.prod(shape) > L.MAX_ELEMENTS:
            raise self._fail(f"tensor {name!r}: bad shape {list(shape)}")
        qt: QuantType | None
        if isinstance(qtype, int) and not isinstance(qtype, bool) and find_by_id(qtype) is None:
            if not 0 <= qtype < 2**32:
                raise self._fail(f"tensor {name!r}: type id {qtype} out of range")
            if nbytes is None:
                raise self._fail(f"tensor {name!r}: unknown type id {qtype} needs an explicit nbytes")
            qt, type_id = None, qtype
        else:
            try:
                qt = get_type(qtype)
            except QuantError as e:
                raise self._fail(f"tensor {name!r}: {e}") from None
            type_id = qt.ggml_id
            if shape[-1] % qt.block_size:
                raise self._fail(f"tensor {name!r}: row length {shape[-1]} is not a multiple of "
                                 f"the {qt.name} block size {qt.block_size}")
            want = qt.nbytes(shape)
            if nbytes is not None and nbytes != want:
                raise self._fail(f"tensor {name!r}: nbytes {nbytes} disagrees with {qt.name} {list(shape)}")
            nbytes = want
        if nbytes < 0:
            raise self._fail(f"tensor {name!r}: negative byte length")
        t = _Planned(name, type_id, qt, shape, int(nbytes))
        self._tensors.append(t)
        self._by_name[name] = t

    # -- stream ---------------------------------------------------------------------
    def _table_bytes(self) -> bytearray:
        out = bytearray()
        for t in self._tensors:
            nb = t.name.encode("utf-8")
            out += struct.pack("<I", len(nb)) + nb
            out += struct.pack("<II", t.type_id, len(t.shape))
            out += struct.pack(f"<{len(t.shape)}Q", *t.shape)
            out += struct.pack("<QQ", t.offset, t.nbytes)
            t.crc_pos = len(out)
            out += struct.pack("<I", t.crc)
        return out

    def _header(self, crc: int) -> bytes:
        return L.HEADER.pack(L.MAGIC, L.VERSION_MAJOR, L.VERSION_MINOR, self.alignment,
                             len(self._meta), len(self._tensors), len(self._meta_bytes),
                             len(self._table), self.data_offset, self.data_size, crc, 0)

    def _start(self) -> None:
        """Freeze the plan: lay out offsets, open the temp file, write header/metadata/table."""
        if len(self._meta) > L.MAX_METADATA_COUNT:
            raise self._fail(f"{len(self._meta)} metadata entries exceed the limit {L.MAX_METADATA_COUNT}")
        if len(self._tensors) > L.MAX_TENSOR_COUNT:
            raise self._fail(f"{len(self._tensors)} tensors exceed the limit {L.MAX_TENSOR_COUNT}")
        self._meta_bytes = b"".join(b for _, b in self._meta)
        if len(self._meta_bytes) > L.MAX_METADATA_SIZE:
            raise self._fail(f"metadata of {len(self._meta_bytes)} bytes exceeds the limit {L.MAX_METADATA_SIZE}")
        off = 0
        for t in self._tensors:
            t.offset = L.align_up(off, self.alignment)
            off = t.offset + t.nbytes
        self.data_size = off
        self._table = self._table_bytes()
        if len(self._table) > L.MAX_TABLE_SIZE:
            raise self._fail(f"tensor table of {len(self._table)} bytes exceeds the limit {L.MAX_TABLE_SIZE}")
        table_end = L.HEADER_SIZE + len(self._meta_bytes) + len(self._table)
        self.data_offset = L.align_up(table_end, self.alignment)
        d, base = os.path.split(os.path.abspath(self.path))
        tmp = os.path.join(d, f"{base}.tmp-{secrets.token_hex(4)}")
        try:
            self._fh = open(tmp, "xb")
        except OSError as e:
            raise self._fail(f"cannot create {tmp}: {e.strerror or e}") from None
        self.tmp_path = tmp
        self._fh.write(self._header(0))
        self._fh.write(self._meta_bytes)
        self._fh.write(self._table)
        self._fh.write(b"\0" * (self.data_offset - table_end))
        self._pos = 0  # position within the data section

    def write_tensor(self, name: str, data: np.ndarray) -> None:
        """Write the next declared tensor's bytes: uint8 of exactly its byte length (any
        shape, e.g. (rows, row_bytes)); F32/F16 tensors also accept float32/float16."""
        if self._done:
            raise self._fail("writer is closed; cannot write a tensor")
        if self._fh is None:
            self._start()
        if self._next >= len(self._tensors):
            raise self._fail(f"write_tensor({name!r}): all declared tensors are already written")
        t = self._tensors[self._next]
        if name != t.name:
            what = "was not declared" if name not in self._by_name else "is out of order"
            raise self._fail(f"write_tensor({name!r}): tensor {what}; expected {t.name!r} next")
        arr = np.asarray(data)
        natural = _FLOAT_DTYPES.get(t.qtype.name) if t.qtype is not None else None
        if arr.dtype != np.uint8 and not (natural is not None and arr.dtype == natural):
            raise self._fail(f"tensor {name!r}: data must be uint8 (got {arr.dtype})")
        if arr.nbytes != t.nbytes:
            tname = t.qtype.name if t.qtype is not None else f"type {t.type_id}"
            raise self._fail(f"tensor {name!r}: got {arr.nbytes} bytes, but {tname} "
                             f"{list(t.shape)} needs {t.nbytes}")
        buf = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
        pad = t.offset - self._pos
        if pad:
            self._fh.write(b"\0" * pad)
        t.crc = zlib.crc32(buf)
        self._fh.write(memoryview(buf))
        self._pos = t.offset + t.nbytes
        self._next += 1

    def close(self) -> None:
        """Finish: patch checksums, fsync, move into place. Raises if tensors are missing."""
        if self._done:
            return
        try:
            if self._fh is None:
                self._start()
            if self._next != len(self._tensors):
                missing = [t.name for t in self._tensors[self._next:]]
                raise self._fail(f"{len(missing)} declared tensors were never written "
                                 f"(first: {missing[0]!r})")
            for t in self._tensors:
                struct.pack_into("<I", self._table, t.crc_pos, t.crc)
            table_off = L.HEADER_SIZE + len(self._meta_bytes)
            crc = zlib.crc32(self._header(0))
            crc = zlib.crc32(self._meta_bytes, crc)
            crc = zlib.crc32(self._table, crc)
            crc = zlib.crc32(b"\0" * (self.data_offset - table_off - len(self._table)), crc)
            self._fh.seek(table_off)
            self._fh.write(self._table)
            self._fh.seek(0)
            self._fh.write(self._header(crc))
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None
            self._publish()
        except BaseException:
            self.abort()
            raise
        self._done = True

    def _publish(self) -> None:
        if self.force:
            os.replace(self.tmp_path, self.path)
        else:
            # link() fails if the output appeared meanwhile: never clobber without force
            try:
                os.link(self.tmp_path, self.path)
            except FileExistsError:
                raise ConvertError(f"{self.path} already exists; refusing to overwrite it (use --force)") from None
            except OSError:
                if os.path.lexists(self.path):
                    raise ConvertError(f"{self.path} already exists; refusing to overwrite it (use --force)") from None
                os.replace(self.tmp_path, self.path)
            else:
                os.unlink(self.tmp_path)
        self.tmp_path = None
        sync_folder(self.path)

    def abort(self) -> None:
        """Drop everything written so far: no output, no temp file."""
        self._done = True
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError:
                pass
            self._fh = None
        if self.tmp_path is not None:
            try:
                os.unlink(self.tmp_path)
            except FileNotFoundError:
                pass
            self.tmp_path = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
            return False
        self.close()
        return False

    def __del__(self):
        # an abandoned writer (no close/with) must not leave its temp file behind
        if getattr(self, "tmp_path", None) and not getattr(self, "_done", True):
            self.abort()
