"""Kernels for the 32-element block types Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (GGML layouts).

matvec: activations quantized once per call to int8 blocks of 32 (common.quantize_act8);
each call of a common.rows_* intrinsic walks all blocks of NR rows with the weights decoded
in vector registers, per-row float vector accumulators and software prefetch. Two kernels
per type, same results: *_vnni (AVX512-VNNI vpdpbusd) and a generic one; MATVEC holds the
one this host runs (common.HAS_VNNI, decided at import; GGQ_NO_VNNI=1 forces generic).
dequantize_rows: parallel exact decode of a row range to float32 (tiles for BLAS, embeddings).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .common import (HAS_VNNI, NR, QK, act8, f16, put_rows, rows_q4_0, rows_q4_0_vnni, rows_q4_1,
                     rows_q4_1_vnni, rows_q5_0, rows_q5_0_vnni, rows_q5_1, rows_q5_1_vnni, rows_q8_0,
                     rows_q8_0_vnni)


@njit(inline="always")
def _qh32(w, o):
    return (np.uint32(w[o]) | (np.uint32(w[o + 1]) << np.uint32(8))
            | (np.uint32(w[o + 2]) << np.uint32(16)) | (np.uint32(w[o + 3]) << np.uint32(24)))


@njit(inline="always")
def _act(x):
    xq, xd, xp, xs = act8(x)
    return x.size // QK, xq, xd, xp, xs


# ---------------------------------------------------------------------------------------
# matvec kernels: w uint8 (rows, row_bytes), x float32 (cols,), y float32 (rows,).
# Same body per type and flavour, written out so each compiles (and caches) on its own, only
# when a model uses it. (Numba's disk cache misses every run for kernels built by a factory
# or given the row intrinsic as an argument: its key holds the argument's address.)
# No fastmath: a parallel kernel runs, in the process that compiles it, its parallel loop body
# as optimized on its own, and in a process that loads it from the disk cache, the copy that
# was linked into the kernel and optimized again. With reassociation allowed (fastmath's
# "fast") the two can sum floats in different orders (the activation sums, the horizontal
# sums): results then differed in the last bits between a cold and a warm run (and greedy text
# with them). Strict float math makes them the same; the row intrinsics' hot loops carry their
# own flags ("contract") and run as fast as before.

@njit(parallel=True, cache=True)
def matvec_q8_0(w, x, y):
    rows, rb = w.shape
    nb, xq, xd, xp, xs = _act(x)
    wf = w.reshape(-1)
    for g in prange((rows + NR - 1) // NR):
        put_rows(y, g * NR, rows, rows_q8_0(wf, g * NR, rows, rb, nb, xq, xd, xp, xs))


@njit(parallel=True, cache=True)
def matvec_q8_0_vnni(w, x, y):
    rows, rb = w.shape
    nb, xq, xd, xp, xs = _act(x)
    wf = w.reshape(-1)
    for g in prange((rows + NR - 1) // NR):
        put_rows(y, g * NR, rows, rows_q8_0_vnni(wf, g * NR, rows, rb, nb, xq, xd, xp, xs))


@njit(parallel=True, cache=True)
def matvec_q4_0(w, x, y):
    rows, rb = w.shape
    nb, xq, xd, xp, xs = _act(x)
    wf = w.reshape(-1)
    for g in prange((rows + NR - 1) // NR):
        put_rows(y, g * NR, rows, rows_q4_0(wf, g * NR, rows, rb, nb, xq, xd, xp, xs))


@njit(parallel=True, cache=True)
def matvec_q4_0_vnni(w, x, y):
    rows, rb = w.shape
    nb, xq, xd, xp, xs = _act(x)
    wf = w.reshape(-1)
    for g in prange((rows + NR - 1) // NR):
        put_rows(y, g * NR, rows, rows_q4_0_vnni(wf, g * NR, rows, rb, nb, xq, xd, xp, xs))


@njit(parallel=True, cache=True)
def matvec_q4_1(w, x, y):
    rows, rb = w.shape
    nb, xq, xd, xp, xs = _act(x)
    wf = w.reshape(-1)
    for g in prange((rows + NR - 1) // NR):
        put_rows(y, g * NR, rows, rows_q4_1(wf, g * NR, rows, rb, nb, xq, xd, xp, xs))


@njit(parallel=True, cache=True)
def matvec_q4_1_vnni(w, x, y):
    rows, rb = w.shape
    nb, xq, xd, xp, xs = _act(x)
    wf = w.reshape(-1)
    for g in prange((rows + NR - 1) // NR):
        put_rows(y, g * NR, rows, rows_q4_1_vnni(wf, g * NR, rows, rb, nb, xq, xd, xp, xs))


@njit(parallel=True, cache=True)
def matvec_q5_0(w, x, y):
    rows, rb = w.shape
    nb, xq, xd, xp, xs = _act(x)
    wf = w.reshape(-1)
    for g in prange((rows + NR - 1) // NR):
        put_rows(y, g * NR, rows, rows_q5_0(wf, g * NR, rows, rb, nb, xq, xd, xp, xs))


@njit(parallel=True, cache=True)
def matvec_q5_0_vnni(w, x, y):
    rows, rb = w.shape
    nb, xq, xd, xp, xs = _act(x)
    wf = w.reshape(-1)
    for g in prange((rows + NR - 1) // NR):
        put_rows(y, g * NR, rows, rows_q5_0_vnni(wf, g * NR, rows, rb, nb, xq, xd, xp, xs))


@njit(parallel=True, cache=True)
def matvec_q5_1(w, x, y):
    rows, rb = w.shape
    nb, xq, xd, xp, xs = _act(x)
    wf = w.reshape(-1)
    for g in prange((rows + NR - 1) // NR):
        put_rows(y, g * NR, rows, rows_q5_1(wf, g * NR, rows, rb, nb, xq, xd, xp, xs))


@njit(parallel=True, cache=True)
def matvec_q5_1_vnni(w, x, y):
    rows, rb = w.shape
    nb, xq, xd, xp, xs = _act(x)
    wf = w.reshape(-1)
    for g in prange((rows + NR - 1) // NR):
        put_rows(y, g * NR, rows, rows_q5_1_vnni(wf, g * NR, rows, rb, nb, xq, xd, xp, xs))


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


MATVEC_GENERIC = {"Q8_0": matvec_q8_0, "Q4_0": matvec_q4_0, "Q4_1": matvec_q4_1,
                  "Q5_0": matvec_q5_0, "Q5_1": matvec_q5_1}
MATVEC_VNNI = {"Q8_0": matvec_q8_0_vnni, "Q4_0": matvec_q4_0_vnni, "Q4_1": matvec_q4_1_vnni,
               "Q5_0": matvec_q5_0_vnni, "Q5_1": matvec_q5_1_vnni}
MATVEC = MATVEC_VNNI if HAS_VNNI else MATVEC_GENERIC
DEQUANT = {"Q8_0": dequant_q8_0, "Q4_0": dequant_q4_0, "Q4_1": dequant_q4_1,
           "Q5_0": dequant_q5_0, "Q5_1": dequant_q5_1}
