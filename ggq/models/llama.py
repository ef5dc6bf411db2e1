"""The llama-family forward pass, in one file.

    x = embed(tokens)
    for each layer:
        h = rmsnorm(x) ; q, k, v = Wq h, Wk h, Wv h ; rotate q, k (rope, HF split-half form)
        append k, v to the cache ; x += Wo attention(q, cache)        (grouped-query, causal)
        h = rmsnorm(x) ; x += Wdown (silu(Wgate h) * Wup h)              (SwiGLU)
    logits = Wout rmsnorm(x)                                            (Wout = embedding if tied)

Weights stay in the file: each matrix is a zero-copy uint8 view of the mmap passed to
`linear()`, which decodes blocks inside the matmul (one token: the type's matvec kernel, called
directly; q/k/v and gate/up, stored back to back, in one call each; the residual add fused with
the next norm). Activations are float32, shape (n, features).
The KV cache is preallocated float32 (layers, kv_heads, ctx, head_dim): one head's keys are a
contiguous (positions, head_dim) block, which suits both BLAS (prompt) and the decode kernel.
The kernels, weight views, KV cache and attention dispatch are shared with the other
architectures and live in ggq.models.base (re-exported here under their old names).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numba import njit

from ..errors import ModelError
from ..runtime.blas import blas_get_threads
# shared pieces, also exported from here (tests and tools import them from ggq.models.llama)
from .base import (NO_NORM, PARALLEL_ATTENTION_MIN, DecoderModel, Matrix, Stacked, _vector,  # noqa: F401
                   add_rmsnorm, attention_blas, causal_mask, check_heads, kv_cache, lazy_zeros, metadata_getter,
                   rmsnorm, rope_inplace, rope_inv_freq, rope_store_attend, rope_store_attend_par, rope_tables,
                   store_kv, vector)


# ---------------------------------------------------------------------------------------------
# hyperparameters

@dataclass
class LlamaConfig:
    n_layers: int
    dim: int
    ffn_dim: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    eps: float
    rope_base: float
    context_length: int
    vocab_size: int
    tied: bool
    rope_scaling: dict = field(default_factory=dict)

    @classmethod
    def from_metadata(cls, md: dict, source: str = "model") -> "LlamaConfig":
        arch = md.get("general.architecture", "llama")
        if arch != "llama":
            raise ModelError(f"{source}: architecture {arch!r} is not supported (only 'llama')")

        need = metadata_getter(md, source)
        n_heads = int(need("llama.attention.head_count"))
        dim = int(need("llama.embedding_length"))
        head_dim = int(md.get("llama.attention.key_length", dim // max(n_heads, 1)))
        scaling = {"type": str(md.get("llama.rope.scaling.type", "none") or "none")}
        for k in ("factor", "low_freq_factor", "high_freq_factor", "original_context_length"):
            if f"llama.rope.scaling.{k}" in md:
                scaling[k] = float(md[f"llama.rope.scaling.{k}"])
        cfg = cls(
            n_layers=int(need("llama.block_count")), dim=dim,
            ffn_dim=int(need("llama.feed_forward_length")), n_heads=n_heads,
            n_kv_heads=int(md.get("llama.attention.head_count_kv", n_heads)), head_dim=head_dim,
            eps=float(md.get("llama.attention.layer_norm_rms_epsilon", 1e-5)),
            rope_base=float(md.get("llama.rope.freq_base", 10000.0)),
            context_length=int(md.get("llama.context_length", 2048)),
            vocab_size=int(md.get("llama.vocab_size", 0)),
            tied=bool(md.get("llama.tie_word_embeddings", False)), rope_scaling=scaling)
        check_heads(source, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim)
        return cfg


# ---------------------------------------------------------------------------------------------
# llama-only kernel

@njit(cache=True)
def _silu_mul_loop(g, u):
    n, d = g.shape
    out = np.empty_like(g)
    for i in range(n):
        for j in range(d):
            a = g[i, j]
            out[i, j] = a / (np.float32(1.0) + np.exp(-a)) * u[i, j]
    return out


def silu_mul(g, u):
    """silu(g) * u = g / (1 + e**-g) * u, float32. Batches go through numpy's vectorized
    ufuncs (the Numba loop calls the scalar libm exp per element: 3x slower there); one row
    (decode) through the loop, which costs less than the ufunc calls."""
    if g.shape[0] == 1:
        return _silu_mul_loop(g, u)
    t = np.negative(g, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # e**-g = inf for g < -88: the product is -0
        np.exp(t, out=t)
        t += np.float32(1.0)
        np.divide(g, t, out=t)
        t *= u
    return t


# ---------------------------------------------------------------------------------------------
# the model

class Layer:
    __slots__ = ("attn_norm", "wq", "wk", "wv", "wo", "ffn_norm", "gate", "up", "down", "qkv", "gate_up")


class Llama(DecoderModel):
    """Forward pass over a GGQReader's tensors with a preallocated KV cache of n_ctx positions."""

    MATRIX_FIELDS = ("wq", "wk", "wv", "wo", "gate", "up", "down")

    def __init__(self, reader, n_ctx: int | None = None, source: str = "model", use_mmap: bool = True):
        self.source = source
        cfg = self.config = LlamaConfig.from_metadata(reader.metadata, source)
        d, hd = cfg.dim, cfg.head_dim
        self._load_embeddings(reader, source)
        self.layers = []
        for i in range(cfg.n_layers):
            p = f"blk.{i}."
            L = Layer()
            L.attn_norm = vector(reader, p + "attn_norm.weight", d, source)
            L.wq = Matrix(reader, p + "attn_q.weight", (cfg.n_heads * hd, d), source)
            L.wk = Matrix(reader, p + "attn_k.weight", (cfg.n_kv_heads * hd, d), source)
            L.wv = Matrix(reader, p + "attn_v.weight", (cfg.n_kv_heads * hd, d), source)
            L.wo = Matrix(reader, p + "attn_output.weight", (d, cfg.n_heads * hd), source)
            L.ffn_norm = vector(reader, p + "ffn_norm.weight", d, source)
            L.gate = Matrix(reader, p + "ffn_gate.weight", (cfg.ffn_dim, d), source)
            L.up = Matrix(reader, p + "ffn_up.weight", (cfg.ffn_dim, d), source)
            L.down = Matrix(reader, p + "ffn_down.weight", (d, cfg.ffn_dim), source)
            L.qkv, L.gate_up = Stacked(L.wq, L.wk, L.wv), Stacked(L.gate, L.up)  # one call each in decode
            self.layers.append(L)
        self._finish_init(n_ctx, use_mmap)
        self.cos, self.sin = rope_tables(self.n_ctx, rope_inv_freq(hd, cfg.rope_base, cfg.rope_scaling))
        self.scale = np.float32(1.0 / math.sqrt(hd))

    def forward(self, tokens, start_pos: int = 0, all_logits: bool = False) -> np.ndarray:
        """Run tokens at positions start_pos.. (the cache must hold positions < start_pos).
        Returns float32 logits (n, vocab) if all_logits else (1, vocab) for the last token."""
        cfg = self.config
        tokens = self._check_tokens(tokens, start_pos)
        n = tokens.shape[0]
        cos = self.cos[start_pos:start_pos + n]
        sin = self.sin[start_pos:start_pos + n]
        mask, blas_n = None, 1
        if n >= self.BLAS_ATTENTION_MIN:  # BLAS attention (else the Numba kernel)
            mask, blas_n = causal_mask(start_pos, n), blas_get_threads() or 1

        x = self._embed(tokens)
        # each layer ends with the next layer's input norm (the last one with the output norm)
        next_norms = [L.attn_norm for L in self.layers[1:]] + [self.output_norm]
        h = rmsnorm(x, self.layers[0].attn_norm, cfg.eps)
        for li, (L, next_norm) in enumerate(zip(self.layers, next_norms)):
            q, k, v = L.qkv(h)
            a = self._attend(li, q, k, v, cos, sin, start_pos, self.scale, 0, mask, blas_n)
            h = add_rmsnorm(x, L.wo(a), L.ffn_norm, cfg.eps, NO_NORM)          # x += Wo a; h = norm(x)
            g, u = L.gate_up(h)
            h = add_rmsnorm(x, L.down(silu_mul(g, u)), next_norm, cfg.eps, NO_NORM)
        if not all_logits:
            h = np.ascontiguousarray(h[-1:])
        return np.asarray(self.output(h), dtype=np.float32)
