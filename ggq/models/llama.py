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

from ..errors import ModelError
# shared pieces, also exported from here (tests and tools import them from ggq.models.llama)
from .base import (NO_NORM, PARALLEL_ATTENTION_MIN, DecoderModel, Matrix, Rope, Stacked, Step,  # noqa: F401
                   _vector, add_rmsnorm, attention_blas, causal_mask, check_heads, kv_cache, lazy_zeros,
                   metadata_getter, rmsnorm, rope_inplace, rope_inv_freq, rope_store_attend, rope_store_attend_par,
                   rope_tables, silu_mul, store_kv, vector)


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
# the model

class Layer:
    __slots__ = ("attn_norm", "wq", "wk", "wv", "wo", "ffn_norm", "gate", "up", "down", "qkv", "gate_up",
                 "next_norm", "ops", "kv")


class Llama(DecoderModel):
    """Forward pass over a GGQReader's tensors with a preallocated KV cache of n_ctx positions."""

    MATRIX_FIELDS = ("wq", "wk", "wv", "wo", "gate", "up", "down")
    VECTOR_FIELDS = ("attn_norm", "ffn_norm")
    STACKS = {"qkv": ("wq", "wk", "wv"), "gate_up": ("gate", "up")}  # one call each
    GATED_ACTIVATION = "silu_mul"  # layer()'s gated activation, a backend method (SwiGLU)

    def __init__(self, reader, n_ctx: int | None = None, source: str = "model", use_mmap: bool = True,
                 offload=None):
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
            self.layers.append(L)
        self._finish_init(n_ctx, use_mmap, offload)
        self.rope = Rope(self.n_ctx, rope_inv_freq(hd, cfg.rope_base, cfg.rope_scaling))
        self.scale = np.float32(1.0 / math.sqrt(hd))

    def forward(self, tokens, start_pos: int = 0, all_logits: bool = False) -> np.ndarray:
        """Run tokens at positions start_pos.. (the cache must hold positions < start_pos).
        Returns float32 logits (n, vocab) if all_logits else (1, vocab) for the last token."""
        tokens = self._check_tokens(tokens, start_pos)
        ops = self.layers[0].ops
        x = ops.take(self._embed(tokens))
        h = ops.rmsnorm(x, self.layers[0].attn_norm, self.config.eps)
        h = self._run_layers(x, h, Step(start_pos, tokens.shape[0]))
        return self._logits(h, all_logits)

    def layer(self, L, x, h, step):
        """One layer on its backend L.ops: x (the residual) updated in place; returns the next
        layer's normed input (the output norm's after the last layer)."""
        ops, eps = L.ops, self.config.eps
        q, k, v = L.qkv(h)
        a = ops.attend(L.kv, q, k, v, step, self.rope, self.scale)
        h = ops.add_rmsnorm(x, L.wo(a), L.ffn_norm, eps)                 # x += Wo a; h = norm(x)
        g, u = L.gate_up(h)
        act = getattr(ops, self.GATED_ACTIVATION)                       # SwiGLU
        return ops.add_rmsnorm(x, L.down(act(g, u)), L.next_norm, eps)
