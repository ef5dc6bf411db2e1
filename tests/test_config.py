"""config.json reading: both layouts transformers has written give the same .ggq metadata, every
field that changes the math is used or refused, absent fields get transformers' defaults.

The fixtures are the field sets transformers writes (4.x: top-level rope_theta/rope_scaling,
torch_dtype; 5.x: rope_parameters, dtype), with SmolLM2-135M's and Gemma 3 270M's values."""
import copy
import json

import numpy as np
import pytest

from ggq.convert.config import ModelConfig
from ggq.errors import ConvertError

# transformers 4.42 (SmolLM2-135M-Instruct's own config.json, nanotron keys included)
SMOL_4X = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 1, "eos_token_id": 2, "head_dim": 64, "hidden_act": "silu", "hidden_size": 576,
    "initializer_range": 0.041666666666666664, "intermediate_size": 1536, "is_llama_config": True,
    "max_position_embeddings": 8192, "mlp_bias": False, "model_type": "llama",
    "num_attention_heads": 9, "num_hidden_layers": 30, "num_key_value_heads": 3, "pad_token_id": 2,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_interleaved": False, "rope_scaling": None,
    "rope_theta": 100000, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    "transformers_version": "4.42.3", "use_cache": True, "vocab_size": 49152,
}
# the same model saved by transformers 5.x
SMOL_5X = {k: v for k, v in SMOL_4X.items() if k not in ("rope_theta", "rope_scaling", "torch_dtype")}
SMOL_5X.update({"dtype": "bfloat16", "transformers_version": "5.0.0",
                "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}})

# Gemma 3 270M (transformers 4.55 wrote it this way)
GEMMA_4X = {
    "_sliding_window_pattern": 6, "architectures": ["Gemma3ForCausalLM"], "attention_bias": False,
    "attention_dropout": 0.0, "attn_logit_softcapping": None, "bos_token_id": 2,
    "eos_token_id": 1, "final_logit_softcapping": None, "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 640, "initializer_range": 0.02,
    "intermediate_size": 2048,
    "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 3,
    "max_position_embeddings": 32768, "model_type": "gemma3_text", "num_attention_heads": 4,
    "num_hidden_layers": 18, "num_key_value_heads": 1, "pad_token_id": 0,
    "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000.0,
    "rope_scaling": None, "rope_theta": 1000000.0, "sliding_window": 512,
    "torch_dtype": "bfloat16", "transformers_version": "4.55.0.dev0", "use_bidirectional_attention": False,
    "use_cache": True, "vocab_size": 262144,
}
GEMMA_5X = {k: v for k, v in GEMMA_4X.items()
            if k not in ("rope_theta", "rope_scaling", "rope_local_base_freq", "_sliding_window_pattern",
                         "torch_dtype")}
GEMMA_5X.update({"dtype": "bfloat16", "transformers_version": "5.0.0", "rope_parameters": {
    "full_attention": {"rope_theta": 1000000.0, "rope_type": "default"},
    "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"}}})


def parse(cfg):
    return ModelConfig.from_hf(copy.deepcopy(cfg), "config.json")


def refused(cfg, pattern):
    with pytest.raises(ConvertError, match=pattern) as e:
        parse(cfg)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("config.json: ")
    return msg


def test_llama_4x_and_5x_layouts_give_identical_metadata():
    a, b = parse(SMOL_4X), parse(SMOL_5X)
    assert a.to_metadata() == b.to_metadata()
    md = {k: v for k, v, _ in b.to_metadata()}
    assert md["llama.rope.freq_base"] == 100000.0  # the value the 5.x layout hides from a 4.x reader
    assert md["llama.attention.layer_norm_rms_epsilon"] == 1e-5
    assert (md["llama.attention.head_count"], md["llama.attention.head_count_kv"]) == (9, 3)
    assert md["llama.attention.key_length"] == 64 and md["llama.context_length"] == 8192
    assert md["llama.tie_word_embeddings"] is True
    assert b.origin["rope_freq_base"] == "rope_parameters.rope_theta"
    assert a.origin["rope_freq_base"] == "rope_theta"
    assert "rope base 100000" in b.summary()


def test_gemma3_4x_and_5x_layouts_give_identical_metadata():
    a, b = parse(GEMMA_4X), parse(GEMMA_5X)
    assert a.to_metadata() == b.to_metadata()
    md = {k: v for k, v, _ in b.to_metadata()}
    assert md["gemma3.rope.freq_base"] == 1e6
    assert md["gemma3.rope.freq_base_swa"] == 1e4
    assert md["gemma3.attention.sliding_window"] == 512
    assert md["gemma3.attention.sliding_window_pattern"] == 6
    assert md["gemma3.attention.query_pre_attn_scalar"] == 256.0
    assert "gemma3.final_logit_softcapping" not in md
    assert b.local_layers() == [i % 6 < 5 for i in range(18)]
    # 4.x with only the integer pattern, no layer_types
    c = {k: v for k, v in GEMMA_4X.items() if k != "layer_types"}
    assert parse(c).to_metadata() == a.to_metadata()


def test_gemma3_irregular_layer_types_kept_as_bools():
    c = copy.deepcopy(GEMMA_5X)
    c["layer_types"] = ["full_attention"] + ["sliding_attention"] * 17
    cfg = parse(c)
    assert cfg.sliding_window_pattern == tuple([False] + [True] * 17)
    md = {k: (v, t) for k, v, t in cfg.to_metadata()}
    assert md["gemma3.attention.sliding_window_pattern"] == ([False] + [True] * 17, "array[bool]")


def test_absent_fields_take_transformers_defaults():
    c = {k: v for k, v in SMOL_5X.items() if k not in ("rms_norm_eps", "rope_parameters",
                                                        "max_position_embeddings", "num_key_value_heads",
                                                        "head_dim")}
    cfg = parse(c)
    assert cfg.rms_eps == 1e-6          # LlamaConfig's default (not llama.cpp's 1e-5)
    assert cfg.rope_freq_base == 10000.0
    assert cfg.context_length == 2048
    assert cfg.head_count_kv == 9 and cfg.key_length == 64
    assert set(cfg.defaulted()) >= {"rms_eps", "rope_freq_base", "context_length", "head_count_kv",
                                    "key_length"}
    g = {k: v for k, v in GEMMA_5X.items() if k not in ("rope_parameters", "layer_types",
                                                         "query_pre_attn_scalar", "sliding_window")}
    gc = parse(g)
    assert (gc.rope_freq_base, gc.rope_freq_base_swa) == (1e6, 1e4)
    assert gc.sliding_window == 4096 and gc.sliding_window_pattern == 6
    assert gc.query_pre_attn_scalar == 256.0 and gc.tie_word_embeddings is True


@pytest.mark.parametrize("layout", ["4x", "5x"])
def test_rope_scaling_both_layouts(layout):
    base = SMOL_4X if layout == "4x" else SMOL_5X
    c = copy.deepcopy(base)
    p = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
         "original_max_position_embeddings": 8192}
    if layout == "4x":
        c["rope_scaling"] = p
    else:
        c["rope_parameters"] = {**p, "rope_theta": 100000.0}
    cfg = parse(c)
    assert (cfg.rope_scaling_type, cfg.rope_scaling_factor, cfg.rope_original_context_length) == ("llama3", 8.0, 8192)
    del p["original_max_position_embeddings"]
    if layout == "4x":
        c["rope_scaling"] = p
    else:
        c["rope_parameters"] = {**p, "rope_theta": 100000.0}
    refused(c, "needs original_max_position_embeddings")


@pytest.mark.parametrize("change,pattern", [
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, r"rope_type yarn is not supported"),
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, r"rope_type dynamic"),
    ({"rope_theta": 10000.0, "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}},
     r"rope_parameters.rope_theta 100000 disagrees with rope_theta 10000"),
    ({"rope_parameters": {"rope_theta": 1e5, "rope_type": "yarn", "factor": 4.0}}, r"rope_type yarn"),
    ({"rope_parameters": {"rope_theta": 1e5, "rope_type": "default", "partial_rotary_factor": 0.5}},
     r"partial_rotary_factor: 0.5"),
    ({"rope_parameters": {"rope_theta": 1e5, "rope_type": "default", "beta_fast": 32}},
     r"rope_parameters.beta_fast: 32 is not supported"),
    ({"partial_rotary_factor": 0.5}, r"partial_rotary_factor: 0.5 is not supported"),
    ({"attention_bias": True}, r"attention_bias: true is not supported"),
    ({"mlp_bias": True}, r"mlp_bias: true"),
    ({"sliding_window": 4096}, r"sliding_window: 4096 is not supported \(sliding-window attention on a llama\)"),
    ({"hidden_act": "gelu"}, r"hidden_act: gelu is not supported"),
    ({"rope_interleaved": True}, r"rope_interleaved: true"),
    ({"quantization_config": {"quant_method": "gptq"}}, r"quantization_config"),
    ({"logits_scaling": 8.0}, r"logits_scaling: 8.0 is a config field ggq does not know"),
    ({"rms_norm_eps": "small"}, r"rms_norm_eps: small is not a finite number"),
    ({"architectures": ["Qwen2ForCausalLM"]}, r"Qwen2ForCausalLM.*not supported"),
])
def test_llama_fields_that_change_the_math_are_refused(change, pattern):
    c = copy.deepcopy(SMOL_5X)
    if "rope_theta" in change:
        c.pop("rope_parameters")
    c.update(change)
    refused(c, pattern)


@pytest.mark.parametrize("change,pattern", [
    ({"attn_logit_softcapping": 50.0}, r"attn_logit_softcapping: 50.0 is not supported"),
    ({"hidden_activation": "gelu"}, r"hidden_activation: gelu"),
    ({"use_bidirectional_attention": True}, r"use_bidirectional_attention: true"),
    ({"rope_parameters": {"full_attention": {"rope_theta": 1e6, "rope_type": "yarn", "factor": 8.0},
                          "sliding_attention": {"rope_theta": 1e4, "rope_type": "default"}}},
     r"rope_parameters.full_attention: rope_type yarn"),
    ({"rope_parameters": {"full_attention": {"rope_theta": 1e6, "rope_type": "default"},
                          "sliding_attention": {"rope_theta": 1e4, "rope_type": "linear", "factor": 2.0}}},
     r"rope_parameters.sliding_attention: rope_type linear"),
    ({"layer_types": ["sliding_attention"] * 3}, r"layer_types: expected 18 entries"),
    ({"text_config": {}}, r"multimodal"),
])
def test_gemma3_fields_refused(change, pattern):
    c = copy.deepcopy(GEMMA_5X)
    c.update(change)
    refused(c, pattern)


def test_gemma3_layer_types_win_over_the_stale_integer_pattern():
    # transformers 5 writes "_sliding_window_pattern": 6 next to any layer_types; it is unused
    c = copy.deepcopy(GEMMA_4X)
    c["layer_types"] = ["full_attention"] * 3 + ["sliding_attention"] * 15
    assert parse(c).local_layers() == [False] * 3 + [True] * 15
    d = {k: v for k, v in GEMMA_4X.items() if k != "layer_types"}
    d["_sliding_window_pattern"] = 4
    assert parse(d).local_layers() == [bool((i + 1) % 4) for i in range(18)]


def test_gemma3_linear_rope_scaling_on_global_layers():
    c = copy.deepcopy(GEMMA_4X)
    c["rope_scaling"] = {"rope_type": "linear", "factor": 8.0}
    a = parse(c)
    d = copy.deepcopy(GEMMA_5X)
    d["rope_parameters"]["full_attention"] = {"rope_theta": 1e6, "rope_type": "linear", "factor": 8.0}
    b = parse(d)
    assert a.to_metadata() == b.to_metadata()
    assert (b.rope_scaling_type, b.rope_scaling_factor) == ("linear", 8.0)


# ----------------------------------------------------------------------------- whole conversions

def _write_cfg(folder, cfg):
    (folder / "config.json").write_text(json.dumps(cfg))


def test_tiny_folder_4x_and_5x_convert_to_identical_metadata(tmp_path):
    """A real conversion of the same weights under both layouts: identical .ggq metadata."""
    from tiny_model import make_tiny_hf_dir

    from ggq.convert import convert_model
    from ggq.format import GGQReader

    mds = []
    for layout in ("4x", "5x"):
        d = make_tiny_hf_dir(tmp_path / layout, rope_theta=50000.0)
        cfg = json.loads((d / "config.json").read_text())
        if layout == "5x":
            cfg["rope_parameters"] = {"rope_theta": cfg.pop("rope_theta"), "rope_type": "default"}
            cfg.pop("rope_scaling")
            cfg["dtype"] = cfg.pop("torch_dtype")
            cfg["transformers_version"] = "5.0.0"
        _write_cfg(d, cfg)
        out = tmp_path / f"{layout}.ggq"
        rep = convert_model(d, out, preset="q8_0", progress=False)
        assert "rope base 50000" in rep.summary()
        with GGQReader(out) as f:
            md = {k: v for k, v in f.metadata.items() if k not in ("general.source", "general.name")}
            mds.append((md, {n: f.raw(n).tobytes() for n in f.tensors}))
    assert mds[0][0]["llama.rope.freq_base"] == 50000.0
    assert mds[0] == mds[1]


def test_untied_config_without_lm_head_is_refused(tmp_path):
    from tiny_model import make_tiny_hf_dir

    from ggq.convert.sources import open_source

    d = make_tiny_hf_dir(tmp_path / "m", tied=True)
    cfg = json.loads((d / "config.json").read_text())
    cfg["tie_word_embeddings"] = False
    _write_cfg(d, cfg)
    with pytest.raises(ConvertError, match="lm_head.weight is missing"):
        open_source(d)


def test_gguf_unknown_architecture_key_refused(tmp_path):
    import gguf

    from ggq.convert.sources import open_source

    p = tmp_path / "x.gguf"
    w = gguf.GGUFWriter(str(p), "llama")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_uint32("llama.expert_count", 8)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ConvertError, match=r"llama.expert_count = 8 is not supported"):
        open_source(p)
