"""The QuantType interface every tensor type implements.

Conventions (all types):
- A tensor is a 2-D array (rows, cols) in row-major order; 1-D tensors are one row.
- Blocks run along the last dimension (cols); cols must be a multiple of block_size.
- Quantized data is a uint8 array of shape (rows, row_bytes(cols)); blocks are laid out
  exactly as GGML lays them out (little-endian), so bytes are interchangeable with GGUF.
"""
from __future__ import annotations

import numpy as np

from ..errors import QuantError


class QuantType:
    name: str = ""          # "Q4_K"
    ggml_id: int = -1       # GGML / GGUF type number (shared by the .ggq format)
    block_size: int = 1     # elements per block
    type_size: int = 4      # bytes per block
    is_float: bool = False  # F32 / F16 / BF16

    def row_bytes(self, cols: int) -> int:
        if cols % self.block_size:
            raise QuantError(f"{self.name}: row length {cols} is not a multiple of {self.block_size}")
        return cols // self.block_size * self.type_size

    def nbytes(self, shape) -> int:
        shape = tuple(int(s) for s in shape)
        rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
        return rows * self.row_bytes(shape[-1])

    @property
    def bits_per_weight(self) -> float:
        return self.type_size * 8 / self.block_size

    def supports(self, cols: int) -> bool:
        return cols % self.block_size == 0

    # --- optional: the grid a quantized block's scales leave (GPTQ's in-block feedback) ----
    # fixed_grid(q) -> (scale, offset, table): q uint8 (rows, type_size), one block per row;
    # element j of a row can take the values scale[:, j] * table[code] + offset[:, j] (table
    # sorted ascending, float32). with_codes(q, codes) -> q with those codes (uint8 (rows,
    # block_size)) and its scales unchanged. A type without them is fed back a block at a time.
    fixed_grid = None
    with_codes = None
    # grid_f16_at: the byte of an fp16 d in each block that multiplies the block's whole grid;
    # grid_min_f16_at: the byte of an fp16 m added to every value of the block (None: none).
    # Each value is d x (a number fixed by the codes) + m; GPTQ re-fits d and m by least squares
    # once the codes are fixed. None: no such scale.
    grid_f16_at = None
    grid_min_f16_at = None

    @staticmethod
    def block_f16(q: np.ndarray, at: int = 0) -> np.ndarray:
        """The little-endian fp16 at byte `at` of every block (row) of q, as float32."""
        return np.ascontiguousarray(q[:, at:at + 2]).view(np.float16)[:, 0].astype(np.float32)

    def d_grid(self, q: np.ndarray, table: np.ndarray):
        """fixed_grid of a block whose fp16 d at byte 0 scales `table` for every element."""
        d = self.block_f16(q)
        n = self.block_size
        return np.repeat(d[:, None], n, axis=1), np.zeros((q.shape[0], n), np.float32), table

    @staticmethod
    def with_block_f16(q: np.ndarray, d: np.ndarray, at: int = 0) -> np.ndarray:
        """q with the fp16 at byte `at` of every block (row) set to d (rounded to fp16)."""
        q = q.copy()
        q[:, at:at + 2] = np.asarray(d, np.float32).astype(np.float16).reshape(-1, 1).view(np.uint8)
        return q

    # --- implemented by each type -------------------------------------------------
    def quantize(self, x: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
        """float32 (rows, cols) -> uint8 (rows, row_bytes). imatrix: optional float32 (cols,)
        per-column importance weights (sum of squared activations); None = plain mode."""
        raise NotImplementedError

    def dequantize(self, data: np.ndarray, cols: int) -> np.ndarray:
        """uint8 (rows, row_bytes) -> float32 (rows, cols)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<QuantType {self.name} id={self.ggml_id} block={self.block_size} bytes={self.type_size}>"


def accepts_search(qt) -> bool:
    """Whether qt.quantize takes search= (a least-squares scale search beyond the reference)."""
    import inspect

    try:
        return "search" in inspect.signature(qt.quantize).parameters
    except (TypeError, ValueError):
        return False


def as_rows(x: np.ndarray) -> np.ndarray:
    """View any array as 2-D (rows, last_dim), float32, C-contiguous."""
    x = np.asarray(x)
    if x.ndim == 1:
        x = x.reshape(1, -1)
    elif x.ndim > 2:
        x = x.reshape(-1, x.shape[-1])
    return np.ascontiguousarray(x, dtype=np.float32)
