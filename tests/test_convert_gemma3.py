"""Converting a Gemma 3 Hugging Face folder (Gemma3ForCausalLM, transformers 5 layout): names,
the +1 folded into every RMSNorm weight (as llama.cpp's converter does), no Q/K row permutation,
and the resolved hyperparameters in the metadata."""
import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from ggq.convert import convert_model
from ggq.errors import ConvertError
from ggq.format import GGQReader

from tiny_model import tiny_tokenizer_json

CFG = dict(hidden=64, ffn=96, layers=5, heads=4, kv_heads=1, head_dim=32, vocab=300)


def make_tiny_gemma3_hf(path, *, seed=0, layout="5x", softcap=None):
    """A random tiny Gemma3ForCausalLM folder; returns (folder, HF tensors as float32)."""
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, f, hd, nh, nkv, V = (CFG[k] for k in ("hidden", "ffn", "head_dim", "heads", "kv_heads", "vocab"))

    def w(*shape, scale=0.1):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    t = {"model.embed_tokens.weight": w(V, h, scale=0.5), "model.norm.weight": w(h)}
    for i in range(CFG["layers"]):
        p = f"model.layers.{i}."
        t.update({
            p + "input_layernorm.weight": w(h), p + "post_attention_layernorm.weight": w(h),
            p + "pre_feedforward_layernorm.weight": w(h), p + "post_feedforward_layernorm.weight": w(h),
            p + "self_attn.q_norm.weight": w(hd), p + "self_attn.k_norm.weight": w(hd),
            p + "self_attn.q_proj.weight": w(nh * hd, h), p + "self_attn.k_proj.weight": w(nkv * hd, h),
            p + "self_attn.v_proj.weight": w(nkv * hd, h), p + "self_attn.o_proj.weight": w(h, nh * hd),
            p + "mlp.gate_proj.weight": w(f, h), p + "mlp.up_proj.weight": w(f, h),
            p + "mlp.down_proj.weight": w(h, f),
        })
    save_file(t, str(path / "model.safetensors"), metadata={"format": "pt"})
    layer_types = ["sliding_attention" if (i + 1) % 3 else "full_attention" for i in range(CFG["layers"])]
    cfg = {
        "architectures": ["Gemma3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "attn_logit_softcapping": None, "bos_token_id": 2, "eos_token_id": 1,
        "final_logit_softcapping": softcap, "head_dim": hd, "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": h, "initializer_range": 0.02, "intermediate_size": f, "layer_types": layer_types,
        "max_position_embeddings": 128, "model_type": "gemma3_text", "num_attention_heads": nh,
        "num_hidden_layers": CFG["layers"], "num_key_value_heads": nkv, "pad_token_id": 0,
        "query_pre_attn_scalar": 24, "rms_norm_eps": 1e-06, "sliding_window": 6,
        "use_bidirectional_attention": False, "use_cache": True, "vocab_size": V,
    }
    if layout == "5x":
        cfg.update({"dtype": "float32", "transformers_version": "5.0.0", "rope_parameters": {
            "full_attention": {"rope_theta": 50000.0, "rope_type": "default"},
            "sliding_attention": {"rope_theta": 500.0, "rope_type": "default"}}})
    else:
        cfg.update({"torch_dtype": "float32", "transformers_version": "4.55.0", "rope_theta": 50000.0,
                    "rope_local_base_freq": 500.0, "rope_scaling": None, "_sliding_window_pattern": 3})
    (path / "config.json").write_text(json.dumps(cfg, indent=1))
    (path / "tokenizer.json").write_text(json.dumps(tiny_tokenizer_json(), ensure_ascii=False))
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"add_bos_token": True, "bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}))
    return path, t


def test_gemma3_folder_converts_with_norms_folded(tmp_path):
    d, hf = make_tiny_gemma3_hf(tmp_path / "g")
    out = tmp_path / "g.ggq"
    rep = convert_model(d, out, preset="f32", progress=False)
    assert "arch gemma3" in rep.summary() and "sliding window 6 on 4/5 layers" in rep.summary()
    with GGQReader(out) as f:
        md = f.metadata
        assert md["general.architecture"] == "gemma3"
        assert md["gemma3.rope.freq_base"] == 50000.0 and md["gemma3.rope.freq_base_swa"] == 500.0
        assert md["gemma3.attention.sliding_window"] == 6
        assert md["gemma3.attention.sliding_window_pattern"] == 3
        assert md["gemma3.attention.query_pre_attn_scalar"] == 24.0
        assert md["gemma3.attention.key_length"] == 32 and md["gemma3.attention.head_count_kv"] == 1
        assert md["gemma3.tie_word_embeddings"] is True and "output.weight" not in f.tensors
        assert md["tokenizer.add_bos_token"] is True
        names = {
            "token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
            "blk.2.attn_q.weight": "model.layers.2.self_attn.q_proj.weight",
            "blk.2.attn_k.weight": "model.layers.2.self_attn.k_proj.weight",
            "blk.2.attn_norm.weight": "model.layers.2.input_layernorm.weight",
            "blk.2.post_attention_norm.weight": "model.layers.2.post_attention_layernorm.weight",
            "blk.2.ffn_norm.weight": "model.layers.2.pre_feedforward_layernorm.weight",
            "blk.2.post_ffw_norm.weight": "model.layers.2.post_feedforward_layernorm.weight",
            "blk.2.attn_q_norm.weight": "model.layers.2.self_attn.q_norm.weight",
            "blk.2.attn_k_norm.weight": "model.layers.2.self_attn.k_norm.weight",
            "blk.2.ffn_down.weight": "model.layers.2.mlp.down_proj.weight",
        }
        for g, h in names.items():
            want = hf[h] + np.float32(1.0) if g.endswith("norm.weight") else hf[h]
            assert np.array_equal(f.dequantize(g), want), g  # rows not permuted for gemma3
        assert len(f.tensors) == 2 + 13 * CFG["layers"]


def test_gemma3_folder_4x_and_5x_layouts_identical(tmp_path):
    mds = []
    for layout in ("4x", "5x"):
        d, _ = make_tiny_gemma3_hf(tmp_path / layout, layout=layout)
        out = tmp_path / f"{layout}.ggq"
        convert_model(d, out, preset="q8_0", progress=False)
        with GGQReader(out) as f:
            mds.append(({k: v for k, v in f.metadata.items() if k not in ("general.source", "general.name")},
                        {n: f.raw(n).tobytes() for n in f.tensors}))
    assert mds[0] == mds[1]


def test_gemma3_folder_with_unexpected_tensor_refused(tmp_path):
    d, t = make_tiny_gemma3_hf(tmp_path / "g")
    t["model.layers.0.self_attn.q_proj.bias"] = np.zeros(CFG["heads"] * CFG["head_dim"], np.float32)
    save_file(t, str(d / "model.safetensors"))
    with pytest.raises(ConvertError, match="unexpected tensor 'model.layers.0.self_attn.q_proj.bias' for a gemma3"):
        convert_model(d, tmp_path / "x.ggq", preset="f32", progress=False)
