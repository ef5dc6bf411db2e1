"""Kernels for the 32-element block types Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (GGML layouts).

matvec: activations quantized once per call to int8 blocks of 32 (common.quantize_act);
each weight block is decoded in vector registers (common.dot_nib / dot32: pmaddwd-style
integer products); 4 rows per loop iteration (independent chains, shared activation loads).
dequantize_rows: parallel exact decode of a row range to float32 (tiles for BLAS, embeddings).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .common import QK, dot32, dot_nib, f16, quantize_act

G = 4  # rows per matvec iteration

# ---------------------------------------------------------------------------------------
# per-block helpers: decode one block of row r (byte offset `o` in the flat weights) and
# return its contribution to y[r] given quantized activations of block b.


@njit(inline="always")
def _qh32(w, o):
    return (np.uint32(w[o]) | (np.uint32(w[o + 1]) << np.uint32(8))
            | (np.uint32(w[o + 2]) << np.uint32(16)) | (np.uint32(w[o + 3]) << np.uint32(24)))


@njit(inline="always")
def _blk_q4_0(w, o, xq, xd, xs, b):
    return f16(w[o], w[o + 1]) * xd[b] * np.float32(dot_nib(w, o + 2, np.uint32(0), 8, xq, b * QK))


@njit(inline="always")
def _blk_q4_1(w, o, xq, xd, xs, b):
    d = f16(w[o], w[o + 1])
    m = f16(w[o + 2], w[o + 3])
    dot = dot_nib(w, o + 4, np.uint32(0), 0, xq, b * QK)
    return d * xd[b] * np.float32(dot) + m * (xs[2 * b] + xs[2 * b + 1])


@njit(inline="always")
def _blk_q5_0(w, o, xq, xd, xs, b):
    return f16(w[o], w[o + 1]) * xd[b] * np.float32(dot_nib(w, o + 6, _qh32(w, o + 2), 16, xq, b * QK))


@njit(inline="always")
def _blk_q5_1(w, o, xq, xd, xs, b):
    d = f16(w[o], w[o + 1])
    m = f16(w[o + 2], w[o + 3])
    dot = dot_nib(w, o + 8, _qh32(w, o + 4), 0, xq, b * QK)
    return d * xd[b] * np.float32(dot) + m * (xs[2 * b] + xs[2 * b + 1])


@njit(inline="always")
def _blk_q8_0(w, o, xq, xd, xs, b):
    return f16(w[o], w[o + 1]) * xd[b] * np.float32(dot32(w, o + 2, xq, b * QK))


# ---------------------------------------------------------------------------------------
# matvec kernels: w uint8 (rows, row_bytes), x float32 (cols,), y float32 (rows,).
# Same body per type, written out so each compiles (and caches) on its own, only when a
# model uses it. Rows of the last group are clamped to rows-1 (recomputed, written once).
# (Numba's disk cache misses every run for kernels built by a factory or given the block
# decoder as an argument: its key holds the decoder's address.)

@njit(parallel=True, fastmath=True, cache=True)
def matvec_q8_0(w, x, y):
    rows, rb = w.shape
    nb = x.size // QK
    xq = np.empty(x.size, np.int16)
    xd = np.empty(nb, np.float32)
    xs = np.empty(2 * nb, np.float32)
    quantize_act(x, xq, xd, xs)
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
        for b in range(nb):
            bo = b * 34
            a0 += _blk_q8_0(wf, o0 + bo, xq, xd, xs, b)
            a1 += _blk_q8_0(wf, o1 + bo, xq, xd, xs, b)
            a2 += _blk_q8_0(wf, o2 + bo, xq, xd, xs, b)
            a3 += _blk_q8_0(wf, o3 + bo, xq, xd, xs, b)
        y[r0] = a0
        if r0 + 1 < rows:
            y[r0 + 1] = a1
        if r0 + 2 < rows:
            y[r0 + 2] = a2
        if r0 + 3 < rows:
            y[r0 + 3] = a3


@njit(parallel=True, fastmath=True, cache=True)
def matvec_q4_0(w, x, y):
    rows, rb = w.shape
    nb = x.size // QK
    xq = np.empty(x.size, np.int16)
    xd = np.empty(nb, np.float32)
    xs = np.empty(2 * nb, np.float32)
    quantize_act(x, xq, xd, xs)
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
        for b in range(nb):
            bo = b * 18
            a0 += _blk_q4_0(wf, o0 + bo, xq, xd, xs, b)
            a1 += _blk_q4_0(wf, o1 + bo, xq, xd, xs, b)
            a2 += _blk_q4_0(wf, o2 + bo, xq, xd, xs, b)
            a3 += _blk_q4_0(wf, o3 + bo, xq, xd, xs, b)
        y[r0] = a0
        if r0 + 1 < rows:
            y[r0 + 1] = a1
        if r0 + 2 < rows:
            y[r0 + 2] = a2
        if r0 + 3 < rows:
            y[r0 + 3] = a3


@njit(parallel=True, fastmath=True, cache=True)
def matvec_q4_1(w, x, y):
    rows, rb = w.shape
    nb = x.size // QK
    xq = np.empty(x.size, np.int16)
    xd = np.empty(nb, np.float32)
    xs = np.empty(2 * nb, np.float32)
    quantize_act(x, xq, xd, xs)
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
        for b in range(nb):
            bo = b * 20
            a0 += _blk_q4_1(wf, o0 + bo, xq, xd, xs, b)
            a1 += _blk_q4_1(wf, o1 + bo, xq, xd, xs, b)
            a2 += _blk_q4_1(wf, o2 + bo, xq, xd, xs, b)
            a3 += _blk_q4_1(wf, o3 + bo, xq, xd, xs, b)
        y[r0] = a0
        if r0 + 1 < rows:
            y[r0 + 1] = a1
        if r0 + 2 < rows:
            y[r0 + 2] = a2
        if r0 + 3 < rows:
            y[r0 + 3] = a3


@njit(parallel=True, fastmath=True, cache=True)
def matvec_q5_0(w, x, y):
    rows, rb = w.shape
    nb = x.size // QK
    xq = np.empty(x.size, np.int16)
    xd = np.empty(nb, np.float32)
    xs = np.empty(2 * nb, np.float32)
    quantize_act(x, xq, xd, xs)
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
        for b in range(nb):
            bo = b * 22
            a0 += _blk_q5_0(wf, o0 + bo, xq, xd, xs, b)
            a1 += _blk_q5_0(wf, o1 + bo, xq, xd, xs, b)
            a2 += _blk_q5_0(wf, o2 + bo, xq, xd, xs, b)
            a3 += _blk_q5_0(wf, o3 + bo, xq, xd, xs, b)
        y[r0] = a0
        if r0 + 1 < rows:
            y[r0 + 1] = a1
        if r0 + 2 < rows:
            y[r0 + 2] = a2
        if r0 + 3 < rows:
            y[r0 + 3] = a3


@njit(parallel=True, fastmath=True, cache=True)
def matvec_q5_1(w, x, y):
    rows, rb = w.shape
    nb = x.size // QK
    xq = np.empty(x.size, np.int16)
    xd = np.empty(nb, np.float32)
    xs = np.empty(2 * nb, np.float32)
    quantize_act(x, xq, xd, xs)
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
        for b in range(nb):
            bo = b * 24
            a0 += _blk_q5_1(wf, o0 + bo, xq, xd, xs, b)
            a1 += _blk_q5_1(wf, o1 + bo, xq, xd, xs, b)
            a2 += _blk_q5_1(wf, o2 + bo, xq, xd, xs, b)
            a3 += _blk_q5_1(wf, o3 + bo, xq, xd, xs, b)
        y[r0] = a0
        if r0 + 1 < rows:
            y[r0 + 1] = a1
        if r0 + 2 < rows:
            y[r0 + 2] = a2
        if r0 + 3 < rows:
            y[r0 + 3] = a3


# ---------------------------------------------------------------------------------------
# exact dequantization of rows r0..r1 into out[0:r1-r0, :cols] (float32); serial on
# purpose (see kquants.py: a second thread pool between sgemm calls fights OpenBLAS)

@njit(fastmath=True, cache=True)
def dequant_q8_0(w, r0, r1, out):
    nb = out.shape[1] // QK
    for i in range(r1 - r0):
        r = r0 + i
        for b in range(nb):
            o = b * 34
            d = f16(w[r, o], w[r, o + 1])
            for k in range(QK):
                out[i, b * QK + k] = d * np.float32(np.int8(w[r, o + 2 + k]))


@njit(fastmath=True, cache=True)
def dequant_q4_0(w, r0, r1, out):
    nb = out.shape[1] // QK
    for i in range(r1 - r0):
        r = r0 + i
        for b in range(nb):
            o = b * 18
            d = f16(w[r, o], w[r, o + 1])
            for l in range(16):
                v = w[r, o + 2 + l]
                out[i, b * QK + l] = d * np.float32(np.int32(v & 15) - 8)
                out[i, b * QK + l + 16] = d * np.float32(np.int32(v >> 4) - 8)


@njit(fastmath=True, cache=True)
def dequant_q4_1(w, r0, r1, out):
    nb = out.shape[1] // QK
    for i in range(r1 - r0):
        r = r0 + i
        for b in range(nb):
            o = b * 20
            d = f16(w[r, o], w[r, o + 1])
            m = f16(w[r, o + 2], w[r, o + 3])
            for l in range(16):
                v = w[r, o + 4 + l]
                out[i, b * QK + l] = d * np.float32(v & 15) + m
                out[i, b * QK + l + 16] = d * np.float32(v >> 4) + m


@njit(fastmath=True, cache=True)
def dequant_q5_0(w, r0, r1, out):
    nb = out.shape[1] // QK
    wf = w.reshape(-1)
    rb = w.shape[1]
    for i in range(r1 - r0):
        r = r0 + i
        for b in range(nb):
            o = r * rb + b * 22
            d = f16(wf[o], wf[o + 1])
            qh = _qh32(wf, o + 2)
            for l in range(16):
                v = np.uint32(wf[o + 6 + l])
                lo = (v & np.uint32(15)) | (((qh >> np.uint32(l)) & np.uint32(1)) << np.uint32(4))
                hi = (v >> np.uint32(4)) | (((qh >> np.uint32(l + 16)) & np.uint32(1)) << np.uint32(4))
                out[i, b * QK + l] = d * np.float32(np.int32(lo) - 16)
                out[i, b * QK + l + 16] = d * np.float32(np.int32(hi) - 16)


@njit(fastmath=True, cache=True)
def dequant_q5_1(w, r0, r1, out):
    nb = out.shape[1] // QK
    wf = w.reshape(-1)
    rb = w.shape[1]
    for i in range(r1 - r0):
        r = r0 + i
        for b in range(nb):
            o = r * rb + b * 24
            d = f16(wf[o], wf[o + 1])
            m = f16(wf[o + 2], wf[o + 3])
            qh = _qh32(wf, o + 4)
            for l in range(16):
                v = np.uint32(wf[o + 8 + l])
                lo = (v & np.uint32(15)) | (((qh >> np.uint32(l)) & np.uint32(1)) << np.uint32(4))
                hi = (v >> np.uint32(4)) | (((qh >> np.uint32(l + 16)) & np.uint32(1)) << np.uint32(4))
                out[i, b * QK + l] = d * np.float32(lo) + m
                out[i, b * QK + l + 16] = d * np.float32(hi) + m


MATVEC = {"Q8_0": matvec_q8_0, "Q4_0": matvec_q4_0, "Q4_1": matvec_q4_1,
          "Q5_0": matvec_q5_0, "Q5_1": matvec_q5_1}
DEQUANT = {"Q8_0": dequant_q8_0, "Q4_0": dequant_q4_0, "Q4_1": dequant_q4_1,
           "Q5_0": dequant_q5_0, "Q5_1": dequant_q5_1}
