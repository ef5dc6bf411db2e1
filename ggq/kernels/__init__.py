"""Fused Numba kernels per quant family and the per-type dispatch tables.

MATVEC[name](w, x, y):            y = W x, w uint8 (rows, row_bytes), x float32 (cols,), y (rows,)
DEQUANT[name](w, r0, r1, out):    out[:r1-r0, :cols] = float32 rows r0..r1 of W (exact)
Kernels compile lazily (first use of a type) and are cached on disk by Numba.
"""
from __future__ import annotations

from . import floats, kquants, legacy

MATVEC = {**floats.MATVEC, **legacy.MATVEC, **kquants.MATVEC}
DEQUANT = {**floats.DEQUANT, **legacy.DEQUANT, **kquants.DEQUANT}

# matvec kernels that quantize the activation vector to int8 (the others are exact float math)
INT8_ACTIVATIONS = frozenset(legacy.MATVEC) | frozenset(kquants.MATVEC)

__all__ = ["MATVEC", "DEQUANT", "INT8_ACTIVATIONS"]
