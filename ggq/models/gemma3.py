"""The Gemma 3 (text) forward pass, in one file (llama.cpp src/models/gemma3.cpp).

    x = embed(tokens) * sqrt(hidden)                                    (float32 sqrt)
    for each layer:
        h = rmsnorm(x) ; q, k, v = Wq h, Wk h, Wv h
        q, k = rmsnorm per head (q_norm, k_norm) ; rotate q, k (rope, split-half form)
        append k, v to the cache ; a = attention(q, cache) * 1/sqrt(query_pre_attn_scalar)
            local layers: sliding window (p - t < window) and rope base freq_base_swa
            global layers: full causal, rope base freq_base (+ optional linear scaling)
        x += rmsnorm(Wo a)                                              (post_attention_norm)
        h = rmsnorm(x) ; x += rmsnorm(Wdown (gelu_tanh(Wgate h) * Wup h))  (post_ffw_norm)
    logits = Wout rmsnorm(x)                                            (Wout = embedding if tied)
    logits = cap * tanh(logits / cap)                                   (only if a cap is given)

Every norm weight in the file already holds Gemma's (1 + w) (the converters fold the +1), so
rmsnorm is x * w as in llama. attn_q / attn_k rows are in split-half (NeoX) order in GGUF and
.ggq alike: no row permutation. Kernels, weights views, KV cache and the attention dispatch
are shared with llama (ggq.models.base); the cache is one full-length cache for all layers,
local layers only read the last `window` positions of it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import ModelError
from .base import (CPU, DecoderModel, Matrix, Rope, Step, check_heads, gelu_tanh_mul,  # noqa: F401
                   metadata_getter, rope_inv_freq, vector)

head_rmsnorm = CPU.head_rmsnorm  # the old name (tests)

ARCH = "gemma3"
DEFAULT_SWA_PATTERN = 6          # llama.cpp: load_swa_pattern(ml, 6)
DEFAULT_ROPE_BASE_SWA = 10000.0  # llama.cpp: hparams.rope_freq_base_train_swa


# ---------------------------------------------------------------------------------------------
# hyperparameters

@dataclass
class Gemma3Config:
    n_layers: int
    dim: int
    ffn_dim: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    eps: float
    rope_base: float             # global layers
    rope_base_local: float       # sliding-window layers (no rope scaling there)
    window: int                  # sliding window in positions (0: none, every layer global)
    local: tuple                 # per layer: True = sliding-window layer
    query_pre_attn_scalar: float  # attention scale = 1/sqrt(this)
    softcap: float               # final logit softcapping (0: none)
    context_length: int
    vocab_size: int
    tied: bool
    rope_scaling: dict = field(default_factory=dict)  # global layers: none | linear

    @classmethod
    def from_metadata(cls, md: dict, source: str = "model") -> "Gemma3Config":
        arch = md.get("general.architecture")
        if arch != ARCH:
            raise ModelError(f"{source}: architecture {arch!r} is not {ARCH!r}")
        need = metadata_getter(md, source)
        p = ARCH + "."
        n_layers = int(need(p + "block_count"))
        dim = int(need(p + "embedding_length"))
        n_heads = int(need(p + "attention.head_count"))
        n_kv_heads = int(need(p + "attention.head_count_kv"))
        head_dim = int(need(p + "attention.key_length"))
        if int(md.get(p + "attention.value_length", head_dim)) != head_dim:
            raise ModelError(f"{source}: attention.value_length {md[p + 'attention.value_length']} "
                             f"differs from key_length {head_dim} (not supported)")
        check_heads(source, n_heads, n_kv_heads, head_dim)

        kind = str(md.get(p + "rope.scaling.type", "none") or "none")
        scaling = {"type": kind}
        if kind == "linear":
            scaling["factor"] = float(need(p + "rope.scaling.factor"))
        elif kind not in ("none", "default"):
            raise ModelError(f"{source}: rope scaling type {kind!r} is not supported for {ARCH} (none, linear)")

        window = int(md.get(p + "attention.sliding_window", 0) or 0)
        if window < 0:
            raise ModelError(f"{source}: attention.sliding_window is negative ({window})")
        if window == 0:  # no sliding window at all: every layer global (llama.cpp: LLAMA_SWA_TYPE_NONE)
            local = (False,) * n_layers
        else:
            local = _local_layers(md.get(p + "attention.sliding_window_pattern", DEFAULT_SWA_PATTERN),
                                  n_layers, source)

        qpas = md.get(p + "attention.query_pre_attn_scalar")
        if qpas is None:  # llama.cpp's rule (gemma_pytorch config): 27B scales by hidden/heads
            qpas = dim // n_heads if n_layers == 62 else head_dim
        qpas = float(qpas)
        if not qpas > 0:
            raise ModelError(f"{source}: attention.query_pre_attn_scalar must be positive (got {qpas})")
        softcap = float(md.get(p + "final_logit_softcapping", 0.0) or 0.0)
        if softcap < 0:
            raise ModelError(f"{source}: final_logit_softcapping is negative ({softcap})")

        return cls(
            n_layers=n_layers, dim=dim, ffn_dim=int(need(p + "feed_forward_length")),
            n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim,
            eps=float(need(p + "attention.layer_norm_rms_epsilon")),
            rope_base=float(need(p + "rope.freq_base")),
            rope_base_local=float(md.get(p + "rope.freq_base_swa", DEFAULT_ROPE_BASE_SWA)),
            window=window, local=local, query_pre_attn_scalar=qpas, softcap=softcap,
            context_length=int(need(p + "context_length")),
            vocab_size=int(md.get(p + "vocab_size", 0)),
            tied=bool(md.get(p + "tie_word_embeddings", True)), rope_scaling=scaling)


def _local_layers(pattern, n_layers: int, source: str) -> tuple:
    """sliding_window_pattern: one bool per layer (True = local), or a period n: layer i is
    local iff i % n < n - 1 (every n-th layer global; 0: all local), as llama.cpp's set_swa_pattern."""
    if isinstance(pattern, (list, tuple, np.ndarray)):
        if len(pattern) != n_layers:
            raise ModelError(f"{source}: attention.sliding_window_pattern has {len(pattern)} entries "
                             f"for {n_layers} layers")
        return tuple(bool(b) for b in pattern)
    if isinstance(pattern, bool) or not isinstance(pattern, (int, np.integer)) or pattern < 0:
        raise ModelError(f"{source}: attention.sliding_window_pattern must be a layer period or "
                         f"one bool per layer (got {pattern!r})")
    n = int(pattern)
    return tuple(n == 0 or i % n < n - 1 for i in range(n_layers))


# ---------------------------------------------------------------------------------------------
# the model

class Layer:
    __slots__ = ("attn_norm", "wq", "wk", "wv", "wo", "q_norm", "k_norm", "post_attn_norm",
                 "ffn_norm", "gate", "up", "down", "post_ffw_norm", "local", "window", "qkv", "gate_up",
                 "next_norm", "ops", "kv", "rope")


class Gemma3(DecoderModel):
    """Forward pass over a GGQReader's tensors with a preallocated KV cache of n_ctx positions."""

    MATRIX_FIELDS = ("wq", "wk", "wv", "wo", "gate", "up", "down")
    VECTOR_FIELDS = ("attn_norm", "q_norm", "k_norm", "post_attn_norm", "ffn_norm", "post_ffw_norm")
    STACKS = {"qkv": ("wq", "wk", "wv"), "gate_up": ("gate", "up")}  # one call each
    GATED_ACTIVATION = "gelu_tanh_mul"  # layer()'s gated activation, a backend method (GeGLU)

    def __init__(self, reader, n_ctx: int | None = None, source: str = "model", use_mmap: bool = True,
                 offload=None):
        self.source = source
        cfg = self.config = Gemma3Config.from_metadata(reader.metadata, source)
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
            L.q_norm = vector(reader, p + "attn_q_norm.weight", hd, source)
            L.k_norm = vector(reader, p + "attn_k_norm.weight", hd, source)
            L.wo = Matrix(reader, p + "attn_output.weight", (d, cfg.n_heads * hd), source)
            L.post_attn_norm = vector(reader, p + "post_attention_norm.weight", d, source)
            L.ffn_norm = vector(reader, p + "ffn_norm.weight", d, source)
            L.gate = Matrix(reader, p + "ffn_gate.weight", (cfg.ffn_dim, d), source)
            L.up = Matrix(reader, p + "ffn_up.weight", (cfg.ffn_dim, d), source)
            L.down = Matrix(reader, p + "ffn_down.weight", (d, cfg.ffn_dim), source)
            L.post_ffw_norm = vector(reader, p + "post_ffw_norm.weight", d, source)
            L.local = cfg.local[i]
            L.window = cfg.window if L.local else 0
            self.layers.append(L)
        self._finish_init(n_ctx, use_mmap, offload)
        # two rope tables: global layers (freq_base, scaling) and local ones (freq_base_swa, none)
        rope_global = Rope(self.n_ctx, rope_inv_freq(hd, cfg.rope_base, cfg.rope_scaling))
        rope_local = Rope(self.n_ctx, rope_inv_freq(hd, cfg.rope_base_local))
        for L in self.layers:
            L.rope = rope_local if L.local else rope_global
        self.scale = np.float32(1.0 / math.sqrt(cfg.query_pre_attn_scalar))
        self.embed_scale = np.float32(math.sqrt(d))

    def forward(self, tokens, start_pos: int = 0, all_logits: bool = False) -> np.ndarray:
        """Run tokens at positions start_pos.. (the cache must hold positions < start_pos).
        Returns float32 logits (n, vocab) if all_logits else (1, vocab) for the last token."""
        cfg = self.config
        tokens = self._check_tokens(tokens, start_pos)
        x = self._embed(tokens)
        x *= self.embed_scale
        ops = self.layers[0].ops
        x = ops.take(x)
        h = ops.rmsnorm(x, self.layers[0].attn_norm, cfg.eps)
        h = self._run_layers(x, h, Step(start_pos, tokens.shape[0]))
        logits = self._logits(h, all_logits)
        if cfg.softcap:
            cap = np.float32(cfg.softcap)
            logits /= cap
            np.tanh(logits, out=logits)
            logits *= cap
        return logits

    def layer(self, L, x, h, step):
        """One layer on its backend L.ops: x (the residual) updated in place; returns the next
        layer's normed input (the output norm's after the last layer)."""
        ops, eps, hd = L.ops, self.config.eps, self.config.head_dim
        q, k, v = L.qkv(h)
        q = ops.head_rmsnorm(q, L.q_norm, eps, hd)
        k = ops.head_rmsnorm(k, L.k_norm, eps, hd)
        a = ops.attend(L.kv, q, k, v, step, L.rope, self.scale, L.window)
        h = ops.add_rmsnorm(x, L.wo(a), L.ffn_norm, eps, L.post_attn_norm)  # x += norm(Wo a); h = norm(x)
        g, u = L.gate_up(h)
        act = getattr(ops, self.GATED_ACTIVATION)                       # GeGLU (tanh GELU)
        return ops.add_rmsnorm(x, L.down(act(g, u)), L.next_norm, eps, L.post_ffw_norm)
