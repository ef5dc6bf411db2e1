"""A plain NumPy llama forward pass, written for clarity rather than speed.

float64 throughout, weights dequantized whole, no KV cache: every call runs the full causal
attention over the given tokens. It shares no code with ggq.models.llama, so the engine's
logits can be checked against it."""
from __future__ import annotations

import math

import numpy as np


def load_weights(path) -> tuple[dict[str, np.ndarray], dict]:
    """All tensors of a .ggq file dequantized to float64, plus its metadata."""
    from ggq.format import GGQReader

    with GGQReader(path) as r:
        w = {name: r.dequantize(name).astype(np.float64) for name in r.tensors}
        return w, dict(r.metadata)


def inv_frequencies(head_dim, base, md) -> np.ndarray:
    inv = [1.0 / base ** (2 * i / head_dim) for i in range(head_dim // 2)]
    kind = md.get("llama.rope.scaling.type", "none")
    if kind == "linear":
        f = md["llama.rope.scaling.factor"]
        inv = [x / f for x in inv]
    elif kind == "llama3":
        f = md["llama.rope.scaling.factor"]
        lo = md["llama.rope.scaling.low_freq_factor"]
        hi = md["llama.rope.scaling.high_freq_factor"]
        old = md["llama.rope.scaling.original_context_length"]
        out = []
        for x in inv:
            wavelen = 2 * math.pi / x
            if wavelen < old / hi:          # high frequency: unchanged
                out.append(x)
            elif wavelen > old / lo:        # low frequency: divided by the factor
                out.append(x / f)
            else:                           # in between: interpolate
                s = (old / wavelen - lo) / (hi - lo)
                out.append((1 - s) * x / f + s * x)
        inv = out
    return np.array(inv, dtype=np.float64)


def rmsnorm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rotate(x, pos, inv):
    """x: (n, heads, head_dim), HF split-half rotation: pairs (j, j + head_dim/2)."""
    half = x.shape[-1] // 2
    ang = pos[:, None] * inv[None, :]              # (n, half)
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)


def reference_logits(weights: dict, md: dict, tokens) -> np.ndarray:
    tokens = np.asarray(tokens)
    n = len(tokens)
    L = md["llama.block_count"]
    H = md["llama.attention.head_count"]
    KV = md["llama.attention.head_count_kv"]
    D = md["llama.embedding_length"]
    hd = md.get("llama.attention.key_length", D // H)
    eps = md["llama.attention.layer_norm_rms_epsilon"]
    inv = inv_frequencies(hd, md["llama.rope.freq_base"], md)
    pos = np.arange(n, dtype=np.float64)
    causal = np.tril(np.ones((n, n), dtype=bool))

    x = weights["token_embd.weight"][tokens]
    for i in range(L):
        p = f"blk.{i}."
        h = rmsnorm(x, weights[p + "attn_norm.weight"], eps)
        q = (h @ weights[p + "attn_q.weight"].T).reshape(n, H, hd)
        k = (h @ weights[p + "attn_k.weight"].T).reshape(n, KV, hd)
        v = (h @ weights[p + "attn_v.weight"].T).reshape(n, KV, hd)
        q, k = rotate(q, pos, inv), rotate(k, pos, inv)
        out = np.zeros((n, H, hd))
        for head in range(H):
            g = head // (H // KV)                  # grouped-query: heads share kv head g
            s = q[:, head] @ k[:, g].T / math.sqrt(hd)
            s = np.where(causal, s, -np.inf)
            s = np.exp(s - s.max(axis=1, keepdims=True))
            s /= s.sum(axis=1, keepdims=True)
            out[:, head] = s @ v[:, g]
        x = x + out.reshape(n, H * hd) @ weights[p + "attn_output.weight"].T
        h = rmsnorm(x, weights[p + "ffn_norm.weight"], eps)
        gate = h @ weights[p + "ffn_gate.weight"].T
        up = h @ weights[p + "ffn_up.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ weights[p + "ffn_down.weight"].T
    x = rmsnorm(x, weights["output_norm.weight"], eps)
    out_w = weights.get("output.weight", weights["token_embd.weight"])
    return x @ out_w.T
