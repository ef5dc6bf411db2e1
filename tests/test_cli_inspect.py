"""`ggq inspect` / `ggq verify` through ggq.cli.main: output, exit codes, one-line errors."""
import json
from pathlib import Path

import numpy as np
import pytest

from ggq.cli import main
from ggq.format import GGQReader, GGQWriter
from ggq.quants import get_type

VEC = Path(__file__).resolve().parent.parent / "spec" / "vectors"


def run(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line_error(err: str, *needles):
    assert err.startswith("ggq: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in err


@pytest.fixture
def model(tmp_path):
    p = tmp_path / "m.ggq"
    rng = np.random.default_rng(0)
    with GGQWriter(p) as w:
        w.add_metadata("general.architecture", "llama")
        w.add_metadata("llama.block_count", 2, "u32")
        w.add_metadata("tokenizer.huggingface.json", '{"x": "' + "a" * 5000 + '"}')
        w.add_metadata("tokenizer.ggml.tokens", [f"tok{i}" for i in range(100)])
        w.add_tensor("token_embd.weight", "Q8_0", (4, 64))
        w.add_tensor("output_norm.weight", "F32", (64,))
        w.write_tensor("token_embd.weight", get_type("Q8_0").quantize(rng.standard_normal((4, 64)).astype(np.float32)))
        w.write_tensor("output_norm.weight", np.ones(64, np.float32))
    return p


def test_inspect_text(capsys, model):
    rc, out, err = run(capsys, "inspect", model)
    assert rc == 0 and err == ""
    assert ".ggq 1.0" in out and "alignment 64" in out
    assert "llama.block_count" in out and "u32" in out
    assert "(5009 chars)" in out and "a" * 200 not in out          # long string abbreviated
    assert "(100 items)" in out and "tok99" not in out              # long array abbreviated
    line = next(l for l in out.splitlines() if "token_embd.weight" in l)
    assert "Q8_0" in line and "4x64" in line and "8.50" in line and "272" in line
    assert "320 params" in out
    # (4*64 + 64) params; (272 + 256) bytes of tensor data -> 13.2 bits/weight
    assert f"{8 * (272 + 256) / 320:.3f} bits/weight" in out


def test_inspect_json(capsys, model):
    rc, out, _ = run(capsys, "inspect", "--json", model)
    assert rc == 0
    doc = json.loads(out)
    assert doc["header"]["version"] == "1.0" and doc["header"]["tensor_count"] == 2
    md = doc["metadata"]
    assert md["llama.block_count"] == {"type": "u32", "value": 2}
    assert md["tokenizer.huggingface.json"]["abbreviated"] == "5009 chars"
    t = {x["name"]: x for x in doc["tensors"]}
    assert t["token_embd.weight"]["type"] == "Q8_0" and t["token_embd.weight"]["shape"] == [4, 64]
    assert t["token_embd.weight"]["bits_per_weight"] == 8.5 and t["token_embd.weight"]["bytes"] == 272
    assert doc["totals"]["params"] == 320 and doc["totals"]["file_size"] == model.stat().st_size
    rc, out, _ = run(capsys, "inspect", "--json", "--full", model)
    assert len(json.loads(out)["metadata"]["tokenizer.huggingface.json"]["value"]) == 5009


def test_inspect_unknown_type_vector(capsys):
    rc, out, _ = run(capsys, "inspect", VEC / "unknown_type.ggq")
    assert rc == 0 and "unknown(9999)" in out


@pytest.mark.parametrize("fname,needle", [("bad_magic.ggq", "bad magic"), ("truncated.ggq", "truncated"),
                                          ("overlapping.ggq", "overlap"), ("bad_header_crc.ggq", "checksum")])
def test_inspect_bad_files(capsys, fname, needle):
    rc, out, err = run(capsys, "inspect", VEC / fname)
    assert rc == 1 and out == ""
    _one_line_error(err, fname, needle)


def test_inspect_missing_file(capsys, tmp_path):
    rc, _, err = run(capsys, "inspect", tmp_path / "none.ggq")
    assert rc == 1
    _one_line_error(err, "none.ggq")


def test_verify_ok(capsys, model):
    rc, out, err = run(capsys, "verify", model)
    assert rc == 0 and out.startswith("OK") and "2 tensors" in out and err == ""


def test_verify_bad_tensor(capsys, tmp_path, model):
    b = bytearray(model.read_bytes())
    with GGQReader(model) as r:
        b[r.data_offset + r.tensors["output_norm.weight"].offset + 3] ^= 0x10
    p = tmp_path / "bad.ggq"
    p.write_bytes(bytes(b))
    rc, out, err = run(capsys, "verify", p)
    assert rc == 1 and "BAD output_norm.weight" in out and "token_embd" not in out
    _one_line_error(err, "bad.ggq", "1 of 2 tensors")


def test_verify_bad_header(capsys):
    rc, out, err = run(capsys, "verify", VEC / "bad_header_crc.ggq")
    assert rc == 1 and "BAD <header>" in out
    _one_line_error(err, "header checksum")


def test_verify_structurally_broken(capsys):
    rc, out, err = run(capsys, "verify", VEC / "misaligned.ggq")
    assert rc == 1
    _one_line_error(err, "misaligned.ggq", "alignment")


def test_inspect_error_against_reference(capsys, tmp_path, tiny_hf_dir):
    """--error: F32 tensors exactly 0 error, Q8_0 small error and high SNR, extra tensor reported."""
    from ggq.convert.sources import open_source

    p = tmp_path / "q.ggq"
    with open_source(tiny_hf_dir) as src:
        names = src.tensor_names()
        arrays = {n: np.asarray(src.get(n), np.float32) for n in names}
    with GGQWriter(p) as w:
        types = {}
        for n in names:
            a = arrays[n]
            types[n] = "Q8_0" if a.ndim == 2 and a.shape[-1] % 32 == 0 else "F32"
            w.add_tensor(n, types[n], a.shape)
        w.add_tensor("extra.weight", "F32", (4,))
        for n in names:
            a = arrays[n]
            w.write_tensor(n, get_type(types[n]).quantize(a.reshape(-1, a.shape[-1])))
        w.write_tensor("extra.weight", np.zeros(4, np.float32))
    assert "Q8_0" in types.values() and "F32" in types.values()
    rc, out, err = run(capsys, "inspect", "--json", "--error", tiny_hf_dir, p)
    assert rc == 0, err
    doc = json.loads(out)
    errs = {t["name"]: t["error"] for t in doc["tensors"]}
    assert errs["extra.weight"]["status"] == "not in reference"
    for n in names:
        e = errs[n]
        assert e["status"] == "ok"
        if types[n] == "F32":
            assert e["rmse"] == 0 and e["max_abs_err"] == 0 and e["snr_db"] == "inf"
        else:
            a = arrays[n]
            assert 0 < e["rmse"] < 0.01 * np.sqrt(np.mean(a.astype(np.float64) ** 2))
            assert e["max_abs_err"] >= e["rmse"] and 35 < e["snr_db"] < 60
    assert doc["totals"]["error"]["compared"] == len(names)
    rc, out, _ = run(capsys, "inspect", "--error", tiny_hf_dir, p)
    assert rc == 0 and "snr_db" in out and "(not in reference)" in out and "tensors compared" in out


def test_inspect_error_bad_reference(capsys, tmp_path, model):
    rc, _, err = run(capsys, "inspect", "--error", tmp_path / "nothing", model)
    assert rc == 1
    _one_line_error(err, "nothing")
