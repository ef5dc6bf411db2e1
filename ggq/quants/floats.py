"""Float tensor types F32 (id 0), F16 (id 1), BF16 (id 30): one element per "block".

Conversions are plain NumPy views and vectorised bit arithmetic (memory-bound already).
F16 rounds to nearest even (NumPy's float32 -> float16, same as ggml's F16C path).
BF16 follows ggml's ggml_compute_fp32_to_bf16: NaN -> quiet NaN keeping sign and top
payload bits, everything else rounds to nearest even (overflow goes to +-inf).
"""
from __future__ import annotations

import numpy as np

from ..errors import QuantError
from .base import QuantType, as_rows


def _check_raw(qt: QuantType, data: np.ndarray, cols: int) -> np.ndarray:
    data = np.asarray(data)
    if data.dtype != np.uint8:
        raise QuantError(f"{qt.name}: quantized data must be uint8, got {data.dtype}")
    if data.ndim == 1:
        data = data.reshape(1, -1)
    elif data.ndim != 2:
        raise QuantError(f"{qt.name}: quantized data must be 2-D (rows, row_bytes), got {data.ndim}-D")
    cols = int(cols)
    if cols < 0:
        raise QuantError(f"{qt.name}: negative row length {cols}")
    if data.shape[1] != qt.row_bytes(cols):
        raise QuantError(f"{qt.name}: {data.shape[1]} bytes per row, expected {qt.row_bytes(cols)} for {cols} columns")
    return np.ascontiguousarray(data)


def _rows(qt: QuantType, x) -> np.ndarray:
    if np.ndim(x) == 0:
        raise QuantError(f"{qt.name}: cannot store a scalar as a tensor, need at least one row")
    return as_rows(x)


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 array -> uint16 bf16 bit patterns, exactly as ggml rounds."""
    n = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    is_nan = (n & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    # uint32 wrap-around only happens for NaN patterns, which np.where replaces.
    rounded = (n + (np.uint32(0x7FFF) + ((n >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)
    quiet = (n >> np.uint32(16)) | np.uint32(64)
    return np.where(is_nan, quiet, rounded).astype(np.uint16)


class _F32(QuantType):
    name, ggml_id, block_size, type_size, is_float = "F32", 0, 1, 4, True

    def quantize(self, x, imatrix=None, search=False):
        x = _rows(self, x)
        self.row_bytes(x.shape[1])
        return x.view(np.uint8).reshape(x.shape[0], -1).copy()

    def dequantize(self, data, cols):
        data = _check_raw(self, data, cols)
        return data.view(np.float32).reshape(data.shape[0], int(cols)).copy()


class _F16(QuantType):
    name, ggml_id, block_size, type_size, is_float = "F16", 1, 1, 2, True

    def quantize(self, x, imatrix=None, search=False):
        x = _rows(self, x)
        with np.errstate(over="ignore"):  # out-of-range values become +-inf, as in ggml
            h = x.astype(np.float16)
        return h.view(np.uint8).reshape(x.shape[0], -1)

    def dequantize(self, data, cols):
        data = _check_raw(self, data, cols)
        return data.view(np.float16).astype(np.float32).reshape(data.shape[0], int(cols))


class _BF16(QuantType):
    name, ggml_id, block_size, type_size, is_float = "BF16", 30, 1, 2, True

    def quantize(self, x, imatrix=None, search=False):
        x = _rows(self, x)
        return f32_to_bf16_bits(x).view(np.uint8).reshape(x.shape[0], -1)

    def dequantize(self, data, cols):
        data = _check_raw(self, data, cols)
        bits = data.view(np.uint16).astype(np.uint32) << np.uint32(16)
        return bits.view(np.float32).reshape(data.shape[0], int(cols))


F32, F16, BF16 = _F32(), _F16(), _BF16()

from . import register  # noqa: E402  (the package imports this module after defining register)

for _qt in (F32, F16, BF16):
    register(_qt)
