"""Bad checkpoints give a one-line GGQError naming the file, never a crash or a huge allocation."""
import json
import shutil
import struct

import numpy as np
import pytest

from ggq.cli import main as cli_main
from ggq.convert import convert_model, open_source
from ggq.convert.sources import read_safetensors_header
from ggq.errors import ConvertError, FormatError, GGQError


def copy_dir(src, dst):
    shutil.copytree(src, dst)
    return dst


def raw_safetensors(path, header: dict, data: bytes, header_len: int | None = None):
    hb = json.dumps(header).encode()
    n = len(hb) if header_len is None else header_len
    path.write_bytes(struct.pack("<Q", n) + hb + data)
    return path


def rewrite_header(st_path, edit):
    """Apply edit(header) to a real safetensors file, keeping its data."""
    b = st_path.read_bytes()
    n = struct.unpack("<Q", b[:8])[0]
    header = json.loads(b[8:8 + n])
    edit(header)
    raw_safetensors(st_path, header, b[8 + n:])


@pytest.fixture
def bad_dir(tiny_hf_dir, tmp_path):
    return copy_dir(tiny_hf_dir, tmp_path / "m")


def expect(exc, match, path):
    with pytest.raises(exc, match=match) as ei:
        open_source(path)
    msg = str(ei.value)
    assert "\n" not in msg
    return msg


def test_header_length_past_eof(tmp_path):
    p = tmp_path / "x.safetensors"
    p.write_bytes(struct.pack("<Q", 1 << 60) + b"{}")
    msg = expect(FormatError, "exceeds the file size", p)
    assert "x.safetensors" in msg


def test_huge_header_length_is_refused_before_reading(tmp_path):
    p = tmp_path / "big.safetensors"
    with open(p, "wb") as f:  # sparse file: header claims 200 MB of JSON
        f.write(struct.pack("<Q", 200 << 20))
        f.truncate(8 + (200 << 20) + 16)
    with pytest.raises(FormatError, match="implausibly large"):
        read_safetensors_header(p)


def test_truncated_and_not_json(tmp_path):
    p = tmp_path / "t.safetensors"
    p.write_bytes(b"\x05\x00")
    expect(FormatError, "truncated", p)
    p.write_bytes(struct.pack("<Q", 4) + b"{]x{")
    expect(FormatError, "not valid JSON", p)


def test_offsets_past_eof(bad_dir):
    st = bad_dir / "model.safetensors"
    rewrite_header(st, lambda h: h["model.norm.weight"].update(data_offsets=[10**12, 10**12 + 256]))
    msg = expect(FormatError, "past the end", st)
    assert "model.safetensors" in msg and "model.norm.weight" in msg


def test_length_disagrees_with_shape(bad_dir):
    st = bad_dir / "model.safetensors"

    def edit(h):
        h["model.norm.weight"]["shape"] = [65]
    rewrite_header(st, edit)
    expect(FormatError, r"bytes for F32 shape \[65\]", st)


def test_dtype_disagrees_with_length(bad_dir):
    st = bad_dir / "model.safetensors"
    rewrite_header(st, lambda h: h["model.norm.weight"].update(dtype="F16"))
    expect(FormatError, "expected 128", st)


def test_unknown_dtype_and_bad_offsets(bad_dir):
    st = bad_dir / "model.safetensors"
    rewrite_header(st, lambda h: h["model.norm.weight"].update(dtype="F128"))
    expect(FormatError, "unknown dtype", st)
    rewrite_header(st, lambda h: h["model.norm.weight"].update(dtype="F32", data_offsets=[8, 4]))
    expect(FormatError, "bad data_offsets", st)
    rewrite_header(st, lambda h: h["model.norm.weight"].update(data_offsets="0-4"))
    expect(FormatError, "bad data_offsets", st)


def test_overlapping_tensors(bad_dir):
    st = bad_dir / "model.safetensors"

    def edit(h):
        a = h["model.layers.0.input_layernorm.weight"]["data_offsets"]
        h["model.norm.weight"]["data_offsets"] = list(a)
    rewrite_header(st, edit)
    expect(FormatError, "overlap", st)


def test_unsupported_dtype(tmp_path, tiny_hf_dir):
    d = copy_dir(tiny_hf_dir, tmp_path / "i")
    from safetensors.numpy import load_file, save_file
    t = load_file(d / "model.safetensors")
    t["model.norm.weight"] = t["model.norm.weight"].astype(np.float64)
    save_file(t, str(d / "model.safetensors"))
    expect(ConvertError, "F64.*supported: F32, F16, BF16", d)


def test_unsupported_architecture(bad_dir):
    cfg = json.loads((bad_dir / "config.json").read_text())
    cfg["architectures"] = ["Qwen2ForCausalLM"]
    (bad_dir / "config.json").write_text(json.dumps(cfg))
    msg = expect(ConvertError, "Qwen2ForCausalLM.*not supported", bad_dir)
    assert "LlamaForCausalLM" in msg and "MistralForCausalLM" in msg


def test_mistral_accepted_sliding_window_refused(bad_dir):
    cfg = json.loads((bad_dir / "config.json").read_text())
    cfg["architectures"] = ["MistralForCausalLM"]
    cfg["sliding_window"] = None
    (bad_dir / "config.json").write_text(json.dumps(cfg))
    assert open_source(bad_dir).config.block_count == 2
    cfg["sliding_window"] = 64
    (bad_dir / "config.json").write_text(json.dumps(cfg))
    expect(ConvertError, "sliding-window", bad_dir)


def test_missing_config_and_missing_tensor(bad_dir, tmp_path):
    cfg = json.loads((bad_dir / "config.json").read_text())
    cfg["num_hidden_layers"] = 3
    (bad_dir / "config.json").write_text(json.dumps(cfg))
    expect(ConvertError, "blk.2.attn_norm.weight.*missing", bad_dir)
    cfg["num_hidden_layers"] = 2
    cfg["intermediate_size"] = 96
    (bad_dir / "config.json").write_text(json.dumps(cfg))
    expect(ConvertError, "has shape", bad_dir)
    (bad_dir / "config.json").unlink()
    expect(ConvertError, "no config.json", bad_dir / "model.safetensors")


def test_unexpected_tensor(bad_dir):
    from safetensors.numpy import load_file, save_file
    t = load_file(bad_dir / "model.safetensors")
    t["model.layers.0.self_attn.q_proj.bias"] = np.zeros(64, np.float32)
    save_file(t, str(bad_dir / "model.safetensors"))
    expect(ConvertError, "unexpected tensor 'model.layers.0.self_attn.q_proj.bias'", bad_dir)


def test_bad_gguf(tmp_path):
    p = tmp_path / "bad.gguf"
    p.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 16)
    msg = expect(FormatError, "bad.gguf", p)
    assert "GGUF" in msg
    p.write_bytes(b"NOPE" * 10)
    expect(FormatError, "bad magic", p)
    expect(ConvertError, "no such file", tmp_path / "missing.gguf")
    q = tmp_path / "weights.bin"
    q.write_bytes(b"\0" * 64)
    expect(ConvertError, "unknown input kind", q)


def test_cli_one_line_error(bad_dir, tmp_path, capsys):
    st = bad_dir / "model.safetensors"
    rewrite_header(st, lambda h: h["model.norm.weight"].update(data_offsets=[10**12, 10**12 + 256]))
    out = tmp_path / "o.ggq"
    assert cli_main(["convert", str(st), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ggq: error: model.safetensors:") and err.count("\n") == 1
    assert not out.exists()


def test_file_errors_are_ggq_errors(bad_dir, tmp_path):
    # a shard missing from the index
    (bad_dir / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"model.norm.weight": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(GGQError, match="shard model-00001-of-00002.safetensors is missing"):
        convert_model(bad_dir, tmp_path / "o.ggq", dry_run=True)
