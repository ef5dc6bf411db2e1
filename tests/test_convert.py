"""ggq convert on the tiny random model: presets, read-back, safety (dry run, no overwrite,
no partial output, input untouched), GGUF input copied byte for byte."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from ggq.cli import main as cli_main
from ggq.convert import convert_model, open_source
from ggq.convert.permute import hf_to_gguf_rows
from ggq.convert.sources import ModelConfig
from ggq.errors import ConvertError
from ggq.format import GGQReader
from ggq.quants import get_type


def sha(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted([path] if path.is_file() else path.iterdir()):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def reference(hf_dir: Path) -> dict:
    from safetensors.numpy import load_file
    from ggq.convert.sources import hf_to_ggq_name
    return {hf_to_ggq_name(k): v.astype(np.float32) for k, v in load_file(hf_dir / "model.safetensors").items()}


def make_tiny_gguf(hf_dir: Path, out: Path, qtype="Q8_0") -> Path:
    """A llama.cpp-style GGUF of the tiny model: q/k rows permuted, matrices quantized with
    gguf's own quantizer, tokenizer in tokenizer.ggml.* form."""
    import gguf
    cfg = json.loads((hf_dir / "config.json").read_text())
    tok = json.loads((hf_dir / "tokenizer.json").read_text())
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name("tiny")
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(cfg["vocab_size"])
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab] + [f"<pad{i}>" for i in range(cfg["vocab_size"] - len(vocab))]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3 if i < 3 else 1 for i in range(len(tokens))])
    w.add_token_merges(tok["model"]["merges"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template("{{ messages }}")
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    for name, a in reference(hf_dir).items():
        if name.endswith("attn_q.weight"):
            a = hf_to_gguf_rows(a, heads)
        elif name.endswith("attn_k.weight"):
            a = hf_to_gguf_rows(a, kv)
        if a.ndim == 2:
            t = gguf.GGMLQuantizationType[qtype]
            w.add_tensor(name, gguf.quants.quantize(a, t), raw_dtype=t)
        else:
            w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


# ---------------------------------------------------------------------------------------------

def test_f32_is_exact_and_metadata(tiny_hf_dir, tmp_path):
    out = tmp_path / "t.f32.ggq"
    rep = convert_model(tiny_hf_dir / "model.safetensors", out, preset="f32", progress=False)
    ref = reference(tiny_hf_dir)
    with GGQReader(out) as f:
        assert set(f.tensors) == set(ref)  # tied: no output.weight
        for n, a in ref.items():
            assert np.array_equal(f.dequantize(n), a), n
        md = f.metadata
        cfg = ModelConfig.from_metadata(md)
        assert (cfg.block_count, cfg.head_count, cfg.head_count_kv, cfg.embedding_length) == (2, 4, 2, 64)
        assert md["general.architecture"] == "llama" and md["general.preset"] == "f32"
        assert md["tokenizer.eos_token_id"] == 2 and md["tokenizer.add_bos_token"] is False
        assert md["tokenizer.ggml.pre"] == "smollm"
        assert json.loads(md["tokenizer.huggingface.json"])["model"]["type"] == "BPE"
        assert "im_start" in md["tokenizer.chat_template"]
        methods = json.loads(md["quantization.tensor_methods"])
        assert methods["blk.0.attn_q.weight"] == {"type": "F32", "method": "float", "source_type": "F32"}
        assert md["quantization.imatrix"] is False
        assert f.verify() == []
    assert rep.file_size == out.stat().st_size and rep.params == sum(a.size for a in ref.values())
    assert rep.bits_per_weight == pytest.approx(32.0)


@pytest.mark.parametrize("preset,types,tol", [
    ("q8_0", {"Q8_0"}, 0.01),
    ("q4_0", {"Q4_0", "Q8_0"}, 0.12),
    ("q5_1", {"Q5_1", "Q8_0"}, 0.06),
    ("f16", {"F16"}, 1e-3),
    ("bf16", {"BF16"}, 1e-2),
    # rows of 64/128: 256-blocks do not fit, so k-quant presets fall back to 32-element types
    ("q4_k_m", {"Q5_0", "Q8_0"}, 0.08),
    ("q6_k", {"Q8_0"}, 0.01),
])
def test_presets_read_back(tiny_hf_dir, tmp_path, preset, types, tol):
    out = tmp_path / f"t.{preset}.ggq"
    rep = convert_model(tiny_hf_dir, out, preset=preset, progress=False)
    ref = reference(tiny_hf_dir)
    with GGQReader(out) as f:
        got = {f.tensors[n].qtype.name for n in f.tensors if len(f.tensors[n].shape) == 2}
        assert got == types
        for n, a in ref.items():
            x = f.dequantize(n)
            if a.ndim == 1:
                assert f.tensors[n].qtype.name == "F32" and np.array_equal(x, a)
            else:
                rel = np.sqrt(np.mean((x - a) ** 2) / np.mean(a ** 2))
                assert rel < tol, (n, rel)
    assert rep.bytes_after < rep.bytes_before or preset == "f32"


def test_k_quants_on_256_rows(tmp_path):
    from tiny_model import make_tiny_hf_dir
    d = make_tiny_hf_dir(tmp_path / "hf256", hidden=256, intermediate=512, heads=4, kv_heads=2, layers=8)
    out = tmp_path / "m.ggq"
    rep = convert_model(d, out, preset="q4_k_m", progress=False)
    t = {e.name: e.type for e in rep.entries}
    assert t["token_embd.weight"] == "Q6_K"          # tied embeddings take the output's type
    assert t["blk.0.attn_q.weight"] == "Q4_K"
    assert t["blk.0.attn_v.weight"] == "Q6_K" and t["blk.1.attn_v.weight"] == "Q4_K"  # use_more_bits
    # use_more_bits(i, 8): i < 1, i >= 7, or (i - 1) % 3 == 2
    assert [t[f"blk.{i}.ffn_down.weight"] for i in range(8)] == \
        ["Q6_K", "Q4_K", "Q4_K", "Q6_K", "Q4_K", "Q4_K", "Q6_K", "Q6_K"]
    ref = reference(d)
    with GGQReader(out) as f:
        for n in ("blk.0.attn_q.weight", "blk.0.ffn_down.weight"):
            a = ref[n]
            rel = np.sqrt(np.mean((f.dequantize(n) - a) ** 2) / np.mean(a ** 2))
            assert rel < 0.12, (n, rel)


def test_bf16_and_f16_inputs(tmp_path):
    from tiny_model import make_tiny_hf_dir
    for dt in ("bfloat16", "float16"):
        d = make_tiny_hf_dir(tmp_path / dt, dtype=dt)
        out = tmp_path / f"{dt}.ggq"
        convert_model(d, out, preset="f32", progress=False)
        from safetensors.numpy import load_file
        raw = load_file(d / "model.safetensors")["model.layers.1.mlp.up_proj.weight"]
        with GGQReader(out) as f:
            assert np.array_equal(f.dequantize("blk.1.ffn_up.weight"), raw.astype(np.float32))


def test_dry_run_writes_nothing(tiny_hf_dir, tmp_path, capsys):
    out = tmp_path / "dry.ggq"
    rep = convert_model(tiny_hf_dir, out, preset="q8_0", dry_run=True, progress=False)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert rep.file_size is None and len(rep.entries) == 2 + 9 * 2
    assert cli_main([ "convert", str(tiny_hf_dir), "-o", str(out), "--dry-run", "-t", "q4_0"]) == 0
    text = capsys.readouterr().out
    assert "blk.1.ffn_down.weight" in text and "Q4_0" in text and "bits/weight" in text
    assert not out.exists()


def test_existing_output_refused_then_forced(tiny_hf_dir, tmp_path, capsys):
    out = tmp_path / "o.ggq"
    out.write_bytes(b"precious")
    with pytest.raises(ConvertError, match="already exists"):
        convert_model(tiny_hf_dir, out, preset="q8_0", progress=False)
    assert out.read_bytes() == b"precious"
    assert cli_main(["convert", str(tiny_hf_dir), "-o", str(out), "-t", "q8_0"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert cli_main(["convert", str(tiny_hf_dir), "-o", str(out), "-t", "q8_0", "--force"]) == 0
    with GGQReader(out) as f:
        assert f.metadata["general.preset"] == "q8_0"


def test_output_equal_to_input_refused(tiny_hf_dir, tmp_path):
    gg = make_tiny_gguf(tiny_hf_dir, tmp_path / "m.gguf")
    before = sha(gg)
    with pytest.raises(ConvertError, match="overwrite the input"):
        convert_model(gg, gg, force=True, progress=False)
    assert sha(gg) == before


def test_failure_midway_leaves_nothing_and_input_untouched(tiny_hf_dir, tmp_path, monkeypatch):
    before = sha(tiny_hf_dir)
    qt = get_type("Q8_0")
    calls = {"n": 0}
    orig = type(qt).quantize

    def boom(self, x, *a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # like Ctrl-C half-way
        return orig(self, x, *a, **k)

    monkeypatch.setattr(type(qt), "quantize", boom)
    out = tmp_path / "x.ggq"
    with pytest.raises(KeyboardInterrupt):
        convert_model(tiny_hf_dir, out, preset="q8_0", progress=False)
    assert calls["n"] == 5
    assert list(tmp_path.iterdir()) == []  # no output, no temp file
    assert sha(tiny_hf_dir) == before


def test_quantizer_error_becomes_convert_error(tiny_hf_dir, tmp_path, monkeypatch):
    qt = get_type("Q4_0")
    monkeypatch.setattr(type(qt), "quantize", lambda self, x, *a, **k: (_ for _ in ()).throw(RuntimeError("x")))
    with pytest.raises(ConvertError, match="quantizing"):
        convert_model(tiny_hf_dir, tmp_path / "y.ggq", preset="q4_0", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_overrides(tiny_hf_dir, tmp_path):
    rep = convert_model(tiny_hf_dir, tmp_path / "o.ggq", preset="q4_0", dry_run=True, progress=False,
                        overrides=["blk.*.ffn_*=Q8_0", "blk.1.ffn_down.weight=q5_1", "blk.0.attn_v.weight=Q6_K"])
    t = {e.name: e.type for e in rep.entries}
    assert t["blk.0.ffn_up.weight"] == "Q8_0"
    assert t["blk.1.ffn_down.weight"] == "Q5_1"      # later wins
    assert t["blk.0.attn_v.weight"] == "Q8_0"        # Q6_K on 64-wide rows falls back
    assert t["blk.0.attn_q.weight"] == "Q4_0"
    assert t["blk.0.attn_norm.weight"] == "F32"
    with pytest.raises(ConvertError, match="matches no"):
        convert_model(tiny_hf_dir, tmp_path / "o.ggq", preset="q4_0", dry_run=True, overrides=["nope*=Q8_0"])
    with pytest.raises(ConvertError, match="PATTERN=TYPE"):
        convert_model(tiny_hf_dir, tmp_path / "o.ggq", preset="q4_0", dry_run=True, overrides=["Q8_0"])
    with pytest.raises(ConvertError, match="unknown preset"):
        convert_model(tiny_hf_dir, tmp_path / "o.ggq", preset="q9_k", dry_run=True)


def test_sharded_folder(tiny_hf_dir, tmp_path):
    import shutil
    from safetensors.numpy import load_file, save_file
    d = tmp_path / "sharded"
    d.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_hf_dir / f, d / f)
    t = load_file(tiny_hf_dir / "model.safetensors")
    keys = sorted(t)
    parts = [keys[: len(keys) // 2], keys[len(keys) // 2:]]
    wm = {}
    for i, ks in enumerate(parts):
        fn = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({k: t[k] for k in ks}, str(d / fn))
        wm.update({k: fn for k in ks})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    a, b = tmp_path / "a.ggq", tmp_path / "b.ggq"
    convert_model(d, a, preset="q8_0", progress=False)
    convert_model(tiny_hf_dir, b, preset="q8_0", progress=False)
    with GGQReader(a) as fa, GGQReader(b) as fb:
        for n in fb.tensors:
            assert np.array_equal(fa.raw(n), fb.raw(n)), n


def test_untied_model_has_output(tmp_path):
    from tiny_model import make_tiny_hf_dir
    d = make_tiny_hf_dir(tmp_path / "untied", tied=False)
    rep = convert_model(d, tmp_path / "u.ggq", preset="q4_0", progress=False)
    t = {e.name: e.type for e in rep.entries}
    assert t["output.weight"] == "Q8_0" and t["token_embd.weight"] == "Q4_0"  # Q6_K -> Q8_0 on 64 cols
    with GGQReader(tmp_path / "u.ggq") as f:
        assert f.metadata["llama.tie_word_embeddings"] is False


# --- GGUF input -----------------------------------------------------------------------------

def test_gguf_keep_copies_bytes_exactly(tiny_hf_dir, tmp_path):
    import gguf
    from ggq.convert.permute import gguf_to_hf_rows
    gg = make_tiny_gguf(tiny_hf_dir, tmp_path / "tiny.gguf", "Q8_0")
    before = sha(gg)
    out = tmp_path / "k.ggq"
    rep = convert_model(gg, out, progress=False)  # default preset for GGUF: keep
    assert rep.preset == "keep"
    assert {e.method for e in rep.entries} == {"copied"}
    r = gguf.GGUFReader(str(gg))
    with GGQReader(out) as f:
        for t in r.tensors:
            src = np.asarray(t.data).reshape(-1).view(np.uint8).reshape(f.raw(t.name).shape)
            if t.name.endswith("attn_q.weight"):
                src = gguf_to_hf_rows(src, 4)
            elif t.name.endswith("attn_k.weight"):
                src = gguf_to_hf_rows(src, 2)
            assert np.array_equal(f.raw(t.name), src), t.name
            assert f.tensors[t.name].qtype.ggml_id == int(t.tensor_type)
        md = f.metadata
        assert md["tokenizer.ggml.pre"] == "smollm" and md["tokenizer.add_bos_token"] is False
        assert md["tokenizer.bos_token_id"] == 1 and md["tokenizer.eos_token_id"] == 2
    assert sha(gg) == before
    # rows are un-permuted: the dequantized q matches the HF weights up to Q8_0 error
    ref = reference(tiny_hf_dir)["blk.1.attn_q.weight"]
    with GGQReader(out) as f:
        assert np.max(np.abs(f.dequantize("blk.1.attn_q.weight") - ref)) < 0.02


def test_gguf_requantize_and_tokenizer(tiny_hf_dir, tmp_path):
    from tokenizers import Tokenizer
    gg = make_tiny_gguf(tiny_hf_dir, tmp_path / "tiny.gguf", "Q8_0")
    rep = convert_model(gg, tmp_path / "r.ggq", preset="q4_0", progress=False)
    methods = {e.name: e.method for e in rep.entries}
    assert methods["blk.0.attn_q.weight"] == "rtn-search"
    assert methods["token_embd.weight"] == "copied"   # tied output type Q6_K -> Q8_0 = source type
    assert methods["output_norm.weight"] == "copied"
    src = open_source(gg)
    hf = Tokenizer.from_file(str(tiny_hf_dir / "tokenizer.json"))
    rebuilt = Tokenizer.from_str(src.tokenizer_json)
    for text in ["the cat sat on the mat", "in  1990", "<|im_start|>user\nhi<|im_end|>", "x 12345 y"]:
        assert rebuilt.encode(text).ids == hf.encode(text).ids, text
        assert rebuilt.decode(rebuilt.encode(text).ids, skip_special_tokens=False) == text


def test_cli_summary(tiny_hf_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli_main(["convert", str(tiny_hf_dir / "model.safetensors"), "-t", "q8_0"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "model.q8_0.ggq").exists()  # default output: INPUT stem + .<preset>.ggq in cwd
    for word in ("params", "bits/weight", "size before", "estimate", "measured", "elapsed"):
        assert word in out


def test_imatrix_is_used_and_recorded(tiny_hf_dir, tmp_path):
    im = {"blk.0.ffn_up.weight": np.linspace(0.1, 10.0, 64).astype(np.float32)}
    np.savez(tmp_path / "im.npz", **im)
    out = tmp_path / "i.ggq"
    rep = convert_model(tiny_hf_dir, out, preset="q4_0", imatrix=tmp_path / "im.npz", progress=False)
    m = {e.name: e.method for e in rep.entries}
    assert m["blk.0.ffn_up.weight"] == "imatrix" and m["blk.1.ffn_up.weight"] == "rtn-search"
    with GGQReader(out) as f:
        assert f.metadata["quantization.imatrix"] is True
        assert json.loads(f.metadata["quantization.tensor_methods"])["blk.0.ffn_up.weight"]["method"] == "imatrix"
    with pytest.raises(ConvertError, match="expected 64"):
        convert_model(tiny_hf_dir, tmp_path / "j.ggq", preset="q4_0", dry_run=True,
                      imatrix={"blk.0.ffn_up.weight": np.ones(3)})


def test_ggq_gguf_ggq_round_trip(tiny_hf_dir, tmp_path):
    from ggq.gguf_io import export_gguf
    a = tmp_path / "a.ggq"
    convert_model(tiny_hf_dir, a, preset="q4_0", progress=False)
    export_gguf(a, tmp_path / "a.gguf")
    b = tmp_path / "b.ggq"
    rep = convert_model(tmp_path / "a.gguf", b, progress=False)
    assert {e.method for e in rep.entries} == {"copied"}
    with GGQReader(a) as fa, GGQReader(b) as fb:
        assert list(fa.tensors) == list(fb.tensors)
        for n in fa.tensors:
            assert np.array_equal(fa.raw(n), fb.raw(n)), n
        # general.file_type: the GGUF states it, and an import that keeps the types keeps it
        skip = {"general.source", "general.preset", "quantization.tensor_methods", "tokenizer.huggingface.json",
                "general.file_type"}
        for k in set(fa.metadata) | set(fb.metadata):
            if k not in skip:
                assert fa.metadata.get(k) == fb.metadata.get(k), k
