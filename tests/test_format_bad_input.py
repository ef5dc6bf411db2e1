"""Every malformed-file case of spec/FORMAT.md section 9 gives a FormatError naming the file.

Files are built by patching a valid file's header/table fields and then re-computing the
header CRC, so that the structural check under test (not the checksum) is what fires."""
import re
import struct
import zlib

import numpy as np
import pytest

from ggq.errors import FormatError
from ggq.format import GGQReader, GGQWriter
from ggq.format import layout as L


def _fix_crc(b: bytearray) -> bytearray:
    doff = struct.unpack_from("<Q", b, 40)[0]
    struct.pack_into("<I", b, 56, 0)
    struct.pack_into("<I", b, 56, zlib.crc32(bytes(b[:min(doff, len(b))])))
    return b


@pytest.fixture
def good(tmp_path):
    p = tmp_path / "good.ggq"
    with GGQWriter(p) as w:
        w.add_metadata("general.architecture", "llama")
        w.add_metadata("arr", ["x", "y"])
        w.add_tensor("a", "Q8_0", (2, 32))
        w.add_tensor("b", "F32", (16,))
        w.write_tensor("a", np.zeros((2, 34), np.uint8))
        w.write_tensor("b", np.arange(16, dtype=np.float32))
    return p


def _layout(p):
    with GGQReader(p) as r:
        meta_off = L.HEADER_SIZE
        (_, _, _, _, _, _, msize, tsize, doff, dsize, _, _) = L.HEADER.unpack_from(p.read_bytes())
        return {"table": meta_off + msize, "msize": msize, "tsize": tsize, "doff": doff, "dsize": dsize,
                "tensors": dict(r.tensors)}


def _entry_pos(b: bytes, table: int, index: int) -> int:
    """Byte position of tensor entry #index in the table."""
    pos = table
    for _ in range(index):
        n = struct.unpack_from("<I", b, pos)[0]
        nd = struct.unpack_from("<I", b, pos + 8 + n)[0]
        pos += 4 + n + 8 + 8 * nd + 20
    return pos


def _field(b, table, index):
    """-> dict of absolute positions of entry #index's fields."""
    pos = _entry_pos(b, table, index)
    n = struct.unpack_from("<I", b, pos)[0]
    nd = struct.unpack_from("<I", b, pos + 8 + n)[0]
    return {"name_len": pos, "name": pos + 4, "type": pos + 4 + n, "ndims": pos + 8 + n,
            "dims": pos + 12 + n, "offset": pos + 12 + n + 8 * nd, "nbytes": pos + 20 + n + 8 * nd,
            "crc": pos + 28 + n + 8 * nd}


def _reject(tmp_path, data: bytes, match: str):
    p = tmp_path / "bad.ggq"
    p.write_bytes(bytes(data))
    with pytest.raises(FormatError, match=match) as ei:
        GGQReader(p)
    msg = str(ei.value)
    assert "bad.ggq" in msg and "\n" not in msg
    assert re.search(r" \[rule (1[0-3]|[1-9])\]$", msg), msg  # spec/FORMAT.md section 9 rule
    return msg


def test_good_file_opens(good):
    with GGQReader(good) as r:
        assert r.verify() == []


def test_bad_magic(tmp_path, good):
    b = bytearray(good.read_bytes())
    b[:4] = b"GGUF"
    _reject(tmp_path, b, "GGUF file")
    b[:8] = b"PK\x03\x04abcd"
    _reject(tmp_path, b, "bad magic")
    _reject(tmp_path, b"hello", "bad magic")


def test_unknown_major_version(tmp_path, good):
    b = bytearray(good.read_bytes())
    struct.pack_into("<H", b, 8, 2)
    _reject(tmp_path, _fix_crc(b), "version 2.0")


def test_newer_minor_version_accepted(tmp_path, good):
    b = bytearray(good.read_bytes())
    struct.pack_into("<H", b, 10, 7)
    p = tmp_path / "minor.ggq"
    p.write_bytes(bytes(_fix_crc(b)))
    with GGQReader(p) as r:
        assert r.version == (1, 7)


@pytest.mark.parametrize("alignment", [0, 16, 48, 1 << 20])
def test_bad_alignment(tmp_path, good, alignment):
    b = bytearray(good.read_bytes())
    struct.pack_into("<I", b, 12, alignment)
    _reject(tmp_path, _fix_crc(b), "alignment")


@pytest.mark.parametrize("off,fmt,value,match", [
    (16, "<I", 1 << 20, "metadata count"),
    (20, "<I", 1 << 31, "tensor count"),
    (24, "<Q", 1 << 62, "metadata size"),
    (32, "<Q", 1 << 40, "table size"),
])
def test_absurd_counts_and_sizes(tmp_path, good, off, fmt, value, match):
    b = bytearray(good.read_bytes())
    struct.pack_into(fmt, b, off, value)
    _reject(tmp_path, _fix_crc(b), match)


def test_sections_past_eof(tmp_path, good):
    b = bytearray(good.read_bytes())
    struct.pack_into("<Q", b, 24, len(b))  # metadata claims more than the file holds
    _reject(tmp_path, _fix_crc(b), "truncated")


def test_data_offset_and_size_inconsistent(tmp_path, good):
    lay = _layout(good)
    b = bytearray(good.read_bytes())
    struct.pack_into("<Q", b, 40, lay["doff"] + 64)
    _reject(tmp_path, _fix_crc(b), "data offset")
    b = bytearray(good.read_bytes())
    struct.pack_into("<Q", b, 48, lay["dsize"] + 1)
    _reject(tmp_path, _fix_crc(b), "truncated")
    _reject(tmp_path, good.read_bytes() + b"\0" * 3, "unexpected bytes after")


def test_truncated_at_every_length(tmp_path, good):
    b = good.read_bytes()
    for n in range(len(b)):
        _reject(tmp_path, b[:n], "truncated|bad magic")


def test_header_crc_mismatch(tmp_path, good):
    b = bytearray(good.read_bytes())
    b[70] ^= 0x20
    _reject(tmp_path, b, "header checksum")


def test_metadata_size_disagrees_with_entries(tmp_path, good):
    lay = _layout(good)
    b = bytearray(good.read_bytes())
    struct.pack_into("<I", b, 16, 1)  # one entry fewer than written: leftover bytes
    _reject(tmp_path, _fix_crc(b), "unused bytes")
    b = bytearray(good.read_bytes())
    struct.pack_into("<I", b, 16, 3)  # one more than fits
    _reject(tmp_path, _fix_crc(b), "metadata at byte")
    b = bytearray(good.read_bytes())
    struct.pack_into("<I", b, 20, 1)
    _reject(tmp_path, _fix_crc(b), "unused bytes")
    assert lay["msize"] > 0


def _meta_file(tmp_path, entries: bytes, count: int) -> bytes:
    """A file whose metadata section is exactly `entries` (no tensors)."""
    doff = L.align_up(64 + len(entries), 64)
    h = L.HEADER.pack(L.MAGIC, 1, 0, 64, count, 0, len(entries), 0, doff, 0, 0, 0)
    return bytes(_fix_crc(bytearray(h + entries + b"\0" * (doff - 64 - len(entries)))))


def _kv(key: bytes, vt: int, body: bytes) -> bytes:
    return struct.pack("<I", len(key)) + key + bytes([vt]) + body


@pytest.mark.parametrize("entry,match", [
    (_kv(b"k", 8, struct.pack("<I", 0x7FFFFFFF) + b"ab"), "string length"),
    (_kv(b"k", 8, struct.pack("<I", 1000) + b"ab"), "needs 1000 bytes"),
    (_kv(b"k", 9, bytes([4]) + struct.pack("<I", 1 << 30)), "array count"),
    (_kv(b"k", 9, bytes([4]) + struct.pack("<I", 1000) + b"\0" * 8), "needs 4000 bytes"),
    (_kv(b"k", 9, bytes([8]) + struct.pack("<I", 100000)), "100000 strings"),
    (_kv(b"k", 9, bytes([9]) + struct.pack("<I", 0)), "element type 9"),
    (_kv(b"k", 13, b"\0" * 8), "unknown value type 13"),
    (_kv(b"k", 7, b"\x02"), "bool value 2"),
    (_kv(b"k", 9, bytes([7]) + struct.pack("<I", 2) + b"\x01\x05"), "bool array"),
    (_kv(b"\xc3\x28", 4, b"\0" * 4), "UTF-8"),
    (_kv(b"k", 8, struct.pack("<I", 2) + b"\xed\xa0"), "UTF-8"),
    (_kv(b"", 4, b"\0" * 4), "key #0 length 0"),
    (_kv(b"k" * 300, 4, b"\0" * 4), "key #0 length 300"),
    (_kv(b"k", 4, b"\0" * 4) + _kv(b"k", 4, b"\0" * 4), "duplicate metadata key"),
    (struct.pack("<I", 0xFFFFFFFF), "key #0 length"),
])
def test_bad_metadata(tmp_path, entry, match):
    count = 2 if match == "duplicate metadata key" else 1
    _reject(tmp_path, _meta_file(tmp_path, entry, count), match)


def _patch_table(good, index, field, fmt, value):
    lay = _layout(good)
    b = bytearray(good.read_bytes())
    pos = _field(b, lay["table"], index)[field]
    struct.pack_into(fmt, b, pos, value)
    return _fix_crc(b), lay


def test_misaligned_offset(tmp_path, good):
    b, _ = _patch_table(good, 1, "offset", "<Q", 96 + 8)
    _reject(tmp_path, b, "alignment")


def test_out_of_bounds(tmp_path, good):
    dsize = _layout(good)["dsize"]
    b, _ = _patch_table(good, 1, "offset", "<Q", L.align_up(dsize, 64))  # aligned, past the end
    _reject(tmp_path, b, "outside")
    b, _ = _patch_table(good, 1, "offset", "<Q", 1 << 63)
    _reject(tmp_path, b, "outside")
    b, _ = _patch_table(good, 1, "nbytes", "<Q", 2**64 - 1)  # unknown-size overflow guard
    _reject(tmp_path, b, "disagrees|outside")


def test_overlapping(tmp_path, good):
    b, _ = _patch_table(good, 1, "offset", "<Q", 0)
    _reject(tmp_path, b, "overlap")


def test_length_disagrees_with_shape(tmp_path, good):
    b, _ = _patch_table(good, 0, "nbytes", "<Q", 64)
    _reject(tmp_path, b, "byte length 64 disagrees")
    b, _ = _patch_table(good, 0, "dims", "<Q", 3)  # 3 x 32 Q8_0 would be 102 bytes
    _reject(tmp_path, b, "disagrees")


def test_row_not_multiple_of_block(tmp_path, good):
    lay = _layout(good)
    b = bytearray(good.read_bytes())
    f = _field(b, lay["table"], 0)
    struct.pack_into("<Q", b, f["dims"] + 8, 33)
    _reject(tmp_path, _fix_crc(b), "not a multiple of the Q8_0 block size")


def test_zero_and_huge_dims(tmp_path, good):
    b, _ = _patch_table(good, 0, "dims", "<Q", 0)
    _reject(tmp_path, b, "dimension 0")
    b, _ = _patch_table(good, 0, "dims", "<Q", 1 << 63)  # "negative" as i64
    _reject(tmp_path, b, "dimension")


def test_too_many_dims(tmp_path, good):
    b, _ = _patch_table(good, 1, "ndims", "<I", 5)
    _reject(tmp_path, b, "5 dimensions")
    b, _ = _patch_table(good, 1, "ndims", "<I", 0)
    _reject(tmp_path, b, "0 dimensions")


def test_tensor_name_problems(tmp_path, good):
    b, _ = _patch_table(good, 0, "name_len", "<I", 1 << 30)
    _reject(tmp_path, b, "name length")
    b, _ = _patch_table(good, 0, "name", "<B", 0xFF)
    _reject(tmp_path, b, "UTF-8")
    b, _ = _patch_table(good, 1, "name", "<B", ord("a"))  # "b" -> "a"
    _reject(tmp_path, b, "duplicate tensor name 'a'")


def test_unknown_type_accepted(tmp_path, good):
    b, _ = _patch_table(good, 0, "type", "<I", 77)
    p = tmp_path / "unk.ggq"
    p.write_bytes(bytes(b))
    with GGQReader(p) as r:
        t = r.tensors["a"]
        assert t.qtype is None and t.type_id == 77 and t.nbytes == 68
        assert r.raw("a").shape == (2, 34)
        assert r.verify() == []


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FormatError, match="nope.ggq: cannot open"):
        GGQReader(tmp_path / "nope.ggq")
    with pytest.raises(FormatError, match="cannot open"):
        GGQReader(tmp_path)


def test_random_corruption_never_crashes(tmp_path, good):
    """Byte flips anywhere in header/metadata/table (CRC re-fixed): FormatError or a file
    that opens; never another exception."""
    rng = np.random.default_rng(1)
    base = good.read_bytes()
    lay = _layout(good)
    p = tmp_path / "fuzz.ggq"
    for _ in range(400):
        b = bytearray(base)
        for _ in range(rng.integers(1, 4)):
            b[rng.integers(0, lay["doff"])] = rng.integers(0, 256)
        p.write_bytes(bytes(_fix_crc(b)))
        try:
            with GGQReader(p) as r:
                r.verify()
        except FormatError as e:
            assert "fuzz.ggq" in str(e)


def test_sigterm_during_a_write_leaves_no_temp_file(tmp_path):
    """The CLI turns SIGTERM into SystemExit: a writer interrupted by it removes its temp file."""
    import subprocess
    import sys

    out = tmp_path / "x.ggq"
    script = (
        "import os, signal, numpy as np\n"
        "from ggq.cli import terminate_as_exit\n"
        "from ggq.format import GGQWriter\n"
        "terminate_as_exit()\n"
        f"with GGQWriter({str(out)!r}) as w:\n"
        "    w.add_tensor('a', 'F32', (4, 8)); w.add_tensor('b', 'F32', (4, 8))\n"
        "    w.write_tensor('a', np.zeros((4, 8), np.float32))\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    w.write_tensor('b', np.zeros((4, 8), np.float32))\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 143, r.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []
