"""Our reader and writer against the conformance vectors in spec/vectors/ (made by
tools/make_vectors.py independently of ggq.format, expected values from gguf.quants)."""
import json
from pathlib import Path

import numpy as np
import pytest

from ggq.errors import FormatError
from ggq.format import GGQReader, GGQWriter

VEC = Path(__file__).resolve().parent.parent / "spec" / "vectors"
MANIFEST = json.loads((VEC / "manifest.json").read_text())
VALID = [f for f, m in MANIFEST["files"].items() if m["valid"]]
INVALID = [f for f, m in MANIFEST["files"].items() if not m["valid"]]


def test_vectors_present_and_small():
    files = list(VEC.iterdir())
    assert sum(p.stat().st_size for p in files) < 1 << 20
    for f in MANIFEST["files"]:
        assert (VEC / f).is_file(), f
    readme = (VEC / "README.md").read_text()
    for f in MANIFEST["files"]:
        assert f"`{f}`" in readme, f"{f} not described in README.md"
    types = {t["type"] for f in VALID for t in MANIFEST["files"][f]["tensors"].values()}
    assert {"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
            "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"} <= types


@pytest.mark.parametrize("fname", VALID)
def test_valid_vector(fname):
    m = MANIFEST["files"][fname]
    with GGQReader(VEC / fname) as r:
        assert r.version == tuple(MANIFEST["format_version"])
        assert r.alignment == m["alignment"]
        assert list(r.metadata) == list(m["metadata"])
        for k, e in m["metadata"].items():
            assert r.metadata_types[k] == e["type"], k
            assert r.metadata[k] == e["value"], k
        assert list(r.tensors) == list(m["tensors"])
        for name, e in m["tensors"].items():
            t = r.tensors[name]
            assert t.type_id == e["type_id"] and list(t.shape) == e["shape"]
            assert t.nbytes == e["nbytes"] and t.checksum == e["crc32"]
            if "expected" in e:
                assert t.qtype is not None and t.qtype.name == e["type"]
                want = np.load(VEC / e["expected"])
                got = r.dequantize(name)
                assert got.dtype == np.float32 and got.shape == want.shape
                # bit for bit (NaN-safe)
                assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), name
            else:
                assert t.qtype is None
                assert r.raw(name).size == e["nbytes"]
                with pytest.raises(FormatError, match="unknown type id"):
                    r.dequantize(name)
        assert r.verify() == []


@pytest.mark.parametrize("fname", INVALID)
def test_invalid_vector(fname):
    m = MANIFEST["files"][fname]
    if m["stage"] == "open":
        with pytest.raises(FormatError, match=m["match"]) as ei:
            GGQReader(VEC / fname)
        assert fname in str(ei.value)
    else:
        with GGQReader(VEC / fname) as r:
            assert m["match"] in r.verify()


@pytest.mark.parametrize("fname", VALID)
def test_writer_reproduces_vector(tmp_path, fname):
    """Re-writing a vector's content with GGQWriter gives the same bytes: the writer follows
    the spec's deterministic layout exactly."""
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
