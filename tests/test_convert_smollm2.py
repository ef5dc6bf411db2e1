"""The real SmolLM2-135M-Instruct GGUF: keep-copy, presets, HF export round trip, tokenizer."""
import json

import numpy as np
import pytest

from ggq.convert import convert_model, open_source
from ggq.convert.permute import hf_to_gguf_rows
from ggq.convert.presets import use_more_bits
from ggq.format import GGQReader

pytestmark = pytest.mark.smollm2
N_HEAD, N_KV = 9, 3


@pytest.fixture(scope="module")
def gguf_reader(smollm2_gguf):
    import gguf
    return gguf.GGUFReader(str(smollm2_gguf))


@pytest.fixture(scope="module")
def hf_export(smollm2_gguf, tmp_path_factory):
    from ggq.convert.hf_export import export_gguf_to_hf
    return export_gguf_to_hf(smollm2_gguf, tmp_path_factory.mktemp("smol") / "hf")


def _gguf_dequant(reader, name):
    import gguf
    t = next(t for t in reader.tensors if t.name == name)
    return gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(
        tuple(int(d) for d in reversed(t.shape.tolist())))


def test_keep_copies_bytes(smollm2_gguf, gguf_reader, tmp_path):
    out = tmp_path / "keep.ggq"
    rep = convert_model(smollm2_gguf, out, progress=False)
    assert {e.method for e in rep.entries} == {"copied"}
    assert rep.params == 134_515_008
    with GGQReader(out) as f:
        assert len(f.tensors) == 272
        for t in gguf_reader.tensors:
            raw = np.asarray(f.raw(t.name))
            if t.name.endswith(("attn_q.weight", "attn_k.weight")):
                raw = hf_to_gguf_rows(raw, N_HEAD if "attn_q" in t.name else N_KV)
            assert np.array_equal(raw.reshape(-1), np.asarray(t.data).reshape(-1).view(np.uint8)), t.name
        md = f.metadata
        assert md["tokenizer.eos_token_id"] == 2 and md["tokenizer.add_bos_token"] is False
        assert md["llama.attention.head_count_kv"] == 3 and md["llama.tie_word_embeddings"] is True


def test_q8_0_from_gguf(smollm2_gguf, tmp_path):
    out = tmp_path / "q8.ggq"
    rep = convert_model(smollm2_gguf, out, preset="q8_0", progress=False)
    assert rep.type_counts() == {"F32": 61, "Q8_0": 211}
    assert rep.bits_per_weight == pytest.approx(8.5, abs=0.01)
    assert 140e6 < rep.file_size < 150e6
    src = open_source(smollm2_gguf)
    with GGQReader(out) as f:
        for n in ("blk.0.attn_q.weight", "blk.29.ffn_down.weight"):
            a, x = src.get(n), f.dequantize(n)
            assert np.sqrt(np.mean((a - x) ** 2) / np.mean(a ** 2)) < 0.01


def test_hf_export_round_trip_f32(hf_export, gguf_reader, tmp_path):
    import json
    cfg = json.loads((hf_export / "config.json").read_text())
    assert cfg["num_key_value_heads"] == 3 and cfg["tie_word_embeddings"] is True
    tc = json.loads((hf_export / "tokenizer_config.json").read_text())
    assert tc["eos_token"] == "<|im_end|>" and tc["add_bos_token"] is False and "im_start" in tc["chat_template"]
    out = tmp_path / "f32.ggq"
    convert_model(hf_export / "model.safetensors", out, preset="f32", progress=False)
    with GGQReader(out) as f:
        assert len(f.tensors) == 272
        for t in gguf_reader.tensors:
            x = f.dequantize(t.name)
            if t.name.endswith(("attn_q.weight", "attn_k.weight")):
                x = hf_to_gguf_rows(x, N_HEAD if "attn_q" in t.name else N_KV)
            # independent reference: the gguf package's dequantizer on the GGUF's own bytes
            assert np.array_equal(x, _gguf_dequant(gguf_reader, t.name)), t.name


def test_q4_k_m_from_hf_export(hf_export, tmp_path):
    out = tmp_path / "q4km.ggq"
    rep = convert_model(hf_export, out, preset="q4_k_m", progress=False)
    types = {e.name: e.type for e in rep.entries}
    # rows of 576 do not fit 256-blocks: Q4_K -> Q5_0, Q6_K -> Q8_0 (llama.cpp's fallbacks);
    # ffn_down rows are 1536 wide, so it keeps k-quants
    assert types["token_embd.weight"] == "Q8_0"
    for i in range(30):
        more = use_more_bits(i, 30)
        assert types[f"blk.{i}.ffn_down.weight"] == ("Q6_K" if more else "Q4_K")
        assert types[f"blk.{i}.attn_v.weight"] == ("Q8_0" if more else "Q5_0")
        assert types[f"blk.{i}.attn_q.weight"] == "Q5_0"
    assert rep.type_counts() == {"F32": 61, "Q4_K": 16, "Q5_0": 166, "Q6_K": 14, "Q8_0": 15}
    assert 6.0 < rep.bits_per_weight < 6.3
    ref = open_source(hf_export)
    with GGQReader(out) as f:
        for n in ("blk.3.ffn_down.weight", "blk.4.ffn_down.weight", "blk.4.attn_q.weight"):
            a, x = ref.get(n), f.dequantize(n)
            assert np.sqrt(np.mean((a - x) ** 2) / np.mean(a ** 2)) < 0.06, n


def test_tokenizer_rebuilt_from_gguf(hf_export):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(hf_export / "tokenizer.json"))
    enc = tok.encode("in  1990")
    assert enc.tokens == ["in", "ĠĠ", "1", "9", "9", "0"]  # smollm: every digit on its own
    assert tok.encode("<|im_start|>user\nHi<|im_end|>").ids[0] == 1
    assert tok.encode("<|im_start|>user\nHi<|im_end|>").ids[-1] == 2
    assert tok.encode("Hello").ids[0] != 1  # no BOS added
    from pathlib import Path
    p = Path(__file__).resolve().parents[1].parent / "shared" / "eval_dev.txt"
    text = p.read_text()[:20000] if p.exists() else ("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
                                                        "must be in want of a wife. However little known the feelings or views of such a man may be "
                                                        "on his first entering a neighbourhood, this truth is so well fixed. Ünïcödé ✓ 1811")
    ids = tok.encode(text).ids
    assert tok.decode(ids, skip_special_tokens=False) == text
    assert len(ids) < len(text) / 3  # a real BPE, not bytes


@pytest.mark.smollm2
def test_default_model_is_imported_as_shipped(smollm2_gguf, tmp_path, monkeypatch):
    """The default model keeps the wheel's own types (bytes copied), never re-quantized."""
    from gguf import GGUFReader

    from ggq.api import default_model_path
    from ggq.format import GGQReader

    monkeypatch.setenv("GGQ_CACHE", str(tmp_path))
    (tmp_path / smollm2_gguf.name).symlink_to(smollm2_gguf)
    out = default_model_path()
    r = GGUFReader(str(smollm2_gguf))
    with GGQReader(out) as f:
        assert f.metadata["general.preset"] == "keep"
        for t in r.tensors:
            assert f.tensors[t.name].qtype.ggml_id == int(t.tensor_type), t.name
        methods = json.loads(f.metadata["quantization.tensor_methods"])
        assert {m["method"] for n, m in methods.items() if f.tensors[n].qtype.name != "F32"} == {"copied"}


@pytest.mark.smollm2
def test_requantizing_quantized_tensors_warns(smollm2_gguf, tmp_path, capsys):
    rep = convert_model(smollm2_gguf, tmp_path / "r.ggq", preset="q8_0", dry_run=True, progress=True)
    assert rep.warnings and "already quantized as Q4_1" in rep.warnings[0]
    assert "--type keep" in rep.warnings[0]
    assert "ggq: warning:" in capsys.readouterr().err
    assert convert_model(smollm2_gguf, tmp_path / "k.ggq", preset="keep", dry_run=True,
                         progress=False).warnings == []
