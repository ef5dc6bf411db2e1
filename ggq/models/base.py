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
- CpuOps (the object CPU): the calls a forward pass makes on a layer's activations (norms,
  attention, gated activations, moving tensors in), on numpy arrays with the kernels above. A
  backend for another device (ggq.torch_backend.TorchOps) answers the same calls on its own
  tensors, so each architecture's forward() is written once, in terms of `L.ops`.
- DecoderModel: loading of embeddings/output, context size, per-layer KV caches, placement of
  layers on a backend (-ngl), --no-mmap copy, set_exact, matrices(), token checks. An
  architecture subclasses it and writes its own __init__ (layers) and forward().
"""
from __future__ import annotations

import math
import mmap

import numpy as np
from numba import njit, prange

from ..errors import ModelError, UsageError
from ..kernels import BLOCK, MATVEC
from ..kernels.floats import VIEW
from ..runtime.blas import blas_get_threads, blas_set_threads
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


# Gated activations of the feed-forward blocks (llama: SwiGLU, Gemma: GeGLU with tanh GELU).
# Batches go through numpy's vectorized ufuncs (the Numba loops call the scalar libm exp/tanh
# per element: 3x / 10x slower there); one row (decode) through the loop, which costs less
# than the ufunc calls.

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
    """silu(g) * u = g / (1 + e**-g) * u, float32."""
    if g.shape[0] == 1:
        return _silu_mul_loop(g, u)
    t = np.negative(g, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # e**-g = inf for g < -88: the product is -0
        np.exp(t, out=t)
        t += np.float32(1.0)
        np.divide(g, t, out=t)
        t *= u
    return t


@njit(cache=True)
def _gelu_tanh_mul_loop(g, u):
    n, d = g.shape
    out = np.empty_like(g)
    c = np.float32(math.sqrt(2.0 / math.pi))
    for i in range(n):
        for j in range(d):
            a = g[i, j]
            t = np.tanh(c * (a + np.float32(0.044715) * a * a * a))
            out[i, j] = np.float32(0.5) * a * (np.float32(1.0) + t) * u[i, j]
    return out


def gelu_tanh_mul(g, u):
    """gelu(g) * u with GELU's tanh approximation, 0.5 g (1 + tanh(c (g + 0.044715 g**3))) u,
    float32."""
    if g.shape[0] == 1:
        return _gelu_tanh_mul_loop(g, u)
    with np.errstate(over="ignore", invalid="ignore"):
        t = np.multiply(g, g, dtype=np.float32)
        t *= np.float32(0.044715)
        t *= g
        t += g
        t *= np.float32(math.sqrt(2.0 / math.pi))
        np.tanh(t, out=t)
        t += np.float32(1.0)
        t *= g
        t *= np.float32(0.5)
        t *= u
    return t


# inline="always" (Numba IR, before LLVM) for this and store_kv: rope_store_attend is built with
# fastmath, and a callee linked in as machine code (loaded from the disk cache) escapes its flags
# while one compiled in the same process takes them: the same step gave other bits depending on
# which command filled the cache first. Inlined, every build compiles the same code.
@njit(cache=True, inline="always")
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


@njit(cache=True, inline="always")
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
# what a forward pass calls per layer, on the CPU

class Rope:
    """Rotary cos/sin tables (ctx, head_dim/2) of one frequency set; a backend slices (and
    moves) them once per forward call."""
    __slots__ = ("cos", "sin")

    def __init__(self, n_ctx: int, inv_freq: np.ndarray):
        self.cos, self.sin = rope_tables(n_ctx, inv_freq)


class Step:
    """One forward call: its first position and token count, and what the backends derive from
    them once for all layers (rope slices, attention masks), in memo."""
    __slots__ = ("start", "n", "memo")

    def __init__(self, start: int, n: int):
        self.start, self.n, self.memo = int(start), int(n), {}


class KVCache:
    """One layer's keys and values (kv_heads, ctx, head_dim) on its backend, with the head counts."""
    __slots__ = ("k", "v", "n_heads", "n_kv_heads", "head_dim")

    def __init__(self, k, v, n_heads: int, n_kv_heads: int, head_dim: int):
        self.k, self.v = k, v
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim


class CpuOps:
    """The Numba/numpy backend: activations are float32 numpy arrays (n, features)."""
    name = "cpu"
    is_cpu = True
    # Prompt batches at least this long use BLAS attention; shorter ones the Numba kernel.
    BLAS_ATTENTION_MIN = 16

    def adopt(self, m):                 # weights stay where the file maps them
        return m

    def stacked(self, *mats):
        return Stacked(*mats)

    def vector(self, a):
        return np.ascontiguousarray(a, dtype=np.float32)

    def take(self, x):
        """x as this backend's array (from another backend: copied to host memory)."""
        if type(x) is np.ndarray:
            return x
        return np.ascontiguousarray(x.detach().to("cpu").float().numpy())

    def to_numpy(self, x) -> np.ndarray:
        return np.asarray(x, dtype=np.float32)

    @staticmethod
    def warm(gated: str) -> None:
        """Load (from the disk cache, or compile) the small kernels a forward pass calls here, on
        tiny zero arrays of the types it gives them (float32 C rows, ints, float eps, float32
        scale): the norms, the gated activation `gated` (the model's GATED_ACTIVATION), the
        decode step's attention. `ggq run` calls it with the weight kernels so that LLVM's pages
        their loading touches are dropped with the others (runtime.resident) and the first
        decode step loads nothing."""
        d = 8
        x, y, g, u = (np.zeros((1, d), np.float32) for _ in range(4))
        w = np.ones(d, np.float32)
        rmsnorm(x, w, 1e-6)
        add_rmsnorm(x, y, w, 1e-6, NO_NORM)
        getattr(CpuOps, gated)(g, u)
        q, k, v = (np.zeros((1, 2), np.float32) for _ in range(3))  # one head of width 2, 4 positions
        cos, sin = np.ones((1, 1), np.float32), np.zeros((1, 1), np.float32)
        for attend in (rope_store_attend, rope_store_attend_par):
            attend(q, k, v, cos, sin, np.zeros((1, 4, 2), np.float32), np.zeros((1, 4, 2), np.float32),
                   0, 1, 1, 2, np.float32(1.0), 0)

    @staticmethod
    def rmsnorm(x, w, eps):
        return rmsnorm(x, w, eps)

    @staticmethod
    def add_rmsnorm(x, y, w, eps, y_norm=None):
        """x += y (y first normed with y_norm, Gemma's post-norms); returns rmsnorm(x, w)."""
        return add_rmsnorm(x, y, w, eps, NO_NORM if y_norm is None else y_norm)

    @staticmethod
    def head_rmsnorm(y, w, eps, head_dim):
        """rmsnorm of each head_dim slice of y (n, heads*head_dim) with the shared weight w."""
        n = y.shape[0]
        return rmsnorm(np.ascontiguousarray(y).reshape(-1, head_dim), w, eps).reshape(n, -1)

    @staticmethod
    def silu_mul(g, u):
        return silu_mul(g, u)

    @staticmethod
    def gelu_tanh_mul(g, u):
        return gelu_tanh_mul(g, u)

    @staticmethod
    def run_layers(layer, layers, x, h, step: Step):
        """h after layer(L, x, h, step) for each L in turn (x, the residual, updated in place)."""
        for L in layers:
            h = layer(L, x, h, step)
        return h

    def kv_cache(self, n_layers: int, n_heads: int, n_kv_heads: int, n_ctx: int, head_dim: int) -> list:
        """Per-layer caches, views of one lazily zeroed block (only used positions are resident)."""
        ck, cv = kv_cache(n_layers, n_kv_heads, n_ctx, head_dim)
        return [KVCache(ck[i], cv[i], n_heads, n_kv_heads, head_dim) for i in range(n_layers)]

    def _rope(self, rope: Rope, step: Step):
        key = ("rope", id(rope))
        cs = step.memo.get(key)
        if cs is None:
            at = slice(step.start, step.start + step.n)
            cs = step.memo[key] = (rope.cos[at], rope.sin[at])
        return cs

    def attend(self, kv: KVCache, q, k, v, step: Step, rope: Rope, scale, window: int = 0):
        """Attention of queries q (n, heads*head_dim) at positions step.start..: rope on q and
        k, k and v into the cache, softmax(q K^T * scale) V over the keys each query sees
        (causal; with window > 0 only the last `window` positions)."""
        nh, nkv, hd = kv.n_heads, kv.n_kv_heads, kv.head_dim
        start, n = step.start, step.n
        cos, sin = self._rope(rope, step)
        if n >= self.BLAS_ATTENTION_MIN:
            key = ("mask", window)
            mask = step.memo.get(key)
            if mask is None:
                mask = step.memo[key] = causal_mask(start, n, window)
            blas_n = step.memo.get("blas")
            if blas_n is None:
                blas_n = step.memo["blas"] = blas_get_threads() or 1
            rope_inplace(q, cos, sin, nh, hd)
            rope_inplace(k, cos, sin, nkv, hd)
            store_kv(kv.k, kv.v, k, v, start, nkv, hd)
            # small per-head matmuls: one BLAS thread (see runtime.generate, BLAS threads)
            blas_set_threads(1)
            a = attention_blas(q, kv.k, kv.v, start, nh, nkv, hd, scale, mask, window)
            blas_set_threads(blas_n)
            return a
        if n > 1:  # C-order views, as a decode step's: one compiled signature serves both
            q, k, v = np.ascontiguousarray(q), np.ascontiguousarray(k), np.ascontiguousarray(v)
        keys = start + n if window <= 0 else min(start + n, window)
        attend = rope_store_attend_par if keys * n >= PARALLEL_ATTENTION_MIN else rope_store_attend
        return attend(q, k, v, cos, sin, kv.k, kv.v, start, nh, nkv, hd, scale, window)


CPU = CpuOps()


# ---------------------------------------------------------------------------------------------
# the model skeleton

class DecoderModel:
    """Shared parts of a decoder-only forward pass over a GGQReader's tensors.

    A subclass sets `config` (with n_layers, dim, n_heads, n_kv_heads, head_dim,
    context_length, vocab_size), calls _load_embeddings, builds self.layers (objects with the
    Matrix attributes MATRIX_FIELDS, the 1-D float32 VECTOR_FIELDS, and slots for `ops`, `kv`,
    `next_norm` and the STACKS), then _finish_init; and implements forward() (embedding, then
    _run_layers, then _logits) and layer(L, x, h, step), one layer in terms of its backend
    L.ops (CpuOps, or TorchOps for offloaded layers)."""

    MATRIX_FIELDS: tuple = ()  # per-layer Matrix attribute names
    VECTOR_FIELDS: tuple = ()  # per-layer norm weights (next_norm is added to them)
    STACKS: dict = {}          # stack name -> the matrices that read the same input (q, k, v)
    GATED_ACTIVATION: str      # the backend method layer() applies to (gate, up): "silu_mul", ...

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

    def _finish_init(self, n_ctx, use_mmap: bool, offload=None) -> None:
        """Context size, layer placement (offload: the last offload.n_layers layers on
        offload.ops, as llama.cpp's -ngl counts; more than the layer count moves the output
        matrix too), --no-mmap copy of the CPU's weights, KV caches, and each layer's stacks."""
        cfg = self.config
        if n_ctx is None:
            n_ctx = min(cfg.context_length, 4096)
        n_ctx = int(n_ctx)
        if n_ctx < 1:
            raise UsageError(f"context size must be at least 1 (got {n_ctx})")
        self.n_ctx = n_ctx
        # each layer ends with the next layer's input norm (the last one with the output norm)
        for L, nxt in zip(self.layers, [L.attn_norm for L in self.layers[1:]] + [self.output_norm]):
            L.next_norm = nxt
        n_off = 0 if offload is None else min(int(offload.n_layers), cfg.n_layers)
        cut = cfg.n_layers - n_off
        for i, L in enumerate(self.layers):
            L.ops = CPU if i < cut else offload.ops
        self.head_ops, self.head = CPU, self.output
        if offload is not None and offload.n_layers > cfg.n_layers:
            self.head_ops = offload.ops
        if not use_mmap:
            self._copy_weights_to_memory()
        for ops in dict.fromkeys([L.ops for L in self.layers] + [self.head_ops]):
            idx = [i for i, L in enumerate(self.layers) if L.ops is ops]
            if idx:
                caches = ops.kv_cache(len(idx), cfg.n_heads, cfg.n_kv_heads, n_ctx, cfg.head_dim)
                for i, kv in zip(idx, caches):
                    self.layers[i].kv = kv
        for L in self.layers:
            if L.ops is not CPU:
                for f in self.MATRIX_FIELDS:
                    setattr(L, f, L.ops.adopt(getattr(L, f)))
                for f in self.VECTOR_FIELDS + ("next_norm",):
                    setattr(L, f, L.ops.vector(getattr(L, f)))
            for name, members in self.STACKS.items():
                setattr(L, name, L.ops.stacked(*(getattr(L, f) for f in members)))
        if self.head_ops is not CPU:
            self.head = self.head_ops.adopt(self.output)
        self.devices = sorted({L.ops.name for L in self.layers} | {self.head_ops.name})
        # runs of consecutive layers on one backend: the hidden state moves once between runs
        self.segments = []
        for L in self.layers:
            if self.segments and self.segments[-1][0] is L.ops:
                self.segments[-1][1].append(L)
            else:
                self.segments.append((L.ops, [L]))

    def _run_layers(self, x, h, step: Step):
        """Every layer, each run of them by its backend (which may replay a captured graph of
        the run for one-token steps); x and h move where the backend changes. Returns h."""
        prev = self.segments[0][0]
        for ops, layers in self.segments:
            if ops is not prev:
                x, h, prev = ops.take(x), ops.take(h), ops
            h = ops.run_layers(self.layer, layers, x, h, step)
        return h

    def _copy_weights_to_memory(self) -> None:
        """--no-mmap: copy every matrix the CPU multiplies into one anonymous buffer. numpy backs a
        large buffer with transparent huge pages, which spares the TLB misses of streaming 4 KiB
        file pages (about 10% faster decode here), at the price of reading the file up front."""
        mats = [self.embed] + ([self.output] if self.output is not self.embed and self.head_ops is CPU else [])
        mats += [getattr(L, f) for L in self.layers if L.ops is CPU for f in self.MATRIX_FIELDS]
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
        """Every weight matrix: the embedding, the output matrix (where it is not the embedding),
        each layer's (on whatever backend holds it)."""
        yield self.embed
        if self.head is not self.embed:
            yield self.head
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

    def _logits(self, h, all_logits: bool) -> np.ndarray:
        """float32 numpy logits of the final hidden states h (the output norm already applied):
        every row, or only the last one."""
        if not all_logits:
            h = h[-1:]
        h = self.head_ops.take(h)
        return self.head_ops.to_numpy(self.head(h))
