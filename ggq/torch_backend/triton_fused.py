"""Triton kernels that fuse a layer's small steps on CUDA: one launch where torch ops take many.

A one-token step on a small model is bound by launches, not arithmetic: torch's RMS norm is
five kernels, the rotary embedding a dozen, attention through scaled_dot_product_attention
another dozen. Each function here is one kernel, computing in float32 what the torch code of
ggq.torch_backend.ops computes (the tests hold one to the other, on CUDA and under Triton's
interpreter):

- rmsnorm(x, w, eps): rows of x normed and scaled by w;
- add_rmsnorm(x, y, w, eps, y_norm): x += y (y first normed by y_norm), returns rmsnorm(x, w);
- act_mul(g, u, gelu): silu(g) * u, or gelu_tanh(g) * u;
- rope_store(q, k, v, pos, cos, sin, kcache, vcache): one-token rotary embedding of q and k
  (split-half pairs) at the position held by the device tensor pos, k and v written into the
  cache at pos; returns the rotated q;
- attend_one(q, kcache, vcache, pos, scale, window, n_heads): the query's attention over cache
  positions up to pos (inside the sliding window when window > 0), online softmax.

The position is read on the device, so a CUDA graph of these calls serves every step.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


def _pow2(n: int) -> int:
    return triton.next_power_of_2(int(n))


def attention_fits(head_dim: int) -> bool:
    """rope_store and attend_one take a head as one power-of-two vector."""
    return head_dim >= 16 and head_dim & (head_dim - 1) == 0


@triton.jit
def _rmsnorm_kernel(x, w, out, cols, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, BLOCK)
    m = c < cols
    v = tl.load(x + row * cols + c, mask=m, other=0.0)
    r = 1.0 / tl.sqrt(tl.sum(v * v, axis=0) / cols + eps)
    tl.store(out + row * cols + c, tl.load(w + c, mask=m, other=0.0) * (v * r), mask=m)


def rmsnorm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """x (n, cols) float32 contiguous, w (cols,): w * x / rms(x) per row."""
    out = torch.empty_like(x)
    rows, cols = x.shape
    _rmsnorm_kernel[(rows,)](x, w, out, cols, float(eps), BLOCK=_pow2(cols))
    return out


@triton.jit
def _add_rmsnorm_kernel(x, y, w, yw, out, cols, eps, BLOCK: tl.constexpr, Y_NORM: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, BLOCK)
    m = c < cols
    yv = tl.load(y + row * cols + c, mask=m, other=0.0)
    if Y_NORM:
        ry = 1.0 / tl.sqrt(tl.sum(yv * yv, axis=0) / cols + eps)
        yv = tl.load(yw + c, mask=m, other=0.0) * (yv * ry)
    xv = tl.load(x + row * cols + c, mask=m, other=0.0) + yv
    tl.store(x + row * cols + c, xv, mask=m)
    r = 1.0 / tl.sqrt(tl.sum(xv * xv, axis=0) / cols + eps)
    tl.store(out + row * cols + c, tl.load(w + c, mask=m, other=0.0) * (xv * r), mask=m)


def add_rmsnorm(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, eps: float, y_norm=None) -> torch.Tensor:
    """x += y (y first normed with y_norm where given), in place; returns rmsnorm(x, w)."""
    out = torch.empty_like(x)
    rows, cols = x.shape
    y = y.contiguous()
    _add_rmsnorm_kernel[(rows,)](x, y, w, w if y_norm is None else y_norm, out, cols, float(eps),
                                 BLOCK=_pow2(cols), Y_NORM=y_norm is not None)
    return out


@triton.jit
def _act_mul_kernel(g, u, out, n, BLOCK: tl.constexpr, GELU: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    gv = tl.load(g + i, mask=m, other=0.0)
    uv = tl.load(u + i, mask=m, other=0.0)
    if GELU:  # 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3))), tanh written through exp
        t = 0.7978845608028654 * (gv + 0.044715 * gv * gv * gv)
        e = tl.exp(-2.0 * tl.abs(t))
        th = (1.0 - e) / (1.0 + e)
        th = tl.where(t < 0, -th, th)
        a = 0.5 * gv * (1.0 + th)
    else:
        a = gv / (1.0 + tl.exp(-gv))
    tl.store(out + i, a * uv, mask=m)


def act_mul(g: torch.Tensor, u: torch.Tensor, gelu: bool) -> torch.Tensor:
    """silu(g) * u, or gelu_tanh(g) * u: g and u (n, cols) float32, possibly column slices of a
    joint product (made contiguous first)."""
    g, u = g.contiguous(), u.contiguous()
    out = torch.empty_like(g)
    n = g.numel()
    block = 1024
    _act_mul_kernel[(triton.cdiv(n, block),)](g, u, out, n, BLOCK=block, GELU=bool(gelu))
    return out


@triton.jit
def _rope_store_kernel(q, k, v, pos, cos, sin, kc, vc, qout, n_heads, n_ctx, HD: tl.constexpr,
                       HALF: tl.constexpr):
    """Program i < n_heads: query head i rotated into qout; otherwise kv head i - n_heads rotated
    (k) and copied (v) into the caches (n_kv, n_ctx, HD) at pos."""
    i = tl.program_id(0)
    p = tl.load(pos)
    j = tl.arange(0, HALF)
    c = tl.load(cos + p * HALF + j)
    s = tl.load(sin + p * HALF + j)
    if i < n_heads:
        a = tl.load(q + i * HD + j)
        b = tl.load(q + i * HD + HALF + j)
        tl.store(qout + i * HD + j, a * c - b * s)
        tl.store(qout + i * HD + HALF + j, b * c + a * s)
    else:
        g = i - n_heads
        a = tl.load(k + g * HD + j)
        b = tl.load(k + g * HD + HALF + j)
        base = (g.to(tl.int64) * n_ctx + p) * HD
        tl.store(kc + base + j, a * c - b * s)
        tl.store(kc + base + HALF + j, b * c + a * s)
        tl.store(vc + base + j, tl.load(v + g * HD + j))
        tl.store(vc + base + HALF + j, tl.load(v + g * HD + HALF + j))


def rope_store(q, k, v, pos, cos, sin, kcache, vcache, n_heads: int, n_kv_heads: int, head_dim: int):
    """q (1, n_heads*hd), k and v (1, n_kv*hd); pos: int64 (1,) device tensor; cos, sin
    (positions, hd/2) float32: returns the rotated q (1, n_heads*hd); k (rotated) and v go into
    the caches (n_kv, n_ctx, hd) at pos."""
    qout = torch.empty_like(q)
    _rope_store_kernel[(n_heads + n_kv_heads,)](q.contiguous(), k.contiguous(), v.contiguous(), pos, cos, sin,
                                                kcache, vcache, qout, n_heads, kcache.shape[1],
                                                HD=head_dim, HALF=head_dim // 2)
    return qout


@triton.jit
def _attend_part(q, kc, vc, p, h, lo, hi, n_ctx, group, scale, HD: tl.constexpr, BLOCK: tl.constexpr):
    """Online softmax of query head h over keys lo..hi-1 of its kv head: (max, sum, weighted V)."""
    g = (h // group).to(tl.int64)
    d = tl.arange(0, HD)
    qv = tl.load(q + h * HD + d) * scale
    m_i = tl.zeros((1,), dtype=tl.float32) - float("inf")
    l_i = tl.zeros((1,), dtype=tl.float32)
    acc = tl.zeros((HD,), dtype=tl.float32)
    t0 = tl.arange(0, BLOCK)
    for start in range(lo, hi, BLOCK):
        t = start + t0
        seen = t < hi
        off = (g * n_ctx + t)[:, None] * HD + d[None, :]
        kb = tl.load(kc + off, mask=seen[:, None], other=0.0)
        sc = tl.where(seen, tl.sum(kb * qv[None, :], axis=1), -float("inf"))
        m_new = tl.maximum(m_i, tl.max(sc, axis=0))
        alpha = tl.exp(m_i - m_new)
        pr = tl.exp(sc - m_new)
        vb = tl.load(vc + off, mask=seen[:, None], other=0.0)
        acc = acc * alpha + tl.sum(pr[:, None] * vb, axis=0)
        l_i = l_i * alpha + tl.sum(pr, axis=0)
        m_i = m_new
    return m_i, l_i, acc


@triton.jit
def _first_key(p, window):
    """The oldest cache position the query at p sees."""
    return tl.where(window > 0, tl.maximum(p - window + 1, 0), 0)


@triton.jit
def _attend_one_kernel(q, kc, vc, pos, out, n_ctx, group, scale, window, HD: tl.constexpr, BLOCK: tl.constexpr):
    """Program h: query head h against kv head h // group, every key it sees."""
    h = tl.program_id(0)
    p = tl.load(pos)
    m_i, l_i, acc = _attend_part(q, kc, vc, p, h, _first_key(p, window), p + 1, n_ctx, group, scale, HD, BLOCK)
    tl.store(out + h * HD + tl.arange(0, HD), acc / l_i)


@triton.jit
def _attend_split_kernel(q, kc, vc, pos, part_m, part_l, part_acc, n_ctx, group, scale, window,
                         HD: tl.constexpr, BLOCK: tl.constexpr, SPLITS: tl.constexpr):
    """Program (h, s): query head h over the s-th of SPLITS equal runs of the keys it sees
    (long contexts: the runs go in parallel, _attend_combine_kernel joins them)."""
    h = tl.program_id(0)
    s = tl.program_id(1)
    p = tl.load(pos)
    first = _first_key(p, window)
    per = ((p + 1 - first + SPLITS - 1) // SPLITS + BLOCK - 1) // BLOCK * BLOCK
    lo = first + s * per
    hi = tl.minimum(lo + per, p + 1)
    m_i, l_i, acc = _attend_part(q, kc, vc, p, h, lo, hi, n_ctx, group, scale, HD, BLOCK)
    at = h * SPLITS + s
    one = tl.arange(0, 1)
    tl.store(part_m + at + one, m_i)
    tl.store(part_l + at + one, l_i)
    tl.store(part_acc + at * HD + tl.arange(0, HD), acc)


@triton.jit
def _attend_combine_kernel(part_m, part_l, part_acc, out, HD: tl.constexpr, SPLITS: tl.constexpr):
    h = tl.program_id(0)
    s = tl.arange(0, SPLITS)
    d = tl.arange(0, HD)
    m = tl.load(part_m + h * SPLITS + s)
    wgt = tl.exp(m - tl.max(m, axis=0))  # empty runs (max -inf) weigh 0
    l_sum = tl.sum(wgt * tl.load(part_l + h * SPLITS + s), axis=0)
    acc = tl.sum(wgt[:, None] * tl.load(part_acc + (h * SPLITS + s)[:, None] * HD + d[None, :]), axis=0)
    tl.store(out + h * HD + d, acc / l_sum)


def attention_splits(n_ctx: int) -> int:
    """Parallel runs of keys per head for a cache of n_ctx positions: one up to 256, then one
    per 128 positions up to 32 (a power of two)."""
    if n_ctx <= 256:
        return 1
    return min(32, triton.next_power_of_2(n_ctx // 128))


def attend_one(q, kcache, vcache, pos, scale: float, window: int, n_heads: int) -> torch.Tensor:
    """q (1, n_heads*hd) rotated; caches (n_kv, n_ctx, hd) with this step's key at pos: the
    attention output (1, n_heads*hd)."""
    n_kv, n_ctx, hd = kcache.shape
    out = torch.empty_like(q)
    group, splits = n_heads // n_kv, attention_splits(n_ctx if window <= 0 else min(n_ctx, window))
    if splits == 1:
        _attend_one_kernel[(n_heads,)](q, kcache, vcache, pos, out, n_ctx, group, float(scale), int(window),
                                       HD=hd, BLOCK=32)
        return out
    part_m = torch.empty((n_heads, splits), dtype=torch.float32, device=q.device)
    part_l = torch.empty_like(part_m)
    part_acc = torch.empty((n_heads, splits, hd), dtype=torch.float32, device=q.device)
    _attend_split_kernel[(n_heads, splits)](q, kcache, vcache, pos, part_m, part_l, part_acc, n_ctx, group,
                                            float(scale), int(window), HD=hd, BLOCK=32, SPLITS=splits)
    _attend_combine_kernel[(n_heads,)](part_m, part_l, part_acc, out, HD=hd, SPLITS=splits)
    return out
