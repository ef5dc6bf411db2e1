"""Fused Numba kernels per quant family and the per-type dispatch tables.

MATVEC[name](w, x, y):            y = W x, w uint8 (rows, row_bytes), x float32 (cols,), y (rows,)
DEQUANT[name](w, r0, r1, out):    out[:r1-r0, :cols] = float32 rows r0..r1 of W (exact)
Kernels compile lazily (first use of a type) and are cached on disk by Numba.
"""
from __future__ import annotations

from pathlib import Path

from . import floats, kquants, legacy  # noqa: E402
from ..jit_cache import guard

# the matvec kernels inline common.py's intrinsics: Numba alone would not see an edit there
guard([floats, legacy, kquants], [Path(m.__file__) for m in (floats, legacy, kquants)]
      + [Path(__file__).with_name("common.py")], "kernels")

MATVEC = {**floats.MATVEC, **legacy.MATVEC, **kquants.MATVEC}
DEQUANT = {**floats.DEQUANT, **legacy.DEQUANT, **kquants.DEQUANT}

# (elements, bytes) per block, GGML layouts: lets the runtime validate row sizes on its own
BLOCK = {"F32": (1, 4), "F16": (1, 2), "BF16": (1, 2),
         "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24), "Q8_0": (32, 34),
         "Q2_K": (256, 84), "Q3_K": (256, 110), "Q4_K": (256, 144), "Q5_K": (256, 176),
         "Q6_K": (256, 210)}

# matvec kernels that quantize the activation vector to int8 (the others are exact float math)
INT8_ACTIVATIONS = frozenset(legacy.MATVEC) | frozenset(kquants.MATVEC)

__all__ = ["MATVEC", "DEQUANT", "INT8_ACTIVATIONS", "BLOCK"]
