"""What every decoder architecture shares: kernels, weight views, KV cache, the model skeleton.

- rope_inv_freq / rope_tables: rotary frequencies (default, linear, llama3) and cos/sin tables.
- rmsnorm, rope_inplace (HF split-half / NeoX pairs (j, j + head_dim/2)), store_kv: Numba kernels.
- rope_store_attend(_par): one decode step's rope + cache append + attention in one call.
- attention_blas: prompt-batch attention with BLAS matmuls.
  Both attention paths take `window` (0 = none): the query at position p sees the keys at
  positions t with t <= p and p - t < window (sliding-window attention).
- add_rmsnorm: the residual add and the next norm in one call (Gemma's post-norm optional).
- Matrix (a weight as stored, called as y = W x; one row calls the type's matvec kernel
  directly), Stacked (matrices that read the same input, one kernel call when they lie back to
  back in memory), vector (a 1-D norm weight), kv_cache.
- DecoderModel: loading of embeddings/output, context size, KV cache, --no-mmap copy,
  set_exact, matrices(), token checks and the per-layer attention dispatch. An architecture
  subclasses it and writes its own __init__ (layers) and forward().
"""
from __future__ import annotations

import math
import mmap

import numpy as np
from numba import njit, prange

from ..errors import ModelError, UsageError
from ..kernels import BLOCK, MATVEC
from ..kernels.floats import VIEW
from ..runtime.blas import blas_set_threads
from ..runtime.linear import activations, embedding_rows, linear, uses_gemm


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
    """Each row of x (n, d) scaled to unit RMS, times w (d,)."""
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
def add_rmsnorm(x, y, w, eps, y_norm):
    """The residual step and the next norm in one call: x += y in place (y first scaled to unit
    RMS times y_norm when y_norm is not empty: Gemma's post-norms), then rmsnorm(x, w, eps).
    The same float operations as rmsnorm and numpy's add, so the same bits."""
    n, d = x.shape
    out = np.empty_like(x)
    for i in range(n):
        r = np.float32(0.0)
        if y_norm.size:
            ss = 0.0
            for j in range(d):
                ss += np.float64(y[i, j]) * y[i, j]
            r = np.float32(1.0 / math.sqrt(ss / d + eps))
        ss = 0.0
        for j in range(d):
            if y_norm.size:
                x[i, j] += y_norm[j] * (y[i, j] * r)
            else:
                x[i, j] += y[i, j]
            ss += np.float64(x[i, j]) * x[i, j]
        r = np.float32(1.0 / math.sqrt(ss / d + eps))
        for j in range(d):
            out[i, j] = w[j] * (x[i, j] * r)
    return out


NO_NORM = np.zeros(0, np.float32)  # add_rmsnorm's y_norm for a plain residual add


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
def store_kv(cache_k, cache_v, k, v, start, n_kv_heads, head_dim):
    """cache (kv_heads, ctx, head_dim) <- k, v (n, kv_heads*head_dim) at positions start.."""
    for i in range(k.shape[0]):
        for g in range(n_kv_heads):
            for j in range(head_dim):
                cache_k[g, start + i, j] = k[i, g * head_dim + j]
                cache_v[g, start + i, j] = v[i, g * head_dim + j]


def window_start(pos: int, window: int) -> int:
    """First key position the query at pos sees (window 0: no sliding window)."""
    return max(0, pos - window + 1) if window > 0 else 0


def _rope_store_attend(q, k, v, cos, sin, cache_k, cache_v, start, n_heads, n_kv_heads, head_dim, scale,
                       window=0):
    """A decode step's attention in one call (fewer Python dispatches per layer): rotate q and k,
    append k, v to the cache at start.., then causal attention for these few queries, one
    (query, head) per parallel task. q: (n, n_heads*head_dim); query i sits at position
    p = start+i and sees positions t <= p, and with window > 0 only those with p - t < window."""
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
        t0 = 0
        if window > 0 and T > window:
            t0 = T - window
        # 1-D views: the inner loops then index plain rows (3x faster than 2-D/3-D indexing
        # here, same operations in the same order, so the same bits)
        keys, values = cache_k[g], cache_v[g]
        qh = q[i, h * head_dim:(h + 1) * head_dim]
        o = out[i, h * head_dim:(h + 1) * head_dim]
        s = np.empty(T - t0, dtype=np.float32)
        m = -np.inf
        for t in range(t0, T):
            kt = keys[t]
            acc = np.float32(0.0)
            for j in range(head_dim):
                acc += qh[j] * kt[j]
            acc *= scale
            s[t - t0] = acc
            if acc > m:
                m = acc
        tot = np.float32(0.0)
        for t in range(T - t0):
            e = np.exp(s[t] - m)
            s[t] = e
            tot += e
        o[:] = 0
        for t in range(t0, T):
            p = s[t - t0]
            vt = values[t]
            for j in range(head_dim):
                o[j] += p * vt[j]
        inv = np.float32(1.0) / tot
        for j in range(head_dim):
            o[j] *= inv
    return out


# Compiled twice: threads pay off only once the context is long enough.
rope_store_attend = njit(cache=True, fastmath=True)(_rope_store_attend)
rope_store_attend_par = njit(cache=True, parallel=True, fastmath=True)(_rope_store_attend)
PARALLEL_ATTENTION_MIN = 256  # positions x queries


def causal_mask(start: int, n: int, window: int = 0) -> np.ndarray:
    """Additive float32 mask (n, T - window_start(start)) for queries at start..start+n-1 over
    the keys attention_blas uses: 0 where visible, -inf where not (future, or out of window)."""
    lo = window_start(start, window)
    t = np.arange(lo, start + n)[None, :]
    p = (start + np.arange(n))[:, None]
    hidden = t > p
    if window > 0:
        hidden |= p - t >= window
    return np.where(hidden, np.float32(-np.inf), np.float32(0)).astype(np.float32)


ATTENTION_QUERY_BLOCK = 64  # queries per step: a block only scores the keys its last query sees


def attention_blas(q, cache_k, cache_v, start, n_heads, n_kv_heads, head_dim, scale, mask=None, window=0):
    """Causal attention for a prompt batch with BLAS matmuls: per block of queries, all heads
    in one batched product (the heads that share a kv head stacked as rows) over the keys the
    block sees (from window_start(start, window), up to its last query). mask:
    causal_mask(start, n, window) (pass it when several layers share it)."""
    n = q.shape[0]
    T = start + n
    lo = window_start(start, window)
    if mask is None:
        mask = causal_mask(start, n, window)
    group = n_heads // n_kv_heads
    qs = q * np.float32(scale)
    out = np.empty((n, n_heads * head_dim), dtype=np.float32)
    for i0 in range(0, n, ATTENTION_QUERY_BLOCK):
        i1 = min(n, i0 + ATTENTION_QUERY_BLOCK)
        b, k0, k1 = i1 - i0, window_start(start + i0, window), start + i1
        # head h = g * group + j reads kv head g: rows (j, i) of one (group * b, head_dim) block per g
        qg = qs[i0:i1].reshape(b, n_kv_heads, group, head_dim).transpose(1, 2, 0, 3).reshape(
            n_kv_heads, group * b, head_dim)
        s = np.matmul(qg, cache_k[:, k0:k1].transpose(0, 2, 1)).reshape(n_kv_heads, group, b, k1 - k0)
        s += mask[i0:i1, k0 - lo:k1 - lo]
        s -= s.max(axis=-1, keepdims=True)
        np.exp(s, out=s)
        total = s.sum(axis=-1, keepdims=True)
        o = np.matmul(s.reshape(n_kv_heads, group * b, k1 - k0), cache_v[:, k0:k1]).reshape(
            n_kv_heads, group, b, head_dim)
        o /= total
        out[i0:i1] = o.transpose(2, 0, 1, 3).reshape(b, n_heads * head_dim)
    return out


# ---------------------------------------------------------------------------------------------
# weights and cache

def lazy_zeros(shape) -> np.ndarray:
    """float32 zeros whose pages become resident only when written (the KV cache: only the
    positions used cost memory). Not np.zeros: numpy asks for transparent huge pages on big
    arrays, and then one write makes a whole 2 MiB region resident."""
    count = int(np.prod(shape))
    buf = mmap.mmap(-1, max(count * 4, 1))  # anonymous, zero-filled, 4 KiB pages
    return np.frombuffer(buf, dtype=np.float32, count=count).reshape(shape)


def kv_cache(n_layers: int, n_kv_heads: int, n_ctx: int, head_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Keys and values, float32 (layers, kv_heads, ctx, head_dim): one head's keys are a
    contiguous (positions, head_dim) block, which suits both BLAS (prompt) and the decode kernel."""
    shape = (n_layers, n_kv_heads, n_ctx, head_dim)
    return lazy_zeros(shape), lazy_zeros(shape)


def _kernel_view(name: str, raw: np.ndarray, cols: int):
    """(weights as the matvec kernel takes them, the kernel) for a one-row product, or
    (None, None) when the type has none (F32) or the rows do not fit cols (linear() reports it).
    The view is read-only, as linear() passes it: one compiled signature per kernel."""
    kernel = MATVEC.get(name)
    if kernel is None or raw.dtype != np.uint8 or raw.ndim != 2 or not raw.flags.c_contiguous:
        return None, None
    bs, ts = BLOCK[name]
    if cols <= 0 or cols % bs or raw.shape[1] != cols // bs * ts:
        return None, None
    w = raw.view(VIEW[name]) if name in VIEW else raw.view()
    w.flags.writeable = False
    return w, kernel


class Matrix:
    """A weight matrix as stored: quant type + uint8 rows view of the mmap, called as y = W x.

    The matvec kernel of its type and the view it takes are found once (and again when raw is
    replaced): a one-row product (decode) calls the kernel directly; anything else (prompt
    batches, exact mode, F32) goes through runtime.linear.linear()."""
    __slots__ = ("name", "qtype", "_raw", "rows", "cols", "exact", "w", "kernel")

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

    @property
    def raw(self) -> np.ndarray:
        return self._raw

    @raw.setter
    def raw(self, value: np.ndarray) -> None:
        global _RAW_GENERATION
        self._raw = value
        self.w, self.kernel = _kernel_view(self.qtype.name.upper(), value, self.cols)
        _RAW_GENERATION += 1  # Stacked plans made before are stale

    def fast(self, x) -> bool:
        """Whether x is a row the kernel takes as it is (float32 (1, cols), C order, writable)."""
        return (self.kernel is not None and not self.exact and type(x) is np.ndarray and x.dtype == np.float32
                and x.shape == (1, self.cols) and x.flags.c_contiguous and x.flags.writeable)

    def __call__(self, x):
        if self.fast(x):
            y = np.empty((1, self.rows), np.float32)
            self.kernel(self.w, x[0], y[0])
            return y
        return linear(self.qtype, self.raw, self.cols, x, exact=self.exact)


_RAW_GENERATION = 0


def _root(a: np.ndarray):
    """The object that owns a's memory: an ndarray, or the buffer (mmap) under numpy's views."""
    while isinstance(a.base, np.ndarray):
        a = a.base
    if a.base is None:
        return a
    return a.base.obj if isinstance(a.base, memoryview) else a.base


class Stacked:
    """Matrices that multiply the same input (q, k, v; gate, up), called as one: returns the
    tuple of their products. For one row, members that lie back to back in memory (the .ggq
    writer stores each layer's tensors in order, and --no-mmap copies keep that) with the same
    type and columns form one zero-copy view, multiplied in one kernel call: one activation
    quantization and one parallel region instead of one per matrix, the same numbers (each row
    of a matvec depends on its own weights only). Other inputs: each member on its own."""
    __slots__ = ("mats", "_runs", "_generation")

    def __init__(self, *mats: Matrix):
        self.mats = mats
        self._generation = -1

    def _plan(self):
        """[(kernel, w, [(member index, first row, last row)...])], rebuilt if a raw changed."""
        runs, cur = [], None
        for i, m in enumerate(self.mats):
            if (cur is not None and m.kernel is not None and m.kernel is cur[0] and m.qtype.name == cur[1].qtype.name
                    and m.cols == cur[1].cols and m.raw.shape[1] == cur[1].raw.shape[1]
                    and _root(m.raw) is _root(cur[1].raw) and m.raw.ctypes.data == cur[3]):
                cur[2].append(i)
                cur[3] += m.raw.nbytes
            else:
                cur = [m.kernel, m, [i], m.raw.ctypes.data + m.raw.nbytes]
                runs.append(cur)
        self._runs = []
        for kernel, first, members, end in runs:
            if kernel is None:
                self._runs.append((None, None, [(members[0], 0, first.rows)]))
                continue
            rows = sum(self.mats[i].rows for i in members)
            w = first.w
            if len(members) > 1:
                root = _root(first.raw)
                base = root if isinstance(root, np.ndarray) else np.frombuffer(root, np.uint8)
                off = first.raw.ctypes.data - base.ctypes.data
                raw = base.reshape(-1)[off:off + (end - first.raw.ctypes.data)].reshape(rows, -1)
                w, _ = _kernel_view(first.qtype.name.upper(), raw, first.cols)
            spans, r = [], 0
            for i in members:
                spans.append((i, r, r + self.mats[i].rows))
                r += self.mats[i].rows
            self._runs.append((kernel, w, spans))
        self._generation = _RAW_GENERATION

    def __call__(self, x):
        if not self.mats[0].fast(x):  # (set_exact sets every matrix alike)
            return self._batch(x)
        if self._generation != _RAW_GENERATION:
            self._plan()
        out = [None] * len(self.mats)
        for kernel, w, spans in self._runs:
            if kernel is None or w is None:
                for i, _, _ in spans:
                    out[i] = self.mats[i](x)
                continue
            y = np.empty((1, spans[-1][2]), np.float32)
            kernel(w, x[0], y[0])
            for i, r0, r1 in spans:
                out[i] = y[:, r0:r1]
        return tuple(out)

    def _batch(self, x):
        """Prompt batches: where linear() takes the int8 GEMM, x is quantized once for all
        members and each run of back-to-back members is one GEMM call over its stacked rows."""
        first = self.mats[0]
        if (first.exact or type(x) is not np.ndarray or x.ndim != 2 or x.shape[1] != first.cols
                or not any(uses_gemm(m.qtype, x.shape[0]) for m in self.mats)):
            return tuple(m(x) for m in self.mats)
        if self._generation != _RAW_GENERATION:
            self._plan()
        act = activations(x)
        out = [None] * len(self.mats)
        for kernel, w, spans in self._runs:
            m = self.mats[spans[0][0]]
            if kernel is None or w is None or w.dtype != np.uint8 or not uses_gemm(m.qtype, x.shape[0]):
                for i, _, _ in spans:
                    out[i] = self.mats[i](x)
                continue
            y = linear(m.qtype, w, m.cols, x, act=act)
            for i, r0, r1 in spans:
                out[i] = y[:, r0:r1]
        return tuple(out)


def vector(reader, name, n, source):
    """A 1-D tensor (norm weight) of n elements as float32."""
    info = reader.tensors.get(name)
    if info is None:
        raise ModelError(f"{source}: missing tensor {name}")
    if int(np.prod(info.shape)) != n:
        raise ModelError(f"{source}: tensor {name} has shape {tuple(info.shape)}, expected ({n},)")
    return np.ascontiguousarray(reader.dequantize(name).reshape(n), dtype=np.float32)


_vector = vector  # the old private name


def metadata_getter(md: dict, source: str):
    """need(key): md[key], or a ModelError naming the file and the missing key."""
    def need(key):
        if key not in md:
            raise ModelError(f"{source}: missing metadata key {key}")
        return md[key]
    return need


def check_heads(source: str, n_heads: int, n_kv_heads: int, head_dim: int) -> None:
    if n_heads <= 0 or n_kv_heads <= 0 or n_heads % n_kv_heads:
        raise ModelError(f"{source}: head_count {n_heads} is not a multiple of head_count_kv {n_kv_heads}")
    if head_dim <= 0 or head_dim % 2:
        raise ModelError(f"{source}: head dimension {head_dim} is not a positive even number")


# ---------------------------------------------------------------------------------------------
# the model skeleton

class DecoderModel:
    """Shared parts of a decoder-only forward pass over a GGQReader's tensors.

    A subclass sets `config` (with n_layers, dim, n_kv_heads, head_dim, context_length,
    vocab_size), calls _load_embeddings, builds self.layers (objects whose MATRIX_FIELDS
    attributes are Matrix), then _finish_init; and implements forward()."""

    # Prompt batches at least this long use BLAS attention; shorter ones the Numba kernel.
    BLAS_ATTENTION_MIN = 16
    MATRIX_FIELDS: tuple = ()  # per-layer Matrix attribute names

    def _load_embeddings(self, reader, source: str) -> None:
        """token_embd.weight, output_norm.weight and output.weight (tied to the embedding when
        absent, as llama.cpp also assumes); sets config.vocab_size from the embedding rows."""
        cfg, d = self.config, self.config.dim
        emb = reader.tensors.get("token_embd.weight")
        if emb is None:
            raise ModelError(f"{source}: missing tensor token_embd.weight")
        vocab = int(emb.shape[0])
        if cfg.vocab_size and cfg.vocab_size != vocab:
            raise ModelError(f"{source}: token_embd.weight has {vocab} rows but vocab_size is {cfg.vocab_size}")
        cfg.vocab_size = vocab
        self.embed = Matrix(reader, "token_embd.weight", (vocab, d), source)
        self.output_norm = vector(reader, "output_norm.weight", d, source)
        if "output.weight" in reader.tensors:
            self.output = Matrix(reader, "output.weight", (vocab, d), source)
        else:
            self.output = self.embed

    def _finish_init(self, n_ctx, use_mmap: bool) -> None:
        """--no-mmap copy, context size and the KV cache."""
        cfg = self.config
        if not use_mmap:
            self._copy_weights_to_memory()
        if n_ctx is None:
            n_ctx = min(cfg.context_length, 4096)
        n_ctx = int(n_ctx)
        if n_ctx < 1:
            raise UsageError(f"context size must be at least 1 (got {n_ctx})")
        self.n_ctx = n_ctx
        self.cache_k, self.cache_v = kv_cache(cfg.n_layers, cfg.n_kv_heads, n_ctx, cfg.head_dim)

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
        """exact=True: float activations in every matmul (by default the quantized types' matmuls,
        prompt batches and decode steps alike, quantize the activations to 8 bits per 32, like
        llama.cpp)."""
        for m in self.matrices():
            m.exact = bool(exact)

    def matrices(self):
        yield self.embed
        if self.output is not self.embed:
            yield self.output
        for L in self.layers:
            for f in self.MATRIX_FIELDS:
                yield getattr(L, f)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def _check_tokens(self, tokens, start_pos: int) -> np.ndarray:
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        n = tokens.shape[0]
        if n == 0:
            raise UsageError("no tokens to evaluate")
        if start_pos < 0 or start_pos + n > self.n_ctx:
            raise UsageError(f"positions {start_pos}..{start_pos + n - 1} exceed the context size {self.n_ctx}")
        if tokens.min() < 0 or tokens.max() >= self.config.vocab_size:
            raise UsageError(f"token id out of range 0..{self.config.vocab_size - 1}")
        return tokens

    def _embed(self, tokens) -> np.ndarray:
        e = self.embed
        return np.ascontiguousarray(embedding_rows(e.qtype, e.raw, e.cols, tokens), dtype=np.float32)

    def _attend(self, li, q, k, v, cos, sin, start, scale, window, mask, blas_n):
        """Layer li's attention for queries q (n, heads*head_dim) at positions start..: rope on
        q and k, k and v into the cache, softmax(q K^T * scale) V. mask: causal_mask(start, n,
        window) for a BLAS-sized batch (n >= BLAS_ATTENTION_MIN), else None."""
        cfg = self.config
        nh, nkv, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        ck, cv = self.cache_k[li], self.cache_v[li]
        n = q.shape[0]
        if mask is not None:
            rope_inplace(q, cos, sin, nh, hd)
            rope_inplace(k, cos, sin, nkv, hd)
            store_kv(ck, cv, k, v, start, nkv, hd)
            # small per-head matmuls: one BLAS thread (see runtime.generate, BLAS threads)
            blas_set_threads(1)
            a = attention_blas(q, ck, cv, start, nh, nkv, hd, scale, mask, window)
            blas_set_threads(blas_n)
            return a
        keys = start + n if window <= 0 else min(start + n, window)
        if keys * n >= PARALLEL_ATTENTION_MIN:
            return rope_store_attend_par(q, k, v, cos, sin, ck, cv, start, nh, nkv, hd, scale, window)
        return rope_store_attend(q, k, v, cos, sin, ck, cv, start, nh, nkv, hd, scale, window)
