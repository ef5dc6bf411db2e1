"""A tiny random llama checkpoint in Hugging Face layout, for tests.

make_tiny_hf_dir(path, ...) writes config.json, model.safetensors, tokenizer.json and
tokenizer_config.json. The tokenizer is a byte-level BPE with a few merges and the SmolLM2
special tokens, so every code path of the real one is exercised on a small vocabulary."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
    "+ '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def tiny_tokenizer_json(n_merges: int = 40) -> dict:
    b2u = _bytes_to_unicode()
    vocab: dict[str, int] = {s: i for i, s in enumerate(SPECIALS)}
    for b in range(256):
        vocab[b2u[b]] = len(vocab)
    merges = []
    words = ["Ġt", "he", "Ġa", "in", "er", "on", "Ġthe", "re", "at", "en", "Ġs", "ed", "Ġw", "or", "is",
             "Ġo", "it", "an", "ing", "Ġc", "ar", "Ġb", "le", "Ġf", "Ġp", "ou", "es", "Ġm", "al", "Ġd"]
    for w in words[:n_merges]:
        # split into two known tokens
        for k in range(len(w) - 1, 0, -1):
            a, b = w[:k], w[k:]
            if a in vocab and b in vocab:
                merges.append(f"{a} {b}")
                vocab[w] = len(vocab)
                break
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for i, s in enumerate(SPECIALS)
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        ]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab, "merges": merges},
    }


def make_tiny_hf_dir(path, *, hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2,
                     tied=True, dtype="float32", seed=0, rope_theta=10000.0, rope_scaling=None,
                     max_pos=256) -> Path:
    """Write a random tiny llama model; returns the folder. hidden/intermediate multiples of 32
    exercise the 32-element types; pass multiples of 256 to exercise the k-quants."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = tiny_tokenizer_json()
    vocab = len(tok["model"]["vocab"])
    vocab_padded = (vocab + 31) // 32 * 32
    rng = np.random.default_rng(seed)
    hd = hidden // heads

    def w(*shape, scale=None):
        s = scale if scale is not None else 1.0 / np.sqrt(shape[-1])
        return (rng.standard_normal(shape) * s).astype(np.float32)

    t = {"model.embed_tokens.weight": w(vocab_padded, hidden, scale=0.5),
         "model.norm.weight": (1.0 + 0.1 * rng.standard_normal(hidden)).astype(np.float32)}
    for i in range(layers):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = (1.0 + 0.1 * rng.standard_normal(hidden)).astype(np.float32)
        t[p + "post_attention_layernorm.weight"] = (1.0 + 0.1 * rng.standard_normal(hidden)).astype(np.float32)
        t[p + "self_attn.q_proj.weight"] = w(heads * hd, hidden)
        t[p + "self_attn.k_proj.weight"] = w(kv_heads * hd, hidden)
        t[p + "self_attn.v_proj.weight"] = w(kv_heads * hd, hidden)
        t[p + "self_attn.o_proj.weight"] = w(hidden, heads * hd)
        t[p + "mlp.gate_proj.weight"] = w(intermediate, hidden)
        t[p + "mlp.up_proj.weight"] = w(intermediate, hidden)
        t[p + "mlp.down_proj.weight"] = w(hidden, intermediate)
    if not tied:
        t["lm_head.weight"] = w(vocab_padded, hidden)
    if dtype == "float16":
        t = {k: v.astype(np.float16) for k, v in t.items()}
    elif dtype == "bfloat16":
        import ml_dtypes
        t = {k: v.astype(ml_dtypes.bfloat16) for k, v in t.items()}
    save_file(t, str(path / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": hidden, "intermediate_size": intermediate, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": hd,
        "rms_norm_eps": 1e-5, "rope_theta": rope_theta, "rope_scaling": rope_scaling,
        "max_position_embeddings": max_pos, "vocab_size": vocab_padded,
        "tie_word_embeddings": tied, "bos_token_id": 0, "eos_token_id": 2,
        "hidden_act": "silu", "torch_dtype": dtype,
    }
    (path / "config.json").write_text(json.dumps(config, indent=2))
    (path / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": False, "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
        "chat_template": CHAT_TEMPLATE, "model_max_length": max_pos}))
    return path
