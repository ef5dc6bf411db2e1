"""The llama-family forward pass, in one file.

    x = embed(tokens)
    for each layer:
        h = rmsnorm(x) ; q, k, v = Wq h, Wk h, Wv h ; rotate q, k (rope, HF split-half form)
        append k, v to the cache ; x += Wo attention(q, cache)        (grouped-query, causal)
        h = rmsnorm(x) ; x += Wdown (silu(Wgate h) * Wup h)              (SwiGLU)
    logits = Wout rmsnorm(x)                                            (Wout = embedding if tied)

Weights stay in the file: each matrix is a zero-copy uint8 view of the mmap passed to
`linear()`, which decodes blocks inside the matmul. Activations are float32, shape (n, features).
The KV cache is preallocated float32 (layers, kv_heads, ctx, head_dim): one head's keys are a
contiguous (positions, head_dim) block, which suits both BLAS (prompt) and the decode kernel.
"""
from __future__ import annotations

import math
import mmap
from dataclasses import dataclass, field

import numpy as np
from numba import njit, prange

from ..errors import ModelError, UsageError
from ..runtime.blas import blas_get_threads, blas_set_threads
from ..runtime.linear import embedding_rows, linear


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

        def need(key):
            if key not in md:
                raise ModelError(f"{source}: missing metadata key {key}")
            return md[key]

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
        if cfg.n_heads <= 0 or cfg.n_kv_heads <= 0 or cfg.n_heads % cfg.n_kv_heads:
            raise ModelError(f"{source}: head_count {cfg.n_heads} is not a multiple of head_count_kv {cfg.n_kv_heads}")
        if cfg.head_dim % 2:
            raise ModelError(f"{source}: head dimension {cfg.head_dim} is odd")
        return cfg


# ---------------------------------------------------------------------------------------------
# rotary embeddings

def rope_inv_freq(head_dim: int, base: float, scaling: dict | None = None) -> np.ndarray:
    """Inverse frequencies as transformers computes them (rope_type default / linear / llama3)."""
    inv = 1.0 / base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    scaling = scaling or {}
    kind = scaling.get("type", "none")
    if kind in ("none", "", None, "default"):
        pass
    elif kind == "linear":
        inv = inv / scaling["factor"]  # same as dividing positions by the factor
    elif kind == "llama3":  # transformers' _compute_llama3_parameters
        factor = scaling["factor"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_ctx = scaling["original_context_length"]
        low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
        wavelen = 2 * math.pi / inv
        inv_l = np.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * inv_l / factor + smooth * inv_l
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        inv = np.where(medium, smoothed, inv_l)
    else:
        raise ModelError(f"rope scaling type {kind!r} is not supported (none, linear, llama3)")
    return inv


def rope_tables(n_ctx: int, inv_freq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # float32 angles like transformers (inv_freq float32 times float32 positions)
    inv32 = inv_freq.astype(np.float32)
    ang = np.arange(n_ctx, dtype=np.float32)[:, None] * inv32[None, :]
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# small kernels

# Serial on purpose: on vectors of a few thousand floats a parallel region costs more than the work.
@njit(cache=True)
def rmsnorm(x, w, eps):
    n, d = x.shape
    out = np.empty_like(x)
    for i in range(n):
        ss = 0.0
        for j in range(d):
            ss += np.float64(x[i, j]) * x[i, j]
        r = np.float32(1.0 / math.sqrt(ss / d + eps))
        for j in range(d):
            out[i, j] = w[j] * (x[i, j] * r)
    return out


@njit(cache=True)
def rope_inplace(x, cos, sin, n_heads, head_dim):
    """x: (n, n_heads*head_dim); row i uses cos[i], sin[i]. Split-half pairs (j, j + half)."""
    half = head_dim // 2
    for i in range(x.shape[0]):
        for h in range(n_heads):
            b = h * head_dim
            for j in range(half):
                a = x[i, b + j]
                c = x[i, b + j + half]
                x[i, b + j] = a * cos[i, j] - c * sin[i, j]
                x[i, b + j + half] = c * cos[i, j] + a * sin[i, j]


@njit(cache=True)
def silu_mul(g, u):
    n, d = g.shape
    out = np.empty_like(g)
    for i in range(n):
        for j in range(d):
            a = g[i, j]
            out[i, j] = a / (np.float32(1.0) + np.exp(-a)) * u[i, j]
    return out


@njit(cache=True)
def store_kv(cache_k, cache_v, k, v, start, n_kv_heads, head_dim):
    """cache (kv_heads, ctx, head_dim) <- k, v (n, kv_heads*head_dim) at positions start.."""
    for i in range(k.shape[0]):
        for g in range(n_kv_heads):
            for j in range(head_dim):
                cache_k[g, start + i, j] = k[i, g * head_dim + j]
                cache_v[g, start + i, j] = v[i, g * head_dim + j]


def _rope_store_attend(q, k, v, cos, sin, cache_k, cache_v, start, n_heads, n_kv_heads, head_dim, scale):
    """A decode step's attention in one call (fewer Python dispatches per layer): rotate q and k,
    append k, v to the cache at start.., then causal attention for these few queries, one
    (query, head) per parallel task. q: (n, n_heads*head_dim); query i sits at position
    start+i and sees positions 0..start+i."""
    rope_inplace(q, cos, sin, n_heads, head_dim)
    rope_inplace(k, cos, sin, n_kv_heads, head_dim)
    store_kv(cache_k, cache_v, k, v, start, n_kv_heads, head_dim)
    n = q.shape[0]
    group = n_heads // n_kv_heads
    out = np.empty((n, n_heads * head_dim), dtype=np.float32)
    for task in prange(n * n_heads):
        i = task // n_heads
        h = task % n_heads
        g = h // group
        T = start + i + 1
        s = np.empty(T, dtype=np.float32)
        qo = h * head_dim
        m = -np.inf
        for t in range(T):
            acc = np.float32(0.0)
            for j in range(head_dim):
                acc += q[i, qo + j] * cache_k[g, t, j]
            acc *= scale
            s[t] = acc
            if acc > m:
                m = acc
        tot = np.float32(0.0)
        for t in range(T):
            e = np.exp(s[t] - m)
            s[t] = e
            tot += e
        acc_v = np.zeros(head_dim, dtype=np.float32)
        for t in range(T):
            p = s[t]
            for j in range(head_dim):
                acc_v[j] += p * cache_v[g, t, j]
        inv = np.float32(1.0) / tot
        for j in range(head_dim):
            out[i, qo + j] = acc_v[j] * inv
    return out


# Compiled twice: threads pay off only once the context is long enough.
rope_store_attend = njit(cache=True, fastmath=True)(_rope_store_attend)
rope_store_attend_par = njit(cache=True, parallel=True, fastmath=True)(_rope_store_attend)
PARALLEL_ATTENTION_MIN = 256  # positions x queries


def attention_blas(q, cache_k, cache_v, start, n_heads, n_kv_heads, head_dim, scale, mask):
    """Causal attention for a prompt batch with BLAS matmuls, one head at a time.
    mask: additive (n, T) float32, 0 where visible and -inf above the causal diagonal."""
    n = q.shape[0]
    T = start + n
    group = n_heads // n_kv_heads
    out = np.empty((n, n_heads * head_dim), dtype=np.float32)
    for h in range(n_heads):
        g = h // group
        qh = q[:, h * head_dim:(h + 1) * head_dim]
        s = qh @ cache_k[g, :T].T
        s *= scale
        s += mask
        s -= s.max(axis=1, keepdims=True)
        np.exp(s, out=s)
        s /= s.sum(axis=1, keepdims=True)
        out[:, h * head_dim:(h + 1) * head_dim] = s @ cache_v[g, :T]
    return out


# ---------------------------------------------------------------------------------------------
# the model

def lazy_zeros(shape) -> np.ndarray:
    """float32 zeros whose pages become resident only when written (the KV cache: only the
    positions used cost memory). Not np.zeros: numpy asks for transparent huge pages on big
    arrays, and then one write makes a whole 2 MiB region resident."""
    count = int(np.prod(shape))
    buf = mmap.mmap(-1, max(count * 4, 1))  # anonymous, zero-filled, 4 KiB pages
    return np.frombuffer(buf, dtype=np.float32, count=count).reshape(shape)


class Matrix:
    """A weight matrix as stored: quant type + uint8 rows view of the mmap."""
    __slots__ = ("name", "qtype", "raw", "rows", "cols", "exact")

    def __init__(self, reader, name, shape, source):
        info = reader.tensors.get(name)
        if info is None:
            raise ModelError(f"{source}: missing tensor {name}")
        if tuple(info.shape) != tuple(shape):
            raise ModelError(f"{source}: tensor {name} has shape {tuple(info.shape)}, expected {tuple(shape)}")
        if info.qtype is None:
            raise ModelError(f"{source}: tensor {name} has an unknown type id {info.type_id}")
        self.name, self.qtype = name, info.qtype
        self.rows, self.cols = int(shape[0]), int(shape[1])
        self.raw = reader.raw(name)
        self.exact = False

    def __call__(self, x):
        return linear(self.qtype, self.raw, self.cols, x, exact=self.exact)


def _vector(reader, name, n, source):
    info = reader.tensors.get(name)
    if info is None:
        raise ModelError(f"{source}: missing tensor {name}")
    if int(np.prod(info.shape)) != n:
        raise ModelError(f"{source}: tensor {name} has shape {tuple(info.shape)}, expected ({n},)")
    return np.ascontiguousarray(reader.dequantize(name).reshape(n), dtype=np.float32)


class Layer:
    __slots__ = ("attn_norm", "wq", "wk", "wv", "wo", "ffn_norm", "gate", "up", "down")


class Llama:
    """Forward pass over a GGQReader's tensors with a preallocated KV cache of n_ctx positions."""

    # Prompt batches at least this long use BLAS attention; shorter ones the Numba kernel.
    BLAS_ATTENTION_MIN = 16

    def __init__(self, reader, n_ctx: int | None = None, source: str = "model", use_mmap: bool = True):
        self.source = source
        cfg = self.config = LlamaConfig.from_metadata(reader.metadata, source)
        d, hd = cfg.dim, cfg.head_dim
        emb = reader.tensors.get("token_embd.weight")
        if emb is None:
            raise ModelError(f"{source}: missing tensor token_embd.weight")
        vocab = int(emb.shape[0])
        if cfg.vocab_size and cfg.vocab_size != vocab:
            raise ModelError(f"{source}: token_embd.weight has {vocab} rows but vocab_size is {cfg.vocab_size}")
        cfg.vocab_size = vocab
        self.embed = Matrix(reader, "token_embd.weight", (vocab, d), source)
        self.output_norm = _vector(reader, "output_norm.weight", d, source)
        if "output.weight" in reader.tensors:
            self.output = Matrix(reader, "output.weight", (vocab, d), source)
        else:  # no separate output matrix: embeddings are tied (as llama.cpp also assumes)
            self.output = self.embed
        self.layers = []
        for i in range(cfg.n_layers):
            p = f"blk.{i}."
            L = Layer()
            L.attn_norm = _vector(reader, p + "attn_norm.weight", d, source)
            L.wq = Matrix(reader, p + "attn_q.weight", (cfg.n_heads * hd, d), source)
            L.wk = Matrix(reader, p + "attn_k.weight", (cfg.n_kv_heads * hd, d), source)
            L.wv = Matrix(reader, p + "attn_v.weight", (cfg.n_kv_heads * hd, d), source)
            L.wo = Matrix(reader, p + "attn_output.weight", (d, cfg.n_heads * hd), source)
            L.ffn_norm = _vector(reader, p + "ffn_norm.weight", d, source)
            L.gate = Matrix(reader, p + "ffn_gate.weight", (cfg.ffn_dim, d), source)
            L.up = Matrix(reader, p + "ffn_up.weight", (cfg.ffn_dim, d), source)
            L.down = Matrix(reader, p + "ffn_down.weight", (d, cfg.ffn_dim), source)
            self.layers.append(L)

        if not use_mmap:
            self._copy_weights_to_memory()

        if n_ctx is None:
            n_ctx = min(cfg.context_length, 4096)
        n_ctx = int(n_ctx)
        if n_ctx < 1:
            raise UsageError(f"context size must be at least 1 (got {n_ctx})")
        self.n_ctx = n_ctx
        self.cos, self.sin = rope_tables(n_ctx, rope_inv_freq(hd, cfg.rope_base, cfg.rope_scaling))
        shape = (cfg.n_layers, cfg.n_kv_heads, n_ctx, hd)
        self.cache_k = lazy_zeros(shape)
        self.cache_v = lazy_zeros(shape)
        self.scale = np.float32(1.0 / math.sqrt(hd))

    def _copy_weights_to_memory(self) -> None:
        """--no-mmap: copy every matrix into one anonymous buffer. numpy backs a large buffer with
        transparent huge pages, which spares the TLB misses of streaming 4 KiB file pages (about
        10% faster decode here), at the price of reading the whole file up front."""
        mats = list(self.matrices())
        offsets, total = [], 0
        for m in mats:
            offsets.append(total)
            total += (m.raw.nbytes + 63) // 64 * 64
        buf = np.empty(total, dtype=np.uint8)
        for m, off in zip(mats, offsets):
            dst = buf[off:off + m.raw.nbytes].reshape(m.raw.shape)
            dst[...] = m.raw
            m.raw = dst

    def set_exact(self, exact: bool) -> None:
        """exact=True: float activations in decode too (by default one-token matvecs quantize the
        activations to 8 bits per 32, like llama.cpp; prompt batches are always float)."""
        for m in self.matrices():
            m.exact = bool(exact)

    def matrices(self):
        yield self.embed
        if self.output is not self.embed:
            yield self.output
        for L in self.layers:
            yield from (L.wq, L.wk, L.wv, L.wo, L.gate, L.up, L.down)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def forward(self, tokens, start_pos: int = 0, all_logits: bool = False) -> np.ndarray:
        """Run tokens at positions start_pos.. (the cache must hold positions < start_pos).
        Returns float32 logits (n, vocab) if all_logits else (1, vocab) for the last token."""
        cfg = self.config
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        n = tokens.shape[0]
        if n == 0:
            raise UsageError("no tokens to evaluate")
        if start_pos < 0 or start_pos + n > self.n_ctx:
            raise UsageError(f"positions {start_pos}..{start_pos + n - 1} exceed the context size {self.n_ctx}")
        if tokens.min() < 0 or tokens.max() >= cfg.vocab_size:
            raise UsageError(f"token id out of range 0..{cfg.vocab_size - 1}")
        nh, nkv, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        cos = self.cos[start_pos:start_pos + n]
        sin = self.sin[start_pos:start_pos + n]
        use_blas = n >= self.BLAS_ATTENTION_MIN
        blas_n = blas_get_threads() or 1
        if use_blas:
            T = start_pos + n
            # query i (position start+i) sees keys 0..start+i
            mask = np.where(np.arange(T)[None, :] > (start_pos + np.arange(n))[:, None],
                            np.float32(-np.inf), np.float32(0)).astype(np.float32)

        x = np.ascontiguousarray(embedding_rows(self.embed.qtype, self.embed.raw, self.embed.cols, tokens),
                                 dtype=np.float32)
        for li, L in enumerate(self.layers):
            h = rmsnorm(x, L.attn_norm, cfg.eps)
            q = np.ascontiguousarray(L.wq(h))
            k = np.ascontiguousarray(L.wk(h))
            v = np.ascontiguousarray(L.wv(h))
            ck, cv = self.cache_k[li], self.cache_v[li]
            if use_blas:
                rope_inplace(q, cos, sin, nh, hd)
                rope_inplace(k, cos, sin, nkv, hd)
                store_kv(ck, cv, k, v, start_pos, nkv, hd)
                # small per-head matmuls: one BLAS thread (see runtime.generate, BLAS threads)
                blas_set_threads(1)
                a = attention_blas(q, ck, cv, start_pos, nh, nkv, hd, self.scale, mask)
                blas_set_threads(blas_n)
            elif (start_pos + n) * n >= PARALLEL_ATTENTION_MIN:
                a = rope_store_attend_par(q, k, v, cos, sin, ck, cv, start_pos, nh, nkv, hd, self.scale)
            else:
                a = rope_store_attend(q, k, v, cos, sin, ck, cv, start_pos, nh, nkv, hd, self.scale)
            x = x + L.wo(a)
            h = rmsnorm(x, L.ffn_norm, cfg.eps)
            x = x + L.down(silu_mul(np.ascontiguousarray(L.gate(h)), np.ascontiguousarray(L.up(h))))
        if not all_logits:
            x = np.ascontiguousarray(x[-1:])
        x = rmsnorm(x, self.output_norm, cfg.eps)
        return np.asarray(self.output(x), dtype=np.float32)
