"""F16 / BF16 kernels (exact float math; F32 goes straight to BLAS in runtime.linear)."""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .common import h2f, u32_as_f32

G = 4  # rows per matvec iteration


@njit(inline="always")
def _bf(h):
    return u32_as_f32(np.uint32(h) << np.uint32(16))


# w arrives as a uint16 view (rows, cols) of the raw bytes (runtime.linear makes it)

@njit(parallel=True, fastmath=True, cache=True)
def matvec_f16(w, x, y):
    rows, cols = w.shape
    for g in prange((rows + G - 1) // G):
        r0 = g * G
        r1 = min(r0 + 1, rows - 1)
        r2 = min(r0 + 2, rows - 1)
        r3 = min(r0 + 3, rows - 1)
        a0 = np.float32(0.0)
        a1 = np.float32(0.0)
        a2 = np.float32(0.0)
        a3 = np.float32(0.0)
        for k in range(cols):
            xv = x[k]
            a0 += h2f(w[r0, k]) * xv
            a1 += h2f(w[r1, k]) * xv
            a2 += h2f(w[r2, k]) * xv
            a3 += h2f(w[r3, k]) * xv
        y[r0] = a0
        if r0 + 1 < rows:
            y[r0 + 1] = a1
        if r0 + 2 < rows:
            y[r0 + 2] = a2
        if r0 + 3 < rows:
            y[r0 + 3] = a3


@njit(parallel=True, fastmath=True, cache=True)
def matvec_bf16(w, x, y):
    rows, cols = w.shape
    for g in prange((rows + G - 1) // G):
        r0 = g * G
        r1 = min(r0 + 1, rows - 1)
        r2 = min(r0 + 2, rows - 1)
        r3 = min(r0 + 3, rows - 1)
        a0 = np.float32(0.0)
        a1 = np.float32(0.0)
        a2 = np.float32(0.0)
        a3 = np.float32(0.0)
        for k in range(cols):
            xv = x[k]
            a0 += _bf(w[r0, k]) * xv
            a1 += _bf(w[r1, k]) * xv
            a2 += _bf(w[r2, k]) * xv
            a3 += _bf(w[r3, k]) * xv
        y[r0] = a0
        if r0 + 1 < rows:
            y[r0 + 1] = a1
        if r0 + 2 < rows:
            y[r0 + 2] = a2
        if r0 + 3 < rows:
            y[r0 + 3] = a3


@njit(fastmath=True, cache=True)
def dequant_f16(w, r0, r1, out):
    cols = out.shape[1]
    for i in range(r1 - r0):
        for k in range(cols):
            out[i, k] = h2f(w[r0 + i, k])


@njit(fastmath=True, cache=True)
def dequant_bf16(w, r0, r1, out):
    cols = out.shape[1]
    for i in range(r1 - r0):
        for k in range(cols):
            out[i, k] = _bf(w[r0 + i, k])


MATVEC = {"F16": matvec_f16, "BF16": matvec_bf16}
DEQUANT = {"F16": dequant_f16, "BF16": dequant_bf16}
# raw uint8 rows are viewed as this dtype before calling the kernels above
VIEW = {"F16": np.uint16, "BF16": np.uint16, "F32": np.float32}
