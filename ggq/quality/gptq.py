"""GPTQ-style error feedback for any block type (the course notes' Hessian-weighted error
compensation), writing the type's ordinary GGUF blocks.

For a linear layer y = W x with calibration inputs X (n, cols), the output error of a quantized
W' is ||X W^T - X W'^T||^2 = tr((W - W') H (W - W')^T) with H = X^T X. GPTQ quantizes the
columns in order and, after each, moves its error onto the columns not yet quantized so that
the layer's output changes as little as possible. With U the upper Cholesky factor of H^-1
(H^-1 = U^T U), quantizing column j to q_j updates W[:, k] -= (w_j - q_j) / U_jj * U_jk, k > j.

Block types pick their scales per block, so columns are quantized a block at a time (32
columns for the legacy types, a 256-column super-block for the k-quants): the type's own
quantizer (least-squares scale search weighted by the block's importance) picks the block's
scales as it stands after the earlier blocks' feedback. A type that exposes the grid those scales
leave (QuantType.fixed_grid: IQ4_NL, IQ4_XS, Q8_0) then has its columns rounded one by one on
that grid, each column's error pushed onto the block's later columns, as GPTQ with groups does.
For the others the block's codes are the quantizer's, and the block's error D = W_B - Q_B is
propagated as the column-by-column rule does when the codes are fixed, which is exact:
E = D U_BB^-1 (a triangular solve). Either way W[:, after B] -= E U[B, after B].

The importance given to the block quantizer is H's diagonal (the imatrix: mean squared input),
or with weights="gptq" 1 / diag(H^-1) restricted to the columns not yet quantized
(= 1 / U_jj^2), the weight GPTQ's own error scaling uses.
"""
from __future__ import annotations

import numpy as np

from ..errors import QuantError
from ..quants.base import accepts_search

DAMP = 0.01  # H += DAMP * mean(diag H) * I: keeps H invertible (dead inputs) and the updates tame


def _upper_cholesky_of_inverse(h: np.ndarray) -> np.ndarray:
    """U upper triangular with H^-1 = U^T U."""
    n = h.shape[0]
    try:
        l = np.linalg.cholesky(h)                       # H = L L^T
        linv = np.linalg.solve(l, np.eye(n))            # L^-1 (lower)
        hinv = linv.T @ linv                            # H^-1
        return np.ascontiguousarray(np.linalg.cholesky(hinv).T)  # H^-1 = L L^T = U^T U
    except np.linalg.LinAlgError:
        raise QuantError("GPTQ: the Hessian is not positive definite even after damping") from None


def block_size(qt) -> int:
    """Columns quantized together: the type's block (its scales' span)."""
    return int(qt.block_size)


def gptq_quantize(qt, w: np.ndarray, h: np.ndarray, weights: str = "imatrix", damp: float = DAMP,
                  search: bool = True) -> np.ndarray:
    """Quantize w (rows, cols) float32 to qt's blocks with error feedback under Hessian h
    (cols, cols) = X^T X / n. Returns uint8 (rows, row_bytes), the type's GGUF layout."""
    from ..runtime.blas import blas_get_threads, blas_set_threads

    # these matrices are small: BLAS threads only spin (100x slower on a busy machine)
    before = blas_get_threads()
    blas_set_threads(1)
    try:
        return _gptq(qt, w, h, weights, damp, search)
    finally:
        if before:
            blas_set_threads(before)


def _gptq(qt, w, h, weights, damp, search) -> np.ndarray:
    w = np.array(w, dtype=np.float64)
    rows, cols = w.shape
    if h.shape != (cols, cols):
        raise QuantError(f"GPTQ: Hessian {h.shape} does not match {cols} columns")
    if not np.all(np.isfinite(h)):
        raise QuantError("GPTQ: the Hessian has non-finite values")
    bs = block_size(qt)
    if cols % bs:
        raise QuantError(f"{qt.name}: row length {cols} is not a multiple of {bs}")
    h = np.array(h, dtype=np.float64)
    diag = np.diag(h).copy()
    dead = diag <= 0
    h[dead, dead] = 1.0  # an input that is always 0: its column does not matter
    mean_diag = float(np.mean(np.diag(h)))
    h[np.diag_indices(cols)] += damp * mean_diag
    u = _upper_cholesky_of_inverse(h)
    kw = {"search": True} if search and accepts_search(qt) else {}
    out = np.empty((rows, qt.row_bytes(cols)), dtype=np.uint8)
    bb = qt.type_size
    for b0 in range(0, cols, bs):
        b1 = b0 + bs
        blk = np.ascontiguousarray(w[:, b0:b1], dtype=np.float32)
        if weights == "gptq":
            imp = 1.0 / np.square(np.diag(u)[b0:b1])
        elif weights == "imatrix":
            imp = np.maximum(diag[b0:b1], 0.0)
        else:
            raise QuantError(f"GPTQ: unknown weighting {weights!r}")
        imp = (imp / max(float(imp.max()), 1e-30)).astype(np.float32)
        q = qt.quantize(blk, imatrix=imp, **kw)
        if qt.fixed_grid is not None:
            q, e = _round_in_block(qt, q, w, u, b0, b1)
        else:
            d = w[:, b0:b1] - qt.dequantize(q, bs).astype(np.float64)
            # E = D U_BB^-1  <=>  E U_BB = D  <=>  U_BB^T E^T = D^T (lower-triangular solve)
            e = np.linalg.solve(u[b0:b1, b0:b1].T, d.T).T
        out[:, b0 // bs * bb:(b0 // bs + 1) * bb] = q
        if b1 < cols:
            w[:, b1:] -= e @ u[b0:b1, b1:]
    return out


def _round_in_block(qt, q, w, u, b0, b1):
    """GPTQ's column loop inside one block: its scales kept as the type's search chose them, each
    column rounded to the nearest value of that grid (qt.fixed_grid) after the earlier columns'
    feedback, its error pushed onto the block's later columns. Returns the block with those codes
    and the scaled errors E (rows, block) for the columns after the block."""
    scale, offset, table = qt.fixed_grid(q)
    scale, offset = scale.astype(np.float64), offset.astype(np.float64)
    tab = table.astype(np.float64)
    rows, n = scale.shape
    codes = np.empty((rows, n), np.int64)
    e = np.empty((rows, n))
    for j in range(n):
        c = b0 + j
        s = scale[:, j]
        t = np.divide(w[:, c] - offset[:, j], s, out=np.zeros(rows), where=s != 0)
        k = np.clip(np.searchsorted(tab, t), 1, len(tab) - 1)
        k -= (t - tab[k - 1]) <= (tab[k] - t)  # the nearer neighbour (ties: the lower)
        codes[:, j] = k
        e[:, j] = (w[:, c] - (s * tab[k] + offset[:, j])) / u[c, c]
        if j + 1 < n:
            w[:, c + 1:b1] -= np.outer(e[:, j], u[c, c + 1:b1])
    return qt.with_codes(q, codes), e


def output_error(x: np.ndarray, w: np.ndarray, w_hat: np.ndarray) -> float:
    """||X W^T - X W_hat^T||_F (float64)."""
    x = np.asarray(x, np.float64)
    return float(np.linalg.norm(x @ (np.asarray(w, np.float64) - np.asarray(w_hat, np.float64)).T))
