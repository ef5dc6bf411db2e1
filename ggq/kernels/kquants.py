"""Kernels for the 256-element super-block types Q2_K, Q3_K, Q4_K, Q5_K, Q6_K (GGML layouts).

matvec: activations quantized once per call to int8 blocks of 32 (common.quantize_act8: the
values quantize_act gives) plus exact float sums per 32 (per 16 for Q2_K). Each call of a
common.rows_* intrinsic walks all super-blocks of NR rows: per 32-element chunk the codes
are decoded in vector registers, the integer dot sum (code - bias) * xq is kept in 8 int32
lanes, multiplied in integers by the chunk's sub-block scales, converted to float and
multiply-added by d * xd into a per-row float vector (reduced once per row):
    y = sum_c d * xd[c] * dot32_c(scale * (code - bias), xq)  -  dmin * sum_s min[s] * xsum[s]
(the integer sums are those of the previous int16 kernels; only float order differs).
Two kernels per type, same results: *_vnni (AVX512-VNNI vpdpbusd) and a generic one; MATVEC
holds the one this host runs (common.HAS_VNNI; GGQ_NO_VNNI=1 forces generic).
dequantize: the block decode into an int16 scratch with the integer sub-block scale folded
in, then d * w' - dmin * min (exact up to float rounding order).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .common import (HAS_VNNI, NR, act8, f16, put_rows, rows_q2_k, rows_q2_k_vnni, rows_q3_k,
                     rows_q3_k_vnni, rows_q4_k, rows_q4_k_vnni, rows_q5_k, rows_q5_k_vnni, rows_q6_k,
                     rows_q6_k_vnni)

QKK = 256


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
def _act(x):
    xq, xd, xp, xs = act8(x)
    return x.size // QKK, xq, xd, xp, xs


@njit(inline="always")
def _act16(x):
    """as _act, with xs the float sums per 16 (Q2_K's mins are per 16)"""
    nsb, xq, xd, xp, xs32 = _act(x)
    xs = np.empty(x.size // 16, np.float32)
    for h in range(x.size // 16):
        s = np.float32(0.0)
        for k in range(16):
            s += x[16 * h + k]
        xs[h] = s
    return nsb, xq, xd, xp, xs


# ---------------------------------------------------------------------------------------
# matvec kernels: w uint8 (rows, row_bytes), x float32 (cols,), y float32 (rows,).
# One common.rows_* call per NR rows (the last group's extra rows are clamped to rows-1,
# recomputed, written once). Same body per type and flavour, written out so each compiles
# (and caches) on its own, only when a model uses it. (Numba's disk cache misses every run
# for kernels built by a factory or given the row intrinsic as an argument.) No fastmath:
# the same results compiled or loaded from the disk cache (see legacy.py).

@njit(parallel=True, cache=True)
def matvec_q2_k(w, x, y):
    rows, rb = w.shape
    nsb, xq, xd, xp, xs = _act16(x)
    wf = w.reshape(-1)
    for g in prange((rows + NR - 1) // NR):
        put_rows(y, g * NR, rows, rows_q2_k(wf, g * NR, rows, rb, nsb, xq, xd, xp, xs))


@njit(parallel=True, cache=True)
def matvec_q2_k_vnni(w, x, y):
    rows, rb = w.shape
    nsb, xq, xd, xp, xs = _act16(x)
    wf = w.reshape(-1)
    for g in prange((rows + NR - 1) // NR):
        put_rows(y, g * NR, rows, rows_q2_k_vnni(wf, g * NR, rows, rb, nsb, xq, xd, xp, xs))


@njit(parallel=True, cache=True)
def matvec_q3_k(w, x, y):
    rows, rb = w.shape
    nsb, xq, xd, xp, xs = _act(x)
    wf = w.reshape(-1)
    for g in prange((rows + NR - 1) // NR):
        put_rows(y, g * NR, rows, rows_q3_k(wf, g * NR, rows, rb, nsb, xq, xd, xp, xs))


@njit(parallel=True, cache=True)
def matvec_q3_k_vnni(w, x, y):
    rows, rb = w.shape
    nsb, xq, xd, xp, xs = _act(x)
    wf = w.reshape(-1)
    for g in prange((rows + NR - 1) // NR):
        put_rows(y, g * NR, rows, rows_q3_k_vnni(wf, g * NR, rows, rb, nsb, xq, xd, xp, xs))


@njit(parallel=True, cache=True)
def matvec_q4_k(w, x, y):
    rows, rb = w.shape
    nsb, xq, xd, xp, xs = _act(x)
    wf = w.reshape(-1)
    for g in prange((rows + NR - 1) // NR):
        put_rows(y, g * NR, rows, rows_q4_k(wf, g * NR, rows, rb, nsb, xq, xd, xp, xs))


@njit(parallel=True, cache=True)
def matvec_q4_k_vnni(w, x, y):
    rows, rb = w.shape
    nsb, xq, xd, xp, xs = _act(x)
    wf = w.reshape(-1)
    for g in prange((rows + NR - 1) // NR):
        put_rows(y, g * NR, rows, rows_q4_k_vnni(wf, g * NR, rows, rb, nsb, xq, xd, xp, xs))


@njit(parallel=True, cache=True)
def matvec_q5_k(w, x, y):
    rows, rb = w.shape
    nsb, xq, xd, xp, xs = _act(x)
    wf = w.reshape(-1)
    for g in prange((rows + NR - 1) // NR):
        put_rows(y, g * NR, rows, rows_q5_k(wf, g * NR, rows, rb, nsb, xq, xd, xp, xs))


@njit(parallel=True, cache=True)
def matvec_q5_k_vnni(w, x, y):
    rows, rb = w.shape
    nsb, xq, xd, xp, xs = _act(x)
    wf = w.reshape(-1)
    for g in prange((rows + NR - 1) // NR):
        put_rows(y, g * NR, rows, rows_q5_k_vnni(wf, g * NR, rows, rb, nsb, xq, xd, xp, xs))


@njit(parallel=True, cache=True)
def matvec_q6_k(w, x, y):
    rows, rb = w.shape
    nsb, xq, xd, xp, xs = _act(x)
    wf = w.reshape(-1)
    for g in prange((rows + NR - 1) // NR):
        put_rows(y, g * NR, rows, rows_q6_k(wf, g * NR, rows, rb, nsb, xq, xd, xp, xs))


@njit(parallel=True, cache=True)
def matvec_q6_k_vnni(w, x, y):
    rows, rb = w.shape
    nsb, xq, xd, xp, xs = _act(x)
    wf = w.reshape(-1)
    for g in prange((rows + NR - 1) // NR):
        put_rows(y, g * NR, rows, rows_q6_k_vnni(wf, g * NR, rows, rb, nsb, xq, xd, xp, xs))


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


MATVEC_GENERIC = {"Q2_K": matvec_q2_k, "Q3_K": matvec_q3_k, "Q4_K": matvec_q4_k,
                  "Q5_K": matvec_q5_k, "Q6_K": matvec_q6_k}
MATVEC_VNNI = {"Q2_K": matvec_q2_k_vnni, "Q3_K": matvec_q3_k_vnni, "Q4_K": matvec_q4_k_vnni,
               "Q5_K": matvec_q5_k_vnni, "Q6_K": matvec_q6_k_vnni}
MATVEC = MATVEC_VNNI if HAS_VNNI else MATVEC_GENERIC
DEQUANT = {"Q2_K": dequant_q2_k, "Q3_K": dequant_q3_k, "Q4_K": dequant_q4_k,
           "Q5_K": dequant_q5_k, "Q6_K": dequant_q6_k}
