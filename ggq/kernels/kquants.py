"""Kernels for the 256-element super-block types Q2_K, Q3_K, Q4_K, Q5_K, Q6_K (GGML layouts).

Each super-block of a row is decoded into an int16 scratch with its integer sub-block scale
folded in (|q * scale| <= 4096, so int16 x int16 products stay exact in int32), plus integer
sub-block mins per 16 elements. Then:
    y += d * sum_c xd[c] * dot32(w', xq)  -  dmin * sum_s min[s] * xsum16[s]
with xq/xd the int8-quantized activations (32 per scale) and xsum16 exact float sums.
dequantize: the same decode, then d * w' - dmin * min (exact up to float rounding order).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .common import QK, dot_k, f16, quantize_act

QKK = 256
G = 4          # rows per matvec iteration


@njit(inline="always")
def _scale_min_k4(s, o, j):
    # get_scale_min_k4 of ggml-quants.c: 6-bit scale and min of sub-block j from 12 bytes
    if j < 4:
        return np.int32(s[o + j] & 63), np.int32(s[o + j + 4] & 63)
    sc = (s[o + j + 4] & 15) | ((s[o + j - 4] >> 6) << 4)
    mn = (s[o + j + 4] >> 4) | ((s[o + j] >> 6) << 4)
    return np.int32(sc), np.int32(mn)


@njit(inline="always")
def _dec_q4_k(w, o, q, qo, mn, mo):
    for j in range(4):
        sc1, m1 = _scale_min_k4(w, o + 4, 2 * j)
        sc2, m2 = _scale_min_k4(w, o + 4, 2 * j + 1)
        mn[mo + 4 * j] = m1
        mn[mo + 4 * j + 1] = m1
        mn[mo + 4 * j + 2] = m2
        mn[mo + 4 * j + 3] = m2
        b = o + 16 + 32 * j
        for l in range(32):
            v = np.int32(w[b + l])
            q[qo + 64 * j + l] = np.int16(sc1 * (v & 15))
            q[qo + 64 * j + 32 + l] = np.int16(sc2 * (v >> 4))
    return f16(w[o], w[o + 1]), f16(w[o + 2], w[o + 3])


@njit(inline="always")
def _dec_q5_k(w, o, q, qo, mn, mo):
    for j in range(4):
        sc1, m1 = _scale_min_k4(w, o + 4, 2 * j)
        sc2, m2 = _scale_min_k4(w, o + 4, 2 * j + 1)
        mn[mo + 4 * j] = m1
        mn[mo + 4 * j + 1] = m1
        mn[mo + 4 * j + 2] = m2
        mn[mo + 4 * j + 3] = m2
        b = o + 48 + 32 * j
        for l in range(32):
            v = np.int32(w[b + l])
            h = np.int32(w[o + 16 + l]) >> (2 * j)
            q[qo + 64 * j + l] = np.int16(sc1 * ((v & 15) | ((h & 1) << 4)))
            q[qo + 64 * j + 32 + l] = np.int16(sc2 * ((v >> 4) | ((h & 2) << 3)))
    return f16(w[o], w[o + 1]), f16(w[o + 2], w[o + 3])


@njit(inline="always")
def _dec_q6_k(w, o, q, qo, mn, mo):
    for n in range(2):
        ql = o + 64 * n
        qh = o + 128 + 32 * n
        sc = o + 192 + 8 * n
        y = qo + 128 * n
        for h in range(2):  # 16-element halves share one scale each
            s0 = np.int32(np.int8(w[sc + h]))
            s2 = np.int32(np.int8(w[sc + h + 2]))
            s4 = np.int32(np.int8(w[sc + h + 4]))
            s6 = np.int32(np.int8(w[sc + h + 6]))
            for l in range(16 * h, 16 * h + 16):
                a = np.int32(w[ql + l])
                b = np.int32(w[ql + l + 32])
                hh = np.int32(w[qh + l])
                q[y + l] = np.int16(s0 * (((a & 15) | ((hh & 3) << 4)) - 32))
                q[y + l + 32] = np.int16(s2 * (((b & 15) | (((hh >> 2) & 3) << 4)) - 32))
                q[y + l + 64] = np.int16(s4 * (((a >> 4) | (((hh >> 4) & 3) << 4)) - 32))
                q[y + l + 96] = np.int16(s6 * (((b >> 4) | (((hh >> 6) & 3) << 4)) - 32))
    for s in range(16):
        mn[mo + s] = 0
    return f16(w[o + 208], w[o + 209]), np.float32(0.0)


@njit(inline="always")
def _q3_scale(w, s, i):
    # 16 6-bit scales packed in 12 bytes (ggml's kmask shuffle), minus 32
    if i < 4:
        v = (w[s + i] & 15) | ((w[s + 8 + i] & 3) << 4)
    elif i < 8:
        v = (w[s + i] & 15) | (((w[s + 4 + i] >> 2) & 3) << 4)
    elif i < 12:
        v = (w[s + i - 8] >> 4) | (((w[s + i] >> 4) & 3) << 4)
    else:
        v = (w[s + i - 8] >> 4) | (((w[s + i - 4] >> 6) & 3) << 4)
    return np.int32(v) - 32


@njit(inline="always")
def _dec_q3_k(w, o, q, qo, mn, mo):
    for n in range(2):
        qs = o + 32 + 32 * n
        for j in range(4):
            shift = 2 * j
            mbit = 4 * n + j
            for h in range(2):
                sc = _q3_scale(w, o + 96, 8 * n + 2 * j + h)
                y = qo + 128 * n + 32 * j + 16 * h
                for l in range(16):
                    v = (np.int32(w[qs + 16 * h + l]) >> shift) & 3
                    hb = (np.int32(w[o + 16 * h + l]) >> mbit) & 1
                    q[y + l] = np.int16(sc * (v - 4 + 4 * hb))
    for s in range(16):
        mn[mo + s] = 0
    return f16(w[o + 108], w[o + 109]), np.float32(0.0)


@njit(inline="always")
def _dec_q2_k(w, o, q, qo, mn, mo):
    for n in range(2):
        qs = o + 16 + 32 * n
        for j in range(4):
            shift = 2 * j
            for h in range(2):
                i = 8 * n + 2 * j + h
                s = np.int32(w[o + i])
                mn[mo + i] = s >> 4
                sc = s & 15
                y = qo + 128 * n + 32 * j + 16 * h
                for l in range(16):
                    q[y + l] = np.int16(sc * ((np.int32(w[qs + 16 * h + l]) >> shift) & 3))
    return f16(w[o + 80], w[o + 81]), f16(w[o + 82], w[o + 83])


@njit(inline="always")
def _prologue(x):
    nb = x.size // QK
    xq = np.empty(x.size, np.int16)
    xd = np.empty(nb, np.float32)
    xs = np.empty(2 * nb, np.float32)
    quantize_act(x, xq, xd, xs)
    return xq, xd, xs


@njit(inline="always")
def _xs32(xs, b):
    return xs[2 * b] + xs[2 * b + 1]


@njit(inline="always")
def _sb_q4_k(w, o, xq, xd, xs, sb):
    acc = np.float32(0.0)
    macc = np.float32(0.0)
    for j in range(4):
        sc1, m1 = _scale_min_k4(w, o + 4, 2 * j)
        sc2, m2 = _scale_min_k4(w, o + 4, 2 * j + 1)
        b = 8 * sb + 2 * j
        a = o + 16 + 32 * j
        acc += xd[b] * np.float32(dot_k(w, a, 0, 15, a, 0, 0, 0, 0, sc1, sc1, xq, b * QK))
        acc += xd[b + 1] * np.float32(dot_k(w, a, 4, 15, a, 0, 0, 0, 0, sc2, sc2, xq, (b + 1) * QK))
        macc += np.float32(m1) * _xs32(xs, b) + np.float32(m2) * _xs32(xs, b + 1)
    return f16(w[o], w[o + 1]) * acc - f16(w[o + 2], w[o + 3]) * macc


@njit(inline="always")
def _sb_q5_k(w, o, xq, xd, xs, sb):
    acc = np.float32(0.0)
    macc = np.float32(0.0)
    for j in range(4):
        sc1, m1 = _scale_min_k4(w, o + 4, 2 * j)
        sc2, m2 = _scale_min_k4(w, o + 4, 2 * j + 1)
        b = 8 * sb + 2 * j
        a = o + 48 + 32 * j
        acc += xd[b] * np.float32(dot_k(w, a, 0, 15, o + 16, 2 * j, 1, 4, 0, sc1, sc1, xq, b * QK))
        acc += xd[b + 1] * np.float32(dot_k(w, a, 4, 15, o + 16, 2 * j + 1, 1, 4, 0, sc2, sc2, xq, (b + 1) * QK))
        macc += np.float32(m1) * _xs32(xs, b) + np.float32(m2) * _xs32(xs, b + 1)
    return f16(w[o], w[o + 1]) * acc - f16(w[o + 2], w[o + 3]) * macc


@njit(inline="always")
def _sb_q6_k(w, o, xq, xd, xs, sb):
    acc = np.float32(0.0)
    for n in range(2):
        ql = o + 64 * n
        qh = o + 128 + 32 * n
        sc = o + 192 + 8 * n
        for t in range(4):
            b = 8 * sb + 4 * n + t
            s0 = np.int32(np.int8(w[sc + 2 * t]))
            s1 = np.int32(np.int8(w[sc + 2 * t + 1]))
            dot = dot_k(w, ql + 32 * (t & 1), 4 * (t >> 1), 15, qh, 2 * t, 3, 4, 32, s0, s1, xq, b * QK)
            acc += xd[b] * np.float32(dot)
    return f16(w[o + 208], w[o + 209]) * acc


@njit(inline="always")
def _sb_q3_k(w, o, xq, xd, xs, sb):
    acc = np.float32(0.0)
    for n in range(2):
        for j in range(4):
            b = 8 * sb + 4 * n + j
            s0 = _q3_scale(w, o + 96, 8 * n + 2 * j)
            s1 = _q3_scale(w, o + 96, 8 * n + 2 * j + 1)
            dot = dot_k(w, o + 32 + 32 * n, 2 * j, 3, o, 4 * n + j, 1, 2, 4, s0, s1, xq, b * QK)
            acc += xd[b] * np.float32(dot)
    return f16(w[o + 108], w[o + 109]) * acc


@njit(inline="always")
def _sb_q2_k(w, o, xq, xd, xs, sb):
    acc = np.float32(0.0)
    macc = np.float32(0.0)
    for n in range(2):
        for j in range(4):
            b = 8 * sb + 4 * n + j
            i = 8 * n + 2 * j
            c0 = np.int32(w[o + i])
            c1 = np.int32(w[o + i + 1])
            a = o + 16 + 32 * n
            dot = dot_k(w, a, 2 * j, 3, a, 0, 0, 0, 0, c0 & 15, c1 & 15, xq, b * QK)
            acc += xd[b] * np.float32(dot)
            macc += np.float32(c0 >> 4) * xs[16 * sb + i] + np.float32(c1 >> 4) * xs[16 * sb + i + 1]
    return f16(w[o + 80], w[o + 81]) * acc - f16(w[o + 82], w[o + 83]) * macc


# ---------------------------------------------------------------------------------------
# matvec: the same body per type, written out so each compiles (and caches) on its own,
# only when a model uses it. 4 rows per iteration; the last group's extra rows are clamped
# to rows-1 (recomputed, written once).
# (Numba's disk cache misses every run for kernels built by a factory or given the block
# decoder as an argument: its key holds the decoder's address.)

@njit(parallel=True, fastmath=True, cache=True)
def matvec_q2_k(w, x, y):
    rows, rb = w.shape
    nsb = x.size // QKK
    xq, xd, xs = _prologue(x)
    wf = w.reshape(-1)
    for g in prange((rows + G - 1) // G):
        r0 = g * G
        o0 = r0 * rb
        o1 = min(r0 + 1, rows - 1) * rb
        o2 = min(r0 + 2, rows - 1) * rb
        o3 = min(r0 + 3, rows - 1) * rb
        a0 = np.float32(0.0)
        a1 = np.float32(0.0)
        a2 = np.float32(0.0)
        a3 = np.float32(0.0)
        for sb in range(nsb):
            bo = sb * 84
            a0 += _sb_q2_k(wf, o0 + bo, xq, xd, xs, sb)
            a1 += _sb_q2_k(wf, o1 + bo, xq, xd, xs, sb)
            a2 += _sb_q2_k(wf, o2 + bo, xq, xd, xs, sb)
            a3 += _sb_q2_k(wf, o3 + bo, xq, xd, xs, sb)
        y[r0] = a0
        if r0 + 1 < rows:
            y[r0 + 1] = a1
        if r0 + 2 < rows:
            y[r0 + 2] = a2
        if r0 + 3 < rows:
            y[r0 + 3] = a3


@njit(parallel=True, fastmath=True, cache=True)
def matvec_q3_k(w, x, y):
    rows, rb = w.shape
    nsb = x.size // QKK
    xq, xd, xs = _prologue(x)
    wf = w.reshape(-1)
    for g in prange((rows + G - 1) // G):
        r0 = g * G
        o0 = r0 * rb
        o1 = min(r0 + 1, rows - 1) * rb
        o2 = min(r0 + 2, rows - 1) * rb
        o3 = min(r0 + 3, rows - 1) * rb
        a0 = np.float32(0.0)
        a1 = np.float32(0.0)
        a2 = np.float32(0.0)
        a3 = np.float32(0.0)
        for sb in range(nsb):
            bo = sb * 110
            a0 += _sb_q3_k(wf, o0 + bo, xq, xd, xs, sb)
            a1 += _sb_q3_k(wf, o1 + bo, xq, xd, xs, sb)
            a2 += _sb_q3_k(wf, o2 + bo, xq, xd, xs, sb)
            a3 += _sb_q3_k(wf, o3 + bo, xq, xd, xs, sb)
        y[r0] = a0
        if r0 + 1 < rows:
            y[r0 + 1] = a1
        if r0 + 2 < rows:
            y[r0 + 2] = a2
        if r0 + 3 < rows:
            y[r0 + 3] = a3


@njit(parallel=True, fastmath=True, cache=True)
def matvec_q4_k(w, x, y):
    rows, rb = w.shape
    nsb = x.size // QKK
    xq, xd, xs = _prologue(x)
    wf = w.reshape(-1)
    for g in prange((rows + G - 1) // G):
        r0 = g * G
        o0 = r0 * rb
        o1 = min(r0 + 1, rows - 1) * rb
        o2 = min(r0 + 2, rows - 1) * rb
        o3 = min(r0 + 3, rows - 1) * rb
        a0 = np.float32(0.0)
        a1 = np.float32(0.0)
        a2 = np.float32(0.0)
        a3 = np.float32(0.0)
        for sb in range(nsb):
            bo = sb * 144
            a0 += _sb_q4_k(wf, o0 + bo, xq, xd, xs, sb)
            a1 += _sb_q4_k(wf, o1 + bo, xq, xd, xs, sb)
            a2 += _sb_q4_k(wf, o2 + bo, xq, xd, xs, sb)
            a3 += _sb_q4_k(wf, o3 + bo, xq, xd, xs, sb)
        y[r0] = a0
        if r0 + 1 < rows:
            y[r0 + 1] = a1
        if r0 + 2 < rows:
            y[r0 + 2] = a2
        if r0 + 3 < rows:
            y[r0 + 3] = a3


@njit(parallel=True, fastmath=True, cache=True)
def matvec_q5_k(w, x, y):
    rows, rb = w.shape
    nsb = x.size // QKK
    xq, xd, xs = _prologue(x)
    wf = w.reshape(-1)
    for g in prange((rows + G - 1) // G):
        r0 = g * G
        o0 = r0 * rb
        o1 = min(r0 + 1, rows - 1) * rb
        o2 = min(r0 + 2, rows - 1) * rb
        o3 = min(r0 + 3, rows - 1) * rb
        a0 = np.float32(0.0)
        a1 = np.float32(0.0)
        a2 = np.float32(0.0)
        a3 = np.float32(0.0)
        for sb in range(nsb):
            bo = sb * 176
            a0 += _sb_q5_k(wf, o0 + bo, xq, xd, xs, sb)
            a1 += _sb_q5_k(wf, o1 + bo, xq, xd, xs, sb)
            a2 += _sb_q5_k(wf, o2 + bo, xq, xd, xs, sb)
            a3 += _sb_q5_k(wf, o3 + bo, xq, xd, xs, sb)
        y[r0] = a0
        if r0 + 1 < rows:
            y[r0 + 1] = a1
        if r0 + 2 < rows:
            y[r0 + 2] = a2
        if r0 + 3 < rows:
            y[r0 + 3] = a3


@njit(parallel=True, fastmath=True, cache=True)
def matvec_q6_k(w, x, y):
    rows, rb = w.shape
    nsb = x.size // QKK
    xq, xd, xs = _prologue(x)
    wf = w.reshape(-1)
    for g in prange((rows + G - 1) // G):
        r0 = g * G
        o0 = r0 * rb
        o1 = min(r0 + 1, rows - 1) * rb
        o2 = min(r0 + 2, rows - 1) * rb
        o3 = min(r0 + 3, rows - 1) * rb
        a0 = np.float32(0.0)
        a1 = np.float32(0.0)
        a2 = np.float32(0.0)
        a3 = np.float32(0.0)
        for sb in range(nsb):
            bo = sb * 210
            a0 += _sb_q6_k(wf, o0 + bo, xq, xd, xs, sb)
            a1 += _sb_q6_k(wf, o1 + bo, xq, xd, xs, sb)
            a2 += _sb_q6_k(wf, o2 + bo, xq, xd, xs, sb)
            a3 += _sb_q6_k(wf, o3 + bo, xq, xd, xs, sb)
        y[r0] = a0
        if r0 + 1 < rows:
            y[r0 + 1] = a1
        if r0 + 2 < rows:
            y[r0 + 2] = a2
        if r0 + 3 < rows:
            y[r0 + 3] = a3


# ---------------------------------------------------------------------------------------
# dequantize rows r0..r1 -> out (float32). Serial on purpose: the batch path alternates
# these with multi-threaded BLAS, and a second thread pool waking up between sgemm calls
# fought OpenBLAS's spinning workers (1-40 GFLOP/s instead of ~100 on 2 cores).

@njit(inline="always")
def _store(q, mn, d, dmin, out, i, col0):
    for s in range(16):
        mf = dmin * np.float32(mn[s])
        for l in range(16):
            out[i, col0 + 16 * s + l] = d * np.float32(q[16 * s + l]) - mf


@njit(fastmath=True, cache=True)
def dequant_q4_k(w, r0, r1, out):
    nsb = out.shape[1] // QKK
    q = np.empty(QKK, np.int16)
    mn = np.empty(16, np.int32)
    for i in range(r1 - r0):
        for sb in range(nsb):
            d, m = _dec_q4_k(w[r0 + i], sb * 144, q, 0, mn, 0)
            _store(q, mn, d, m, out, i, sb * QKK)


@njit(fastmath=True, cache=True)
def dequant_q5_k(w, r0, r1, out):
    nsb = out.shape[1] // QKK
    q = np.empty(QKK, np.int16)
    mn = np.empty(16, np.int32)
    for i in range(r1 - r0):
        for sb in range(nsb):
            d, m = _dec_q5_k(w[r0 + i], sb * 176, q, 0, mn, 0)
            _store(q, mn, d, m, out, i, sb * QKK)


@njit(fastmath=True, cache=True)
def dequant_q6_k(w, r0, r1, out):
    nsb = out.shape[1] // QKK
    q = np.empty(QKK, np.int16)
    mn = np.empty(16, np.int32)
    for i in range(r1 - r0):
        for sb in range(nsb):
            d, m = _dec_q6_k(w[r0 + i], sb * 210, q, 0, mn, 0)
            _store(q, mn, d, m, out, i, sb * QKK)


@njit(fastmath=True, cache=True)
def dequant_q3_k(w, r0, r1, out):
    nsb = out.shape[1] // QKK
    q = np.empty(QKK, np.int16)
    mn = np.empty(16, np.int32)
    for i in range(r1 - r0):
        for sb in range(nsb):
            d, m = _dec_q3_k(w[r0 + i], sb * 110, q, 0, mn, 0)
            _store(q, mn, d, m, out, i, sb * QKK)


@njit(fastmath=True, cache=True)
def dequant_q2_k(w, r0, r1, out):
    nsb = out.shape[1] // QKK
    q = np.empty(QKK, np.int16)
    mn = np.empty(16, np.int32)
    for i in range(r1 - r0):
        for sb in range(nsb):
            d, m = _dec_q2_k(w[r0 + i], sb * 84, q, 0, mn, 0)
            _store(q, mn, d, m, out, i, sb * QKK)


MATVEC = {"Q2_K": matvec_q2_k, "Q3_K": matvec_q3_k, "Q4_K": matvec_q4_k,
          "Q5_K": matvec_q5_k, "Q6_K": matvec_q6_k}
DEQUANT = {"Q2_K": dequant_q2_k, "Q3_K": dequant_q3_k, "Q4_K": dequant_q4_k,
           "Q5_K": dequant_q5_k, "Q6_K": dequant_q6_k}
