"""GGQReader: open a .ggq file, validate its structure against the file size, mmap the data.

Every length and count is checked against the stated limits and the bytes that remain
before anything is allocated; the tensor table is validated at open (cheap); tensor
checksums are computed only by verify().
"""
from __future__ import annotations

import mmap
import os
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import FormatError
from ..quants import QuantType, find_by_id
from . import layout as L

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_CRC_CHUNK = 16 << 20


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type_id: int
    qtype: QuantType | None   # None: a type this build does not know (raw bytes still readable)
    shape: tuple[int, ...]    # numpy order: (rows, cols); last dimension contiguous
    offset: int               # relative to the data section
    nbytes: int
    checksum: int             # CRC-32 (zlib) of the tensor's bytes

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def rows(self) -> int:
        return self.n_elements // self.shape[-1]

    @property
    def type_name(self) -> str:
        return self.qtype.name if self.qtype is not None else f"unknown({self.type_id})"


class _Cursor:
    """Bounds-checked little-endian reads from one section (a memoryview)."""

    def __init__(self, buf: memoryview, path: str, section: str, base: int):
        self.buf, self.path, self.section, self.base = buf, path, section, base
        self.pos = 0

    def fail(self, what: str, rule: int) -> FormatError:
        return FormatError(f"{self.path}: {self.section} at byte {self.base + self.pos}: {what} "
                           f"[rule {rule}]")

    def need(self, n: int, what: str) -> None:
        if n > len(self.buf) - self.pos:
            raise self.fail(f"{what} needs {n} bytes but the {self.section} has only "
                            f"{len(self.buf) - self.pos} left", 7)

    def take(self, n: int, what: str) -> memoryview:
        self.need(n, what)
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return b

    def u32(self, what: str) -> int:
        return _U32.unpack(self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return _U64.unpack(self.take(8, what))[0]

    def utf8(self, n: int, what: str, rule: int) -> str:
        """n bytes of strict UTF-8 (Python's codec rejects overlong forms, encoded surrogates
        and code points above U+10FFFF, as RFC 3629 does)."""
        start = self.pos
        raw = self.take(n, what)
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            self.pos = start
            raise self.fail(f"{what} is not valid UTF-8", rule) from None


def _read_scalar(cur: _Cursor, vt: int, what: str):
    fmt, _, _ = L.SCALAR_FORMATS[vt]
    size = struct.calcsize(fmt)
    v = struct.unpack(fmt, cur.take(size, what))[0]
    if vt == L.BOOL:
        if v > 1:
            raise cur.fail(f"{what}: bool value {v} is not 0 or 1", 9)
        return bool(v)
    return v


def _read_string(cur: _Cursor, what: str) -> str:
    n = cur.u32(f"{what} length")
    if n > L.MAX_STRING_BYTES:
        raise cur.fail(f"{what}: string length {n} exceeds the limit {L.MAX_STRING_BYTES}", 9)
    return cur.utf8(n, what, 9)


def _validate_utf8_chunked(cur: _Cursor, n: int, what: str, rule: int) -> None:
    """Check n bytes of strict UTF-8 without holding them as one str (a chunk at a time)."""
    import codecs

    start = cur.pos
    raw = cur.take(n, what)
    dec = codecs.getincrementaldecoder("utf-8")("strict")
    try:
        for i in range(0, n, _UTF8_CHUNK):
            dec.decode(raw[i:i + _UTF8_CHUNK], final=i + _UTF8_CHUNK >= n)
        if n == 0:
            dec.decode(b"", final=True)
    except UnicodeDecodeError:
        cur.pos = start
        raise cur.fail(f"{what} is not valid UTF-8", rule) from None


def _read_value(cur: _Cursor, vt: int, what: str, lazy: bool = False):
    """The value at the cursor. lazy=True: a long string or a big array is validated exactly as
    when read, but returned as a _Lazy (its byte range), decoded when asked for."""
    if vt in L.SCALAR_FORMATS:
        return _read_scalar(cur, vt, what)
    if vt == L.STRING:
        if lazy:
            n = cur.u32(f"{what} length")
            if n > L.MAX_STRING_BYTES:
                raise cur.fail(f"{what}: string length {n} exceeds the limit {L.MAX_STRING_BYTES}", 9)
            if n >= LAZY_MIN_BYTES:
                start = cur.pos
                _validate_utf8_chunked(cur, n, what, 9)
                return _Lazy(cur.base + start, n, L.STRING, None, 0)
            return cur.utf8(n, what, 9)
        return _read_string(cur, what)
    if vt == L.ARRAY:
        et = cur.take(1, f"{what} element type")[0]
        if et not in L.SCALAR_FORMATS and et != L.STRING:  # checked even when count is 0
            cur.pos -= 1
            raise cur.fail(f"{what}: unsupported array element type {et}"
                           + (" (arrays of arrays do not exist)" if et == L.ARRAY else ""), 9)
        count = cur.u32(f"{what} count")
        if count > L.MAX_ARRAY_COUNT:
            raise cur.fail(f"{what}: array count {count} exceeds the limit {L.MAX_ARRAY_COUNT}", 9)
        start = cur.pos
        if et in L.SCALAR_FORMATS:
            _, dt, _ = L.SCALAR_FORMATS[et]
            raw = cur.take(count * np.dtype(dt).itemsize, f"{what} ({count} elements)")
            arr = np.frombuffer(raw, dtype=dt, count=count)
            if et == L.BOOL:
                if count and int(arr.max()) > 1:
                    i = int(np.argmax(arr > 1))
                    raise cur.fail(f"{what}: bool array element {i} is {int(arr[i])}, not 0 or 1", 9)
            if lazy and len(raw) >= LAZY_MIN_BYTES:
                del arr
                return _Lazy(cur.base + start, len(raw), L.ARRAY, et, count)
            return _scalar_list(arr, et)
        if et == L.STRING:
            # each string needs at least its 4-byte length: bound count before looping
            cur.need(4 * count, f"{what} ({count} strings)")
            if lazy:
                for i in range(count):  # validated one at a time, nothing kept
                    _read_string(cur, f"{what}[{i}]")
                if cur.pos - start >= LAZY_MIN_BYTES:
                    return _Lazy(cur.base + start, cur.pos - start, L.ARRAY, et, count)
                cur.pos = start
            return [_read_string(cur, f"{what}[{i}]") for i in range(count)]
    raise cur.fail(f"{what}: unknown value type {vt}", 9)


def _scalar_list(arr: np.ndarray, et: int) -> list:
    if et == L.BOOL:
        return [bool(x) for x in arr]
    return arr.tolist()


# A string or array value of at least this many bytes stays in the file until asked for (the
# metadata of a 262k-token vocabulary would otherwise cost ~100 MB of Python objects at load).
LAZY_MIN_BYTES = 1 << 16
_UTF8_CHUNK = 1 << 20


@dataclass(frozen=True)
class _Lazy:
    """A validated metadata value not yet decoded: its bytes [offset, offset + nbytes) in the
    file (an array's elements, after its type and count)."""
    offset: int
    nbytes: int
    vtype: int
    etype: int | None
    count: int


class Metadata(Mapping):
    """{key: value} of a file's metadata, in file order, read-only. Long strings and big arrays
    are decoded from the file's map each time they are asked for (and then need the reader
    open); raw_string(key) gives a string's UTF-8 bytes without decoding it."""

    def __init__(self, reader: "GGQReader", values: dict):
        self._reader = reader
        self._values = values

    def _decode(self, key: str, lz: _Lazy):
        mm = self._reader._mm
        if mm is None:
            raise FormatError(f"{self._reader.path}: reader is closed (metadata {key!r} is read "
                              f"from the file when asked for)")
        try:
            if lz.vtype == L.STRING:
                return mm[lz.offset:lz.offset + lz.nbytes].decode("utf-8")
            if lz.etype in L.SCALAR_FORMATS:
                arr = np.frombuffer(mm, dtype=L.SCALAR_FORMATS[lz.etype][1], count=lz.count,
                                    offset=lz.offset)
                return _scalar_list(arr, lz.etype)
            with memoryview(mm) as view:  # validated at open: the cursor cannot fail here
                cur = _Cursor(view[lz.offset:lz.offset + lz.nbytes], self._reader.path, "metadata",
                              lz.offset)
                try:
                    return [_read_string(cur, f"{key!r}[{i}]") for i in range(lz.count)]
                finally:
                    cur.buf.release()
        finally:
            self._reader.release_pages(lz.offset, lz.offset + lz.nbytes)

    def __getitem__(self, key: str):
        v = self._values[key]
        return self._decode(key, v) if isinstance(v, _Lazy) else v

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, key) -> bool:
        return key in self._values

    def is_lazy(self, key: str) -> bool:
        """True when the value stays in the file until asked for."""
        return isinstance(self._values.get(key), _Lazy)

    def raw_string(self, key: str) -> bytes:
        """A string value's UTF-8 bytes (validated at open), without decoding it to a str."""
        v = self._values[key]
        if isinstance(v, _Lazy):
            if v.vtype != L.STRING:
                raise FormatError(f"{self._reader.path}: metadata {key!r} is not a string")
            if self._reader._mm is None:
                raise FormatError(f"{self._reader.path}: reader is closed")
            raw = self._reader._mm[v.offset:v.offset + v.nbytes]
            self._reader.release_pages(v.offset, v.offset + v.nbytes)
            return raw
        if not isinstance(v, str):
            raise FormatError(f"{self._reader.path}: metadata {key!r} is not a string")
        return v.encode("utf-8")

    def __repr__(self) -> str:
        return f"<Metadata {len(self)} keys of {self._reader.path!r}>"


def _read_metadata(cur: _Cursor, count: int, lazy: bool = False) -> tuple[dict, dict]:
    meta: dict = {}
    types: dict = {}
    for i in range(count):
        klen = cur.u32(f"key #{i} length")
        if not 1 <= klen <= L.MAX_KEY_BYTES:
            raise cur.fail(f"key #{i} length {klen} is outside 1..{L.MAX_KEY_BYTES}", 8)
        key = cur.utf8(klen, f"key #{i}", 8)
        if "\0" in key:
            raise cur.fail(f"key #{i} {key!r} contains a NUL character", 8)
        if key in meta:  # code points equal <=> UTF-8 bytes equal: a byte comparison
            raise cur.fail(f"duplicate metadata key {key!r}", 8)
        vt = cur.take(1, f"value type of {key!r}")[0]
        if vt not in L.VTYPE_NAMES:
            cur.pos -= 1
            raise cur.fail(f"{key!r}: unknown value type {vt}", 9)
        if vt == L.ARRAY:
            et = cur.buf[cur.pos] if cur.pos < len(cur.buf) else None
        meta[key] = _read_value(cur, vt, repr(key), lazy)
        types[key] = (f"array[{L.VTYPE_NAMES[et]}]" if vt == L.ARRAY else L.VTYPE_NAMES[vt])
    if cur.pos != len(cur.buf):
        raise cur.fail(f"{len(cur.buf) - cur.pos} unused bytes after the last metadata entry "
                       f"(metadata_size disagrees with the entries)", 7)
    return meta, types


class GGQReader:
    """Read-only view of a .ggq file. Use as a context manager or call close().

    metadata: a read-only mapping {key: value} in file order (Metadata), plain Python values:
    int, float (f32 widened exactly to a Python float), bool, str, and arrays as Python lists.
    Every value is validated at open; long strings and big arrays (LAZY_MIN_BYTES and up) are
    decoded from the map when asked for, so they need the reader open. metadata_types gives
    each key's stored type name ("u32", "f32", "string", "array[string]", ...).
    check_header_crc=False opens a file whose header checksum fails (verify() then reports
    "<header>"); the structure is validated either way."""

    def __init__(self, path, check_header_crc: bool = True):
        self.path = os.fspath(path)
        self._mm = None
        self._file = None
        try:
            self._file = open(self.path, "rb")
        except OSError as e:
            raise FormatError(f"{self.path}: cannot open: {e.strerror or e}") from None
        try:
            self._open(check_header_crc)
        except BaseException:
            self.close()
            raise

    # -- parsing --------------------------------------------------------------------
    def _fail(self, what: str, rule: int) -> FormatError:
        """One line naming the file, the problem and the rule of spec/FORMAT.md section 9."""
        return FormatError(f"{self.path}: {what} [rule {rule}]")

    def _open(self, check_header_crc: bool) -> None:
        size = os.fstat(self._file.fileno()).st_size
        self.file_size = size
        if size < L.HEADER_SIZE:
            head = self._file.read(8)
            if len(head) >= 4 and not L.MAGIC.startswith(head[: len(L.MAGIC)]):
                raise self._fail("not a .ggq file (bad magic)", 1)
            raise self._fail(f"truncated: {size} bytes is shorter than the {L.HEADER_SIZE}-byte header", 1)
        self._mm = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        mm = self._mm
        (magic, major, minor, alignment, n_meta, n_tensors, meta_size, table_size,
         data_offset, data_size, header_crc, flags) = L.HEADER.unpack_from(mm, 0)
        if magic != L.MAGIC:
            if magic[:4] == b"GGUF":
                raise self._fail("bad magic: this is a GGUF file, not .ggq (convert it with `ggq convert`)", 1)
            raise self._fail(f"not a .ggq file (bad magic {magic!r})", 1)
        if major != L.VERSION_MAJOR:
            raise self._fail(f"unsupported format version {major}.{minor} "
                             f"(this reader understands major version {L.VERSION_MAJOR})", 2)
        self.version = (major, minor)
        self.flags = flags
        if not L.valid_alignment(alignment):
            raise self._fail(f"bad alignment {alignment} (must be a power of two in "
                             f"{L.MIN_ALIGNMENT}..{L.MAX_ALIGNMENT})", 3)
        self.alignment = alignment
        if n_meta > L.MAX_METADATA_COUNT:
            raise self._fail(f"metadata count {n_meta} exceeds the limit {L.MAX_METADATA_COUNT}", 4)
        if n_tensors > L.MAX_TENSOR_COUNT:
            raise self._fail(f"tensor count {n_tensors} exceeds the limit {L.MAX_TENSOR_COUNT}", 4)
        if meta_size > L.MAX_METADATA_SIZE:
            raise self._fail(f"metadata size {meta_size} exceeds the limit {L.MAX_METADATA_SIZE}", 4)
        if table_size > L.MAX_TABLE_SIZE:
            raise self._fail(f"tensor table size {table_size} exceeds the limit {L.MAX_TABLE_SIZE}", 4)
        table_off = L.HEADER_SIZE + meta_size
        table_end = table_off + table_size
        if table_end > size:
            raise self._fail(f"truncated: metadata and tensor table end at byte {table_end} "
                             f"but the file has {size} bytes", 5)
        if data_offset != L.align_up(table_end, alignment):
            raise self._fail(f"data offset {data_offset} is not the tensor table end {table_end} "
                             f"rounded up to the alignment {alignment}", 5)
        if data_offset + data_size != size:
            if data_offset + data_size > size:
                raise self._fail(f"truncated: data section ends at byte {data_offset + data_size} "
                                 f"but the file has {size} bytes", 5)
            raise self._fail(f"{size - data_offset - data_size} unexpected bytes after the data section", 5)
        self.data_offset, self.data_size = data_offset, data_size
        self.header_checksum = header_crc
        self.header_ok = self._header_crc() == header_crc
        if check_header_crc and not self.header_ok:
            raise self._fail("header checksum mismatch (header, metadata or tensor table is corrupt)", 6)

        view = memoryview(mm)
        try:
            cur = _Cursor(view[L.HEADER_SIZE:table_off], self.path, "metadata", L.HEADER_SIZE)
            values, self.metadata_types = _read_metadata(cur, n_meta, lazy=True)
            self.metadata = Metadata(self, values)
            cur = _Cursor(view[table_off:table_end], self.path, "tensor table", table_off)
            self.tensors = self._read_table(cur, n_tensors)
        finally:
            view.release()
        self.release_pages(0, data_offset)

    def release_pages(self, start: int, end: int) -> None:
        """Drop the map's resident pages over bytes [start, end) from this process (they are
        read again from the page cache if touched): a big vocabulary's metadata, read once at
        open, would otherwise stay in the resident set (~17 MB for Gemma 3)."""
        if self._mm is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        start -= start % mmap.PAGESIZE
        end = min(end, self.file_size)
        if end > start:
            self._mm.madvise(mmap.MADV_DONTNEED, start, end - start)

    def _header_crc(self) -> int:
        with memoryview(self._mm) as view:  # slices of a view: no copy of the metadata
            crc = zlib.crc32(view[: L.CRC_FIELD_OFFSET])
            crc = zlib.crc32(b"\0\0\0\0", crc)
            end = self.data_offset
            for start in range(L.CRC_FIELD_OFFSET + 4, end, _CRC_CHUNK):
                with view[start:min(start + _CRC_CHUNK, end)] as chunk:
                    crc = zlib.crc32(chunk, crc)
        return crc

    def _read_table(self, cur: _Cursor, count: int) -> dict:
        tensors: dict[str, TensorInfo] = {}
        for i in range(count):
            nlen = cur.u32(f"tensor #{i} name length")
            if not 1 <= nlen <= L.MAX_NAME_BYTES:
                raise cur.fail(f"tensor #{i} name length {nlen} is outside 1..{L.MAX_NAME_BYTES}", 8)
            name = cur.utf8(nlen, f"tensor #{i} name", 8)
            if "\0" in name:
                raise cur.fail(f"tensor #{i} name {name!r} contains a NUL character", 8)
            if name in tensors:  # code points equal <=> UTF-8 bytes equal: a byte comparison
                raise cur.fail(f"duplicate tensor name {name!r}", 8)
            type_id = cur.u32(f"{name!r} type")
            ndims = cur.u32(f"{name!r} dimension count")
            if not 1 <= ndims <= L.MAX_DIMS:
                raise cur.fail(f"tensor {name!r} has {ndims} dimensions (allowed 1..{L.MAX_DIMS})", 10)
            shape = tuple(cur.u64(f"{name!r} dimension") for _ in range(ndims))
            n = 1
            for d in shape:
                if not 1 <= d <= L.MAX_DIM:
                    raise cur.fail(f"tensor {name!r} has dimension {d} (allowed 1..{L.MAX_DIM})", 10)
                n *= d
            if n > L.MAX_ELEMENTS:
                raise cur.fail(f"tensor {name!r} has {n} elements (limit {L.MAX_ELEMENTS})", 10)
            offset = cur.u64(f"{name!r} offset")
            nbytes = cur.u64(f"{name!r} byte length")
            crc = cur.u32(f"{name!r} checksum")
            qt = find_by_id(type_id)
            if qt is not None:
                if shape[-1] % qt.block_size:
                    raise cur.fail(f"tensor {name!r}: row length {shape[-1]} is not a multiple of "
                                   f"the {qt.name} block size {qt.block_size}", 11)
                want = n // shape[-1] * (shape[-1] // qt.block_size) * qt.type_size
                if nbytes != want:
                    raise cur.fail(f"tensor {name!r}: byte length {nbytes} disagrees with its "
                                   f"{qt.name} shape {list(shape)} ({want} bytes)", 11)
            if offset % self.alignment:
                raise cur.fail(f"tensor {name!r}: offset {offset} is not a multiple of the "
                               f"alignment {self.alignment}", 12)
            if offset > self.data_size or nbytes > self.data_size - offset:
                raise cur.fail(f"tensor {name!r}: bytes [{offset}, {offset + nbytes}) lie outside "
                               f"the {self.data_size}-byte data section", 12)
            tensors[name] = TensorInfo(name, type_id, qt, shape, offset, nbytes, crc)
        if cur.pos != len(cur.buf):
            raise cur.fail(f"{len(cur.buf) - cur.pos} unused bytes after the last tensor entry "
                           f"(table_size disagrees with the entries)", 7)
        # overlap = a shared byte: half-open [offset, offset + nbytes); a tensor of nbytes 0
        # covers no byte, so it overlaps nothing (it may share its offset with another tensor)
        spans = sorted((t.offset, t.offset + t.nbytes, t.name) for t in tensors.values() if t.nbytes)
        for (s0, e0, a), (s1, e1, b) in zip(spans, spans[1:]):
            if s1 < e0:
                raise self._fail(f"tensors {a!r} and {b!r} overlap in the data section", 12)
        return tensors

    # -- access ---------------------------------------------------------------------
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:
                pass  # numpy views still alive: the map is released when they are
            self._mm = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def _info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise FormatError(f"{self.path}: no tensor named {name!r}") from None

    def _bytes(self, info: TensorInfo) -> np.ndarray:
        if self._mm is None:
            raise FormatError(f"{self.path}: reader is closed")
        return np.frombuffer(self._mm, dtype=np.uint8, count=info.nbytes,
                             offset=self.data_offset + info.offset)

    def raw(self, name: str) -> np.ndarray:
        """Zero-copy read-only uint8 view, shape (rows, row_bytes). Unknown types: (rows,
        nbytes // rows) when rows divides the byte length, else (1, nbytes)."""
        info = self._info(name)
        b = self._bytes(info)
        rows = info.rows
        if info.qtype is None and info.nbytes % rows:
            rows = 1
        return b.reshape(rows, info.nbytes // rows)

    def dequantize(self, name: str) -> np.ndarray:
        """float32 array of the tensor's shape (a copy; for tests and small tensors)."""
        info = self._info(name)
        if info.qtype is None:
            raise FormatError(f"{self.path}: tensor {name!r} has unknown type id {info.type_id}; "
                              f"only its raw bytes can be read")
        out = info.qtype.dequantize(self.raw(name), info.shape[-1])
        return np.asarray(out, dtype=np.float32).reshape(info.shape)

    def tensor_crc(self, name: str) -> int:
        info = self._info(name)
        b = self._bytes(info)
        crc = 0
        for start in range(0, info.nbytes, _CRC_CHUNK):
            crc = zlib.crc32(b[start:start + _CRC_CHUNK], crc)
        return crc

    def verify(self) -> list[str]:
        """Names whose CRC-32 fails; "<header>" first if the header checksum fails."""
        bad = [] if self.header_ok else ["<header>"]
        bad += [n for n, t in self.tensors.items() if self.tensor_crc(n) != t.checksum]
        return bad

    def get(self, key: str, default=None):
        return self.metadata.get(key, default)

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def __repr__(self) -> str:
        return (f"<GGQReader {self.path!r} v{self.version[0]}.{self.version[1]} "
                f"{len(self.metadata)} keys, {len(self.tensors)} tensors>")
