"""Our reader and writer against the conformance vectors in spec/vectors/ (made by
tools/make_vectors.py independently of ggq.format, expected values from gguf.quants).

Conformance as spec/FORMAT.md section 15 defines it: valid files open, read back their
metadata and decode bit-identically (a NaN matches any NaN, section 10); invalid files are
rejected at the stated stage for the stated rule (ggq's errors end in "[rule N]")."""
import json
import re
from pathlib import Path

import numpy as np
import pytest

from ggq.errors import FormatError
from ggq.format import GGQReader, GGQWriter

VEC = Path(__file__).resolve().parent.parent / "spec" / "vectors"
MANIFEST = json.loads((VEC / "manifest.json").read_text(encoding="utf-8"))
VALID = [f for f, m in MANIFEST["files"].items() if m["valid"]]
INVALID = [f for f, m in MANIFEST["files"].items() if not m["valid"]]


def bits_equal_nan_any(got: np.ndarray, want: np.ndarray) -> bool:
    """Section 10: identical bits, except that where the expected value is a NaN any NaN matches."""
    if got.dtype != np.float32 or want.dtype != np.float32 or got.shape != want.shape:
        return False
    nan = np.isnan(want)
    if not np.array_equal(np.isnan(got), nan):
        return False
    return np.array_equal(got.view(np.uint32)[~nan], want.view(np.uint32)[~nan])


def test_vectors_present_and_small():
    files = list(VEC.iterdir())
    assert sum(p.stat().st_size for p in files) < 1 << 20
    for f in MANIFEST["files"]:
        assert (VEC / f).is_file(), f
    listed = set(MANIFEST["files"]) | {e["expected"] for f in VALID
                                       for e in MANIFEST["files"][f]["tensors"].values() if "expected" in e}
    assert {p.name for p in files} - listed == {"README.md", "manifest.json"}
    readme = (VEC / "README.md").read_text(encoding="utf-8")
    for f in MANIFEST["files"]:
        assert f"`{f}`" in readme, f"{f} not described in README.md"
    types = {t["type"] for f in VALID for t in MANIFEST["files"][f]["tensors"].values()}
    assert {"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
            "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS", "unknown"} <= types


def test_manifest_schema():
    """The manifest follows spec/FORMAT.md section 15 exactly (no undocumented members)."""
    assert MANIFEST["format_version"] == [1, 0] and set(MANIFEST) == {"format_version", "files"}
    vtypes = {"u8", "i8", "u16", "i16", "u32", "i32", "u64", "i64", "f32", "f64", "bool", "string"}
    for f, m in MANIFEST["files"].items():
        assert isinstance(m["description"], str) and m["description"]
        if m["valid"]:
            assert set(m) == {"valid", "description", "version", "flags", "alignment", "canonical",
                              "metadata", "tensors"}, f
            for k, e in m["metadata"].items():
                assert set(e) == {"type", "value"}
                t = e["type"]
                assert t in vtypes or (t.startswith("array[") and t[6:-1] in vtypes), (f, k, t)
            for name, e in m["tensors"].items():
                want = {"type", "type_id", "shape", "offset", "nbytes", "crc32"}
                assert set(e) == want | ({"expected"} if e["type"] != "unknown" else set()), (f, name)
        else:
            assert 1 <= m["rule"] <= 13 and m["stage"] in ("open", "verify"), f
            assert set(m) == {"valid", "description", "rule", "stage"} | (
                {"report"} if m["stage"] == "verify" else set()), f
            assert (m["stage"] == "verify") == (m["rule"] == 13), f


def test_every_rule_and_corner_has_a_vector():
    """Issue 11 point 12: every rule of section 9 is exercised, and the valid corners too."""
    rules = {MANIFEST["files"][f]["rule"] for f in INVALID}
    assert rules == set(range(1, 14))
    valid = {f: MANIFEST["files"][f] for f in VALID}
    assert any(m["version"][1] > 0 for m in valid.values())
    assert any(m["flags"] != 0 for m in valid.values())
    assert any(m["alignment"] > 64 for m in valid.values())
    assert any(m["alignment"] < 64 for m in valid.values())
    tensors = [t for m in valid.values() for t in m["tensors"].values()]
    assert any(t["type"] == "unknown" and t["nbytes"] == 0 for t in tensors)
    assert any(m["tensors"] and [t["offset"] for t in m["tensors"].values()]
               != sorted(t["offset"] for t in m["tensors"].values()) for m in valid.values())
    arrays = {e["type"] for m in valid.values() for e in m["metadata"].values() if e["type"].startswith("array[")}
    assert arrays == {f"array[{t}]" for t in ("u8", "i8", "u16", "i16", "u32", "i32", "u64", "i64",
                                              "f32", "f64", "bool", "string")}
    assert any(t["type"].endswith("_K") and t["shape"][-1] > 256 for t in tensors)


@pytest.mark.parametrize("fname", VALID)
def test_valid_vector(fname):
    m = MANIFEST["files"][fname]
    with GGQReader(VEC / fname) as r:
        assert list(r.version) == m["version"]
        assert r.flags == m["flags"]
        assert r.alignment == m["alignment"]
        assert list(r.metadata) == list(m["metadata"])
        for k, e in m["metadata"].items():
            assert r.metadata_types[k] == e["type"], k
            got = r.metadata[k]
            assert type(got) is type(e["value"]) and got == e["value"], k
            if isinstance(got, list):
                assert [type(x) for x in got] == [type(x) for x in e["value"]], k
        assert list(r.tensors) == list(m["tensors"])
        for name, e in m["tensors"].items():
            t = r.tensors[name]
            assert t.type_id == e["type_id"] and list(t.shape) == e["shape"]
            assert t.offset == e["offset"]
            assert t.nbytes == e["nbytes"] and t.checksum == e["crc32"]
            if "expected" in e:
                assert t.qtype is not None and t.qtype.name == e["type"]
                want = np.load(VEC / e["expected"])
                with np.errstate(all="ignore"):
                    got = r.dequantize(name)
                assert bits_equal_nan_any(got, want), name
            else:
                assert t.qtype is None and e["type"] == "unknown"
                assert r.raw(name).size == e["nbytes"]
                with pytest.raises(FormatError, match="unknown type id"):
                    r.dequantize(name)
        assert r.verify() == []


@pytest.mark.parametrize("fname", INVALID)
def test_invalid_vector(fname):
    """Rejected for the stated rule, with one line naming the file and ending in [rule N]."""
    m = MANIFEST["files"][fname]
    if m["stage"] == "open":
        with pytest.raises(FormatError) as ei:
            GGQReader(VEC / fname)
        msg = str(ei.value)
        assert fname in msg and "\n" not in msg
        assert re.search(r"\[rule (\d+)\]$", msg).group(1) == str(m["rule"]), msg
    else:
        with GGQReader(VEC / fname) as r:
            assert r.verify() == m["report"]


@pytest.mark.parametrize("fname", [f for f in VALID if MANIFEST["files"][f]["canonical"]])
def test_writer_reproduces_vector(tmp_path, fname):
    """Re-writing a canonical vector's content with GGQWriter gives the same bytes: the writer
    follows the spec's deterministic layout exactly."""
    out = tmp_path / fname
    with GGQReader(VEC / fname) as r:
        with GGQWriter(out, alignment=r.alignment) as w:
            for k, v in r.metadata.items():
                w.add_metadata(k, v, r.metadata_types[k])
            for name, t in r.tensors.items():
                w.add_tensor(name, t.qtype if t.qtype is not None else t.type_id, t.shape, nbytes=t.nbytes)
            for name in r.tensors:
                w.write_tensor(name, r.raw(name))
    assert out.read_bytes() == (VEC / fname).read_bytes()


def test_generator_is_deterministic(tmp_path):
    """tools/make_vectors.py regenerates spec/vectors/ byte for byte (the checked-in vectors
    are the generator's output, not hand edits)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "make_vectors", Path(__file__).resolve().parent.parent / "tools" / "make_vectors.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(tmp_path)
    for p in VEC.iterdir():
        if p.suffix == ".npy":  # .npy headers may differ across numpy versions; compare values
            a, b = np.load(p), np.load(tmp_path / p.name)
            assert a.dtype == b.dtype and np.array_equal(a.view(np.uint32), b.view(np.uint32)), p.name
        else:
            assert (tmp_path / p.name).read_bytes() == p.read_bytes(), p.name
