"""Round trips through GGQWriter / GGQReader, layout rules, and the writer's atomicity."""
import struct
import zlib

import numpy as np
import pytest

from ggq.errors import ConvertError, FormatError
from ggq.format import GGQReader, GGQWriter
from ggq.format import layout as L
from ggq.quants import get_type


def _leftovers(d):
    return sorted(p.name for p in d.iterdir())


def test_metadata_every_type_round_trip(tmp_path):
    p = tmp_path / "m.ggq"
    values = [
        ("u8", 255, "u8"), ("i8", -128, "i8"), ("u16", 65535, "u16"), ("i16", -32768, "i16"),
        ("u32", 2**32 - 1, "u32"), ("i32", -(2**31), "i32"), ("u64", 2**64 - 1, "u64"),
        ("i64", -(2**63), "i64"), ("f64", 0.1, "f64"), ("bool", True, "bool"),
        ("str", "héllo 世界", "string"), ("empty", "", "string"),
        ("au8", [0, 7, 255], "array[u8]"), ("ai16", [-3, 4], "array[i16]"),
        ("af64", [1.5, -2.0], "array[f64]"), ("abool", [True, False], "array[bool]"),
        ("astr", ["a", "", "ü"], "array[string]"), ("aempty", [], "array[u32]"),
    ]
    with GGQWriter(p) as w:
        for k, v, t in values:
            w.add_metadata(k, v, t)
        w.add_metadata("f32", 1e-5, "f32")
        w.add_metadata("af32", np.array([0.1, 2.5], dtype=np.float32))
        # inference
        w.add_metadata("inf_int", 3)
        w.add_metadata("inf_float", 2.5)
        w.add_metadata("inf_bool", False)
        w.add_metadata("inf_str", "x")
        w.add_metadata("inf_list", [1, 2, 3])
        w.add_metadata("inf_np", np.arange(3, dtype=np.int16))
        w.add_metadata("inf_npscalar", np.float32(0.5))
        w.add_metadata("list_as_u32", [1, 2], "u32")
        w.add_metadata("big_string", "t" * (3 << 20))
    with GGQReader(p) as r:
        for k, v, t in values:
            assert r.metadata[k] == v and r.metadata_types[k] == t, k
        assert r.metadata["f32"] == float(np.float32(1e-5)) and r.metadata_types["f32"] == "f32"
        assert r.metadata["af32"] == [float(np.float32(0.1)), 2.5]
        assert r.metadata_types["af32"] == "array[f32]"
        assert (r.metadata["inf_int"], r.metadata_types["inf_int"]) == (3, "i64")
        assert (r.metadata["inf_float"], r.metadata_types["inf_float"]) == (2.5, "f64")
        assert r.metadata["inf_bool"] is False and r.metadata_types["inf_bool"] == "bool"
        assert r.metadata_types["inf_str"] == "string"
        assert (r.metadata["inf_list"], r.metadata_types["inf_list"]) == ([1, 2, 3], "array[i64]")
        assert (r.metadata["inf_np"], r.metadata_types["inf_np"]) == ([0, 1, 2], "array[i16]")
        assert r.metadata_types["inf_npscalar"] == "f32"
        assert r.metadata_types["list_as_u32"] == "array[u32]"
        assert len(r.metadata["big_string"]) == 3 << 20
        assert list(r.metadata)[:3] == ["u8", "i8", "u16"]  # insertion order kept
        assert r.get("missing", 42) == 42


@pytest.mark.parametrize("key,value,vtype", [
    ("k", 256, "u8"), ("k", -1, "u32"), ("k", 1.5, "i32"), ("k", "x", "u8"), ("k", 1, "bool"),
    ("k", 1e39, "f32"), ("k", [], None), ("k", [1, "a"], None), ("k", b"bytes", None),
    ("k", {"a": 1}, None), ("k", 1, "complex"), ("k", np.zeros((2, 2)), None),
    ("", 1, None), ("x" * 257, 1, None),
])
def test_add_metadata_rejects(tmp_path, key, value, vtype):
    w = GGQWriter(tmp_path / "x.ggq")
    with pytest.raises(FormatError, match="x.ggq"):
        w.add_metadata(key, value, vtype)
    w.abort()
    assert _leftovers(tmp_path) == []


def test_duplicate_key_and_tensor_rejected_by_writer(tmp_path):
    w = GGQWriter(tmp_path / "x.ggq")
    w.add_metadata("a", 1)
    with pytest.raises(FormatError, match="duplicate metadata key"):
        w.add_metadata("a", 2)
    w.add_tensor("t", "F32", (4,))
    with pytest.raises(FormatError, match="duplicate tensor name"):
        w.add_tensor("t", "F32", (4,))
    w.abort()


def _random_blocks(qt, rows, cols, rng):
    """Quantize real data (valid blocks) with the registry's quantizer."""
    return qt.quantize(rng.standard_normal((rows, cols)).astype(np.float32))


@pytest.mark.parametrize("alignment", [32, 64, 4096])
def test_tensor_round_trip(tmp_path, alignment):
    rng = np.random.default_rng(0)
    p = tmp_path / "t.ggq"
    plan = [("f32", "F32", (3, 5)), ("f16", "F16", (2, 8)), ("bf16", "BF16", (4,)),
            ("q4_0", "Q4_0", (3, 64)), ("q8_0", "Q8_0", (2, 32)), ("q4_k", "Q4_K", (2, 256)),
            ("q6_k", "Q6_K", (1, 256)), ("three_d", "F32", (2, 3, 4))]
    data = {}
    with GGQWriter(p, alignment=alignment) as w:
        w.add_metadata("general.architecture", "llama")
        for name, t, shape in plan:
            w.add_tensor(name, t, shape)
        for name, t, shape in plan:
            qt = get_type(t)
            rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
            data[name] = _random_blocks(qt, rows, shape[-1], rng)
            w.write_tensor(name, data[name])
    with GGQReader(p) as r:
        assert r.version == (1, 0) and r.alignment == alignment
        assert list(r.tensors) == [n for n, _, _ in plan]
        for name, t, shape in plan:
            info = r.tensors[name]
            qt = get_type(t)
            assert info.qtype is qt and info.type_id == qt.ggml_id and info.shape == shape
            assert (r.data_offset + info.offset) % alignment == 0
            raw = r.raw(name)
            assert raw.dtype == np.uint8 and not raw.flags.writeable
            assert np.array_equal(raw, data[name])
            assert info.checksum == zlib.crc32(data[name].tobytes())
            deq = r.dequantize(name)
            assert deq.shape == shape and deq.dtype == np.float32
            rows = raw.shape[0]
            want = qt.dequantize(data[name], shape[-1]).reshape(shape)
            assert np.array_equal(deq, want)
            assert raw.shape == (rows, qt.row_bytes(shape[-1]))
        assert r.verify() == []


def test_float_tensors_accept_natural_dtype(tmp_path):
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    h = np.arange(4, dtype=np.float16)
    p = tmp_path / "f.ggq"
    with GGQWriter(p) as w:
        w.add_tensor("x", "F32", x.shape)
        w.add_tensor("h", "F16", h.shape)
        w.write_tensor("x", x)
        w.write_tensor("h", h)
    with GGQReader(p) as r:
        assert np.array_equal(r.dequantize("x"), x)
        assert np.array_equal(r.dequantize("h"), h.astype(np.float32))


def test_layout_matches_spec(tmp_path):
    """Writer lays tensors out exactly as spec section 7 says, header fields consistent."""
    p = tmp_path / "l.ggq"
    with GGQWriter(p) as w:
        w.add_metadata("a", "b")
        w.add_tensor("x", "F32", (3,))
        w.add_tensor("y", "F32", (20,))
        w.add_tensor("z", "Q8_0", (1, 32))
        w.write_tensor("x", np.ones(3, np.float32))
        w.write_tensor("y", np.ones(20, np.float32))
        w.write_tensor("z", np.zeros((1, 34), np.uint8))
    b = p.read_bytes()
    (magic, major, minor, align, nm, nt, msize, tsize, doff, dsize, crc, flags) = L.HEADER.unpack_from(b)
    assert magic == b"\x89GGQ\r\n\x1a\n" and (major, minor, align, nm, nt, flags) == (1, 0, 64, 1, 3, 0)
    assert doff == L.align_up(64 + msize + tsize, 64) and doff + dsize == len(b)
    assert b[64 + msize + tsize:doff] == b"\0" * (doff - 64 - msize - tsize)
    assert crc == zlib.crc32(b[:56] + b"\0\0\0\0" + b[60:doff])
    with GGQReader(p) as r:
        offs = [r.tensors[n].offset for n in "xyz"]
    assert offs == [0, 64, 192] and dsize == 192 + 34
    assert b[doff + 12:doff + 64] == b"\0" * 52  # padding between tensors is zero


def test_unknown_type_is_raw_bytes(tmp_path):
    p = tmp_path / "u.ggq"
    with GGQWriter(p) as w:
        w.add_tensor("odd", 9999, (2, 3), nbytes=11)
        w.add_tensor("even", 4242, (2, 3), nbytes=8)
        w.write_tensor("odd", np.arange(11, dtype=np.uint8))
        w.write_tensor("even", np.arange(8, dtype=np.uint8))
    with GGQReader(p) as r:
        t = r.tensors["odd"]
        assert t.qtype is None and t.type_id == 9999 and t.type_name == "unknown(9999)"
        assert r.raw("odd").shape == (1, 11) and r.raw("odd")[0, 10] == 10
        assert r.raw("even").shape == (2, 4)
        with pytest.raises(FormatError, match="unknown type id 9999"):
            r.dequantize("odd")
        assert r.verify() == []


def test_unknown_type_needs_nbytes(tmp_path):
    w = GGQWriter(tmp_path / "x.ggq")
    with pytest.raises(FormatError, match="nbytes"):
        w.add_tensor("t", 9999, (4,))
    w.abort()


def test_empty_file(tmp_path):
    p = tmp_path / "e.ggq"
    with GGQWriter(p):
        pass
    assert p.stat().st_size == 64
    with GGQReader(p) as r:
        assert r.metadata == {} and r.tensors == {} and r.verify() == []


def test_refuses_existing_output_unless_force(tmp_path):
    p = tmp_path / "o.ggq"
    p.write_bytes(b"keep me")
    with pytest.raises(ConvertError, match="o.ggq already exists"):
        GGQWriter(p)
    assert p.read_bytes() == b"keep me"
    with GGQWriter(p, force=True) as w:
        w.add_metadata("k", 1)
    with GGQReader(p) as r:
        assert r.metadata == {"k": 1}
    assert _leftovers(tmp_path) == ["o.ggq"]


def test_output_appearing_during_write_is_not_clobbered(tmp_path):
    p = tmp_path / "o.ggq"
    w = GGQWriter(p)
    w.add_tensor("t", "F32", (2,))
    w.write_tensor("t", np.zeros(2, np.float32))
    p.write_bytes(b"someone else")
    with pytest.raises(ConvertError, match="already exists"):
        w.close()
    assert p.read_bytes() == b"someone else"
    assert _leftovers(tmp_path) == ["o.ggq"]


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_interrupted_writer_leaves_nothing(tmp_path, exc):
    p = tmp_path / "i.ggq"
    with pytest.raises(exc):
        with GGQWriter(p) as w:
            w.add_tensor("a", "F32", (1000,))
            w.add_tensor("b", "F32", (1000,))
            w.write_tensor("a", np.zeros(1000, np.float32))
            assert any(n.startswith("i.ggq.tmp-") for n in _leftovers(tmp_path))
            raise exc("stop")
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("case", ["missing", "order", "dtype", "length", "undeclared", "late_decl"])
def test_writer_misuse_leaves_nothing(tmp_path, case):
    p = tmp_path / "w.ggq"
    with pytest.raises(FormatError, match="w.ggq"):
        with GGQWriter(p) as w:
            w.add_tensor("a", "Q8_0", (2, 32))
            w.add_tensor("b", "F32", (4,))
            ok_a = np.zeros((2, 34), np.uint8)
            if case == "missing":
                w.write_tensor("a", ok_a)
            elif case == "order":
                w.write_tensor("b", np.zeros(4, np.float32))
            elif case == "dtype":
                w.write_tensor("a", np.zeros((2, 17), np.uint16))
            elif case == "length":
                w.write_tensor("a", np.zeros((2, 33), np.uint8))
            elif case == "undeclared":
                w.write_tensor("c", ok_a)
            elif case == "late_decl":
                w.write_tensor("a", ok_a)
                w.add_tensor("c", "F32", (4,))
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("shape,qtype", [((), "F32"), ((1, 1, 1, 1, 2), "F32"), ((0, 32), "Q8_0"),
                                         ((2, 31), "Q8_0"), ((2, 100), "Q4_K")])
def test_add_tensor_rejects_bad_shapes(tmp_path, shape, qtype):
    w = GGQWriter(tmp_path / "x.ggq")
    with pytest.raises(FormatError, match="x.ggq"):
        w.add_tensor("t", qtype, shape)
    w.abort()


def test_add_tensor_rejects_bad_names_and_types(tmp_path):
    w = GGQWriter(tmp_path / "x.ggq")
    with pytest.raises(FormatError, match="name"):
        w.add_tensor("n" * 257, "F32", (2,))
    with pytest.raises(FormatError, match="name"):
        w.add_tensor("", "F32", (2,))
    with pytest.raises(FormatError, match="unknown quant type"):
        w.add_tensor("t", "Q9_Z", (2,))
    w.abort()


@pytest.mark.parametrize("alignment", [0, 16, 48, 1 << 17])
def test_writer_rejects_bad_alignment(tmp_path, alignment):
    with pytest.raises(FormatError, match="alignment"):
        GGQWriter(tmp_path / "x.ggq", alignment=alignment)


def test_raw_view_is_zero_copy(tmp_path):
    p = tmp_path / "z.ggq"
    with GGQWriter(p) as w:
        w.add_tensor("t", "F32", (4, 4))
        w.write_tensor("t", np.arange(16, dtype=np.float32))
    r = GGQReader(p)
    raw = r.raw("t")
    assert raw.base is not None and not raw.flags.owndata
    with pytest.raises(FormatError, match="no tensor named 'nope'"):
        r.raw("nope")
    r.close()  # closing with a live view must not raise
    assert raw.view(np.float32)[3, 3] == 15.0


def test_verify_finds_corrupt_tensor_and_header(tmp_path):
    p = tmp_path / "v.ggq"
    with GGQWriter(p) as w:
        w.add_metadata("k", "v")
        w.add_tensor("a", "F32", (8,))
        w.add_tensor("b", "F32", (8,))
        w.write_tensor("a", np.ones(8, np.float32))
        w.write_tensor("b", np.ones(8, np.float32))
    b = bytearray(p.read_bytes())
    with GGQReader(p) as r:
        pos = r.data_offset + r.tensors["b"].offset + 5
    b[pos] ^= 1
    p.write_bytes(bytes(b))
    with GGQReader(p) as r:
        assert r.verify() == ["b"]
    b[64 + 4] ^= 1  # a metadata key byte: still parses, header CRC fails
    p.write_bytes(bytes(b))
    with pytest.raises(FormatError, match="header checksum"):
        GGQReader(p)
    with GGQReader(p, check_header_crc=False) as r:
        assert r.verify() == ["<header>", "b"]


def test_crc_check_value():
    # spec section 8: CRC-32/ISO-HDLC check value
    assert zlib.crc32(b"123456789") == 0xCBF43926
    assert struct.calcsize("<8sHHIIIQQQQII") == L.HEADER_SIZE == 64


def test_writer_refuses_nul_in_key_or_name(tmp_path):
    """spec/FORMAT.md section 1: keys and tensor names never contain U+0000 (rule 8); values may."""
    w = GGQWriter(tmp_path / "x.ggq")
    with pytest.raises(FormatError, match="NUL"):
        w.add_metadata("a\0b", 1)
    with pytest.raises(FormatError, match="NUL"):
        w.add_tensor("t\0", "F32", (4,))
    w.add_metadata("k", "value with \0 and \ufeff kept")
    w.close()
    with GGQReader(tmp_path / "x.ggq") as r:
        assert r.metadata["k"] == "value with \0 and \ufeff kept"


# -- long metadata values stay in the file until asked for ----------------------------------------

def _big_values():
    rng = np.random.default_rng(7)
    words = ["tok", "é", "日本", "𝄞x", "", "a b"]
    return {
        "big_str": "".join(words[i % len(words)] for i in range(40000)),  # > 64 KiB, non-ASCII
        "big_f32": rng.standard_normal(70000).astype(np.float32),
        "big_i32": rng.integers(-5, 6, 70000).astype(np.int32),
        "big_bool": rng.integers(0, 2, 70000).astype(bool),
        "big_strs": [words[i % len(words)] + str(i) for i in range(20000)],
    }


def _rewrite_crc(p):
    """Recompute the header checksum of a file edited in place (the reader checks it first)."""
    b = bytearray(p.read_bytes())
    data_offset = struct.unpack_from("<Q", b, 40)[0]
    b[L.CRC_FIELD_OFFSET:L.CRC_FIELD_OFFSET + 4] = b"\0\0\0\0"
    struct.pack_into("<I", b, L.CRC_FIELD_OFFSET, zlib.crc32(bytes(b[:data_offset])))
    p.write_bytes(bytes(b))


def test_long_metadata_values_are_read_when_asked_for(tmp_path):
    p = tmp_path / "big.ggq"
    vals = _big_values()
    with GGQWriter(p) as w:
        w.add_metadata("general.name", "small")
        w.add_metadata("small_arr", [1, 2, 3], "array[u32]")
        for k, v in vals.items():
            w.add_metadata(k, v)
    r = GGQReader(p)
    md = r.metadata
    assert all(md.is_lazy(k) for k in vals) and not md.is_lazy("general.name") and not md.is_lazy("small_arr")
    assert md["big_str"] == vals["big_str"]
    assert md.raw_string("big_str") == vals["big_str"].encode("utf-8")
    assert md.raw_string("general.name") == b"small"
    assert md["big_f32"] == [float(x) for x in vals["big_f32"]]   # f32 widened exactly, as before
    assert md["big_i32"] == vals["big_i32"].tolist()
    assert md["big_bool"] == [bool(x) for x in vals["big_bool"]] and type(md["big_bool"][0]) is bool
    assert md["big_strs"] == vals["big_strs"]
    assert list(md) == ["general.name", "small_arr", *vals] and len(md) == 2 + len(vals)
    plain = dict(md)
    assert plain["big_strs"] == vals["big_strs"] and md == plain and md.get("nope", 5) == 5
    assert r.metadata_types["big_strs"] == "array[string]" and r.metadata_types["big_f32"] == "array[f32]"
    with pytest.raises(FormatError, match="not a string"):
        md.raw_string("big_f32")
    r.close()
    assert md["general.name"] == "small" and md["small_arr"] == [1, 2, 3]  # kept at open
    with pytest.raises(FormatError, match="closed"):
        md["big_str"]


def test_opening_does_not_materialise_big_arrays(tmp_path):
    """A 2M-element array as a Python list is ~64 MB; kept in the file it costs nothing at open."""
    import tracemalloc

    p = tmp_path / "arr.ggq"
    with GGQWriter(p) as w:
        w.add_metadata("scores", np.zeros(1 << 21, dtype=np.float32))
        w.add_metadata("text", "x" * (8 << 20))
    tracemalloc.start()
    try:
        with GGQReader(p) as r:
            _, peak = tracemalloc.get_traced_memory()
            assert len(r.metadata["scores"]) == 1 << 21
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak


@pytest.mark.parametrize("key,needle,bad,match", [
    ("big_str", "日本".encode(), b"\xe6\x97\xff\xe6\x9c\xac", r"'big_str' is not valid UTF-8"),
    ("big_strs", "é19999".encode(), b"\xc0\xaf19999", r"'big_strs'\[19999\] is not valid UTF-8"),
])
def test_bad_utf8_in_long_values_is_one_line_at_open(tmp_path, key, needle, bad, match):
    p = tmp_path / "bad.ggq"
    vals = _big_values()
    with GGQWriter(p) as w:
        w.add_metadata(key, vals[key])
    b = p.read_bytes()
    at = b.rindex(needle)  # the last occurrence: deep inside the value
    p.write_bytes(b[:at] + bad + b[at + len(bad):])
    _rewrite_crc(p)
    with pytest.raises(FormatError, match=match) as e:
        GGQReader(p)
    assert "\n" not in str(e.value) and str(p) in str(e.value)


def test_bad_bool_in_long_array_is_one_line_at_open(tmp_path):
    p = tmp_path / "bool.ggq"
    with GGQWriter(p) as w:
        w.add_metadata("flags", np.zeros(100000, dtype=bool))
    b = bytearray(p.read_bytes())
    start = b.index(b"flags") + len("flags") + 1 + 1 + 4  # value type, element type, count
    b[start + 77777] = 2
    p.write_bytes(bytes(b))
    _rewrite_crc(p)
    with pytest.raises(FormatError, match=r"'flags': bool array element 77777 is 2"):
        GGQReader(p)
