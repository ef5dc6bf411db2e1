"""A tiny random Gemma 3 .ggq written directly with GGQWriter, and a plain NumPy reference.

make_tiny_gemma3(path, ...) writes the gemma3 metadata and tensors (norm weights with the +1
already folded in, as the converters store them) plus the tiny byte-level BPE tokenizer of
tiny_model.py, so ggq.load works on it. gemma3_reference_logits(path, tokens) is a float64
forward pass written from the Gemma 3 math (llama.cpp src/models/gemma3.cpp), sharing no code
with ggq.models: weights dequantized whole, no KV cache, full attention over the tokens."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from tiny_model import tiny_tokenizer_json

TOKENIZER = tiny_tokenizer_json()
VOCAB = len(TOKENIZER["model"]["vocab"])

DEFAULTS = dict(hidden=64, heads=4, kv_heads=1, head_dim=32, ffn=96, layers=5, window=6, pattern=3,
                rope_base=1e6, rope_base_swa=1e4, qpas=24.0, softcap=None, rope_scaling=None, eps=1e-6,
                context_length=128, tied=True, qtype="F32", seed=0)


def make_tiny_gemma3(path, *, drop=(), extra=None, **kw) -> Path:
    """Write a random tiny gemma3 model. kw overrides DEFAULTS (pattern: int or list of bools;
    rope_scaling: linear factor or None; qtype: type of the 2-D matrices, e.g. "Q8_0").
    drop: metadata keys to leave out; extra: metadata to add or replace."""
    from ggq.format import GGQWriter
    from ggq.quants import get_type

    c = {**DEFAULTS, **kw}
    D, H, KV, hd, F, NL = c["hidden"], c["heads"], c["kv_heads"], c["head_dim"], c["ffn"], c["layers"]
    rng = np.random.default_rng(c["seed"])
    p = "gemma3."
    md = {
        "general.architecture": ("gemma3", "str"),
        "general.name": ("tiny-gemma3", "str"),
        p + "block_count": (NL, "u32"),
        p + "embedding_length": (D, "u32"),
        p + "feed_forward_length": (F, "u32"),
        p + "attention.head_count": (H, "u32"),
        p + "attention.head_count_kv": (KV, "u32"),
        p + "attention.key_length": (hd, "u32"),
        p + "attention.value_length": (hd, "u32"),
        p + "attention.layer_norm_rms_epsilon": (c["eps"], "f32"),
        p + "rope.freq_base": (c["rope_base"], "f32"),
        p + "rope.freq_base_swa": (c["rope_base_swa"], "f32"),
        p + "attention.sliding_window": (c["window"], "u32"),
        p + "attention.query_pre_attn_scalar": (c["qpas"], "f32"),
        p + "context_length": (c["context_length"], "u32"),
        p + "vocab_size": (VOCAB, "u32"),
        p + "tie_word_embeddings": (bool(c["tied"]), "bool"),
        "tokenizer.huggingface.json": (json.dumps(TOKENIZER), "str"),
        "tokenizer.bos_token_id": (-1, "i32"),
        "tokenizer.eos_token_id": (2, "i32"),
        "tokenizer.add_bos_token": (False, "bool"),
    }
    pat = c["pattern"]
    if pat is not None:
        md[p + "attention.sliding_window_pattern"] = (list(pat), "array[bool]") if isinstance(pat, (list, tuple)) \
            else (int(pat), "u32")
    if c["softcap"] is not None:
        md[p + "final_logit_softcapping"] = (c["softcap"], "f32")
    if c["rope_scaling"] is not None:
        md[p + "rope.scaling.type"] = ("linear", "str")
        md[p + "rope.scaling.factor"] = (c["rope_scaling"], "f32")
    for k in drop:
        md.pop(k, None)
    for k, v in (extra or {}).items():
        md[k] = v if isinstance(v, tuple) else (v, None)

    def mat(rows, cols, gain=1.0):
        return (rng.standard_normal((rows, cols)) * gain / math.sqrt(cols)).astype(np.float32)

    def norm(n):  # (1 + w) folded in, w small
        return (1.0 + 0.2 * rng.standard_normal(n)).astype(np.float32)

    tensors = {"token_embd.weight": (rng.standard_normal((VOCAB, D)) * 0.5).astype(np.float32),
               "output_norm.weight": norm(D)}
    if not c["tied"]:
        tensors["output.weight"] = mat(VOCAB, D, 4.0)
    for i in range(NL):
        b = f"blk.{i}."
        tensors.update({
            b + "attn_norm.weight": norm(D),
            b + "attn_q.weight": mat(H * hd, D, 2.0),
            b + "attn_k.weight": mat(KV * hd, D, 2.0),
            b + "attn_v.weight": mat(KV * hd, D),
            b + "attn_q_norm.weight": norm(hd),
            b + "attn_k_norm.weight": norm(hd),
            b + "attn_output.weight": mat(D, H * hd),
            b + "post_attention_norm.weight": norm(D),
            b + "ffn_norm.weight": norm(D),
            b + "ffn_gate.weight": mat(F, D, 2.0),
            b + "ffn_up.weight": mat(F, D),
            b + "ffn_down.weight": mat(D, F),
            b + "post_ffw_norm.weight": norm(D),
        })

    path = Path(path)
    qt = get_type(c["qtype"])
    f32 = get_type("F32")
    with GGQWriter(path, force=True) as w:
        for k, (v, vt) in md.items():
            w.add_metadata(k, v, vt)
        data = {}
        for name, arr in tensors.items():
            t = qt if arr.ndim == 2 else f32
            w.add_tensor(name, t, arr.shape)
            data[name] = t.quantize(arr if arr.ndim == 2 else arr.reshape(1, -1))
        for name, blocks in data.items():
            w.write_tensor(name, blocks)
    return path


# ---------------------------------------------------------------------------------------------
# reference

def _rms(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _rotate(x, pos, inv):
    """x (n, heads, hd): split-half pairs (j, j + hd/2) rotated by pos * inv[j]."""
    half = x.shape[-1] // 2
    ang = pos[:, None] * inv[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def load(path):
    from ggq.format import GGQReader

    with GGQReader(path) as r:
        return {n: r.dequantize(n).astype(np.float64) for n in r.tensors}, dict(r.metadata)


def gemma3_reference_logits(path, tokens) -> np.ndarray:
    W, md = load(path)
    g = lambda k, d=None: md.get("gemma3." + k, d)  # noqa: E731
    NL, D, H, KV, hd = g("block_count"), g("embedding_length"), g("attention.head_count"), \
        g("attention.head_count_kv"), g("attention.key_length")
    eps = g("attention.layer_norm_rms_epsilon")
    window = g("attention.sliding_window", 0) or 0
    pat = g("attention.sliding_window_pattern", 6)
    if window == 0:
        local = [False] * NL
    elif isinstance(pat, list):
        local = [bool(b) for b in pat]
    else:
        local = [pat == 0 or i % pat < pat - 1 for i in range(NL)]
    qpas = g("attention.query_pre_attn_scalar", hd)
    factor = g("rope.scaling.factor", 1.0) if g("rope.scaling.type", "none") == "linear" else 1.0
    j = np.arange(hd // 2)
    inv_global = 1.0 / g("rope.freq_base") ** (2 * j / hd) / factor
    inv_local = 1.0 / g("rope.freq_base_swa", 10000.0) ** (2 * j / hd)
    cap = g("final_logit_softcapping")

    tokens = np.asarray(tokens)
    n = len(tokens)
    pos = np.arange(n, dtype=np.float64)
    diff = pos[:, None] - pos[None, :]          # query position - key position
    x = W["token_embd.weight"][tokens] * math.sqrt(D)
    for i in range(NL):
        b = f"blk.{i}."
        inv = inv_local if local[i] else inv_global
        visible = (diff >= 0) & ((diff < window) if local[i] else True)
        h = _rms(x, W[b + "attn_norm.weight"], eps)
        q = _rms((h @ W[b + "attn_q.weight"].T).reshape(n, H, hd), W[b + "attn_q_norm.weight"], eps)
        k = _rms((h @ W[b + "attn_k.weight"].T).reshape(n, KV, hd), W[b + "attn_k_norm.weight"], eps)
        v = (h @ W[b + "attn_v.weight"].T).reshape(n, KV, hd)
        q, k = _rotate(q, pos, inv), _rotate(k, pos, inv)
        out = np.zeros((n, H, hd))
        for hh in range(H):
            kv = hh // (H // KV)
            s = q[:, hh] @ k[:, kv].T / math.sqrt(qpas)
            s = np.where(visible, s, -np.inf)
            s = np.exp(s - s.max(axis=1, keepdims=True))
            s /= s.sum(axis=1, keepdims=True)
            out[:, hh] = s @ v[:, kv]
        x = x + _rms(out.reshape(n, H * hd) @ W[b + "attn_output.weight"].T, W[b + "post_attention_norm.weight"], eps)
        h = _rms(x, W[b + "ffn_norm.weight"], eps)
        f = _gelu_tanh(h @ W[b + "ffn_gate.weight"].T) * (h @ W[b + "ffn_up.weight"].T)
        x = x + _rms(f @ W[b + "ffn_down.weight"].T, W[b + "post_ffw_norm.weight"], eps)
    out_w = W.get("output.weight", W["token_embd.weight"])
    logits = _rms(x, W["output_norm.weight"], eps) @ out_w.T
    if cap:
        logits = cap * np.tanh(logits / cap)
    return logits
