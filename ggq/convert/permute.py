"""Q/K row order between Hugging Face (rotary in split-half form) and llama.cpp's GGUF
(interleaved pairs). Same transform as convert_hf_to_gguf.py's LlamaModel.permute.

Both directions move whole rows, so they work on float arrays and on quantized row bytes
(uint8, shape (rows, row_bytes)) alike, and are exact. For attn_k pass n_head_kv."""
from __future__ import annotations

import numpy as np

from ..errors import ConvertError


def _check(a: np.ndarray, n_head: int) -> None:
    if a.ndim < 1 or n_head <= 0 or a.shape[0] % (2 * n_head):
        raise ConvertError(f"cannot permute rows: {a.shape[0] if a.ndim else 0} rows "
                           f"is not a multiple of 2 x {n_head} heads")


def hf_to_gguf_rows(a: np.ndarray, n_head: int) -> np.ndarray:
    """HF order -> GGUF order: within each head, rows (j, j + hd/2) become adjacent."""
    a = np.asarray(a)
    _check(a, n_head)
    return np.ascontiguousarray(
        a.reshape(n_head, 2, a.shape[0] // n_head // 2, *a.shape[1:]).swapaxes(1, 2).reshape(a.shape))


def gguf_to_hf_rows(a: np.ndarray, n_head: int) -> np.ndarray:
    """GGUF order -> HF order (inverse of hf_to_gguf_rows)."""
    a = np.asarray(a)
    _check(a, n_head)
    return np.ascontiguousarray(
        a.reshape(n_head, a.shape[0] // n_head // 2, 2, *a.shape[1:]).swapaxes(1, 2).reshape(a.shape))


def heads_for(name: str, n_head: int, n_head_kv: int) -> int | None:
    """How many heads a tensor's rows are permuted over, or None if it is not permuted."""
    if name.endswith("attn_q.weight"):
        return n_head
    if name.endswith("attn_k.weight"):
        return n_head_kv
    return None
