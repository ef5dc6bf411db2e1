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

Blocks go in order of importance, the most important first (quantization_order): their error is
fed to blocks that matter less, as GPTQ's act-order does for columns. For a type whose block
scale multiplies its whole grid (QuantType.grid_f16_at: IQ4_NL, IQ4_XS, Q8_0, Q4_0, Q5_0; with
the min of Q4_1, Q5_1 too, grid_min_f16_at), each row's block scales are finally re-fitted by
least squares to the codes GPTQ ended with (refit_grid_scales). On SmolLM2's layers the two
lower the output error 1-21%, and q4_k_m_fit's KLD 3.5% on two development texts (32 windows
each).

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


def quantization_order(diag: np.ndarray, bs: int) -> np.ndarray:
    """The columns in the order GPTQ quantizes them: whole blocks by descending importance (the
    sum of H's diagonal over the block), each block's columns in the file's order; ties keep the
    file's order. Each block is still one block of the file, its scales picked when GPTQ reaches
    it. (Ordering the columns inside a block too, as GPTQ's act-order does, lowered the layers'
    output error further but raised SmolLM2's KLD on both development texts.)"""
    nb = diag.size // bs
    blocks = np.argsort(-diag.reshape(nb, bs).sum(1), kind="stable")
    return (blocks[:, None] * bs + np.arange(bs)[None, :]).reshape(-1)


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
    order = quantization_order(np.maximum(diag, 0.0), bs)
    u = _upper_cholesky_of_inverse(h[np.ix_(order, order)])  # of H in quantization order
    w0, w = w, w[:, order]  # (a copy) the weights in quantization order, updated as GPTQ goes
    kw = {"search": True} if search and accepts_search(qt) else {}
    out = np.empty((rows, qt.row_bytes(cols)), dtype=np.uint8)
    bb = qt.type_size
    for p0 in range(0, cols, bs):
        p1 = p0 + bs
        b0 = int(order[p0])  # the file's block at these positions, its columns in order
        blk = np.ascontiguousarray(w[:, p0:p1], dtype=np.float32)
        if weights == "gptq":
            imp = 1.0 / np.square(np.diag(u)[p0:p1])
        elif weights == "imatrix":
            imp = np.maximum(diag[b0:b0 + bs], 0.0)
        else:
            raise QuantError(f"GPTQ: unknown weighting {weights!r}")
        imp = (imp / max(float(imp.max()), 1e-30)).astype(np.float32)
        q = qt.quantize(blk, imatrix=imp, **kw)
        if qt.fixed_grid is not None:
            q, e = _round_in_block(qt, q, w, u, p0)
        else:
            d = w[:, p0:p1] - qt.dequantize(q, bs).astype(np.float64)
            # E = D U_BB^-1  <=>  E U_BB = D  <=>  U_BB^T E^T = D^T (lower-triangular solve)
            e = np.linalg.solve(u[p0:p1, p0:p1].T, d.T).T
        out[:, b0 // bs * bb:(b0 // bs + 1) * bb] = q
        if p1 < cols:
            w[:, p1:] -= e @ u[p0:p1, p1:]
    if qt.grid_f16_at is not None:
        h[dead, dead] -= 1.0  # a dead input weighs only its damping here: its weights never act
        out = refit_grid_scales(qt, out, w0, h)
    return out


def _round_in_block(qt, q, w, u, p0):
    """GPTQ's column loop inside one block: its scales kept as the type's search chose them, each
    column rounded to the nearest value of that grid (qt.fixed_grid) after the earlier columns'
    feedback, its error pushed onto the block's later columns. w and u are in quantization order,
    the block's columns at positions p0... Returns the block with those codes and the scaled
    errors E (rows, block) for the positions after it."""
    scale, offset, table = qt.fixed_grid(q)
    scale, offset = scale.astype(np.float64), offset.astype(np.float64)
    tab = table.astype(np.float64)
    rows, n = scale.shape
    codes = np.empty((rows, n), np.int64)
    e = np.empty((rows, n))
    p1 = p0 + n
    for j in range(n):
        p = p0 + j
        s = scale[:, j]
        t = np.divide(w[:, p] - offset[:, j], s, out=np.zeros(rows), where=s != 0)
        k = np.clip(np.searchsorted(tab, t), 1, len(tab) - 1)
        k -= (t - tab[k - 1]) <= (tab[k] - t)  # the nearer neighbour (ties: the lower)
        codes[:, j] = k
        e[:, j] = (w[:, p] - (s * tab[k] + offset[:, j])) / u[p, p]
        if j + 1 < n:
            w[:, p + 1:p1] -= np.outer(e[:, j], u[p, p + 1:p1])
    return qt.with_codes(q, codes), e


REFIT_FLOATS = 1 << 24  # the re-fit's (rows, blocks, blocks) systems per batch: 128 MiB


def refit_grid_scales(qt, q: np.ndarray, w: np.ndarray, h: np.ndarray) -> np.ndarray:
    """With the codes fixed, each row's block scales re-fitted to minimise that row's output error
    (w - ŵ) H (w - ŵ)^T: the fp16 d at qt.grid_f16_at, which multiplies the block's whole grid,
    and where the type has one, the fp16 m at qt.grid_min_f16_at, added to every value of the
    block (ŵ = sum_b d_b p_b + m_b 1_b, p_b: block b's decoded values less m, over d): a
    least-squares system of one or two unknowns per block. GPTQ picks each block's scales before
    its codes and the later feedback; this fits them to the codes it ended with. A row keeps its
    old scales where the fp16-rounded new ones do not lower its error (or are not finite); a
    block with d = 0 keeps d = 0. q uint8 (rows, row_bytes); w the original weights; h the
    (damped) Hessian."""
    rows, cols = w.shape
    bs, ts = qt.block_size, qt.type_size
    nb = cols // bs
    blocks = q.reshape(rows * nb, ts)
    ats = [qt.grid_f16_at] + ([qt.grid_min_f16_at] if qt.grid_min_f16_at is not None else [])
    nt = len(ats)  # unknowns per block: d, and m
    old = np.stack([qt.block_f16(blocks, at).astype(np.float64).reshape(rows, nb) for at in ats], axis=1)
    live = np.ones(old.shape, bool)
    live[:, 0] = old[:, 0] != 0
    new = old.copy()
    n = nt * nb
    idx = np.arange(n)
    batch = max(1, REFIT_FLOATS // (n * n))
    for r0 in range(0, rows, batch):
        r1 = min(rows, r0 + batch)
        r = r1 - r0
        z = qt.dequantize(q[r0:r1], cols).astype(np.float64).reshape(r, nb, bs)
        if nt == 2:
            z -= old[r0:r1, 1, :, None]
        z = np.divide(z, old[r0:r1, 0, :, None], out=np.zeros_like(z), where=live[r0:r1, 0, :, None])
        pats = [z.reshape(r, cols)] + ([np.ones((r, cols))] if nt == 2 else [])
        a = np.empty((r, nt, nb, nt, nb))
        for si, zs in enumerate(pats):
            for c in range(nb):  # a[r, (t, b), (s, c)] = p_tb^T H_bc p_sc
                v = zs[:, c * bs:(c + 1) * bs] @ h[c * bs:(c + 1) * bs, :]
                for ti, zt in enumerate(pats):
                    a[:, ti, :, si, c] = (zt * v).reshape(r, nb, bs).sum(-1)
        hw = w[r0:r1] @ h
        y = np.stack([(zt * hw).reshape(r, nb, bs).sum(-1) for zt in pats], axis=1).reshape(r, n)
        a = a.reshape(r, n, n)
        lv = live[r0:r1].reshape(r, n)
        a[~(lv[:, :, None] & lv[:, None, :])] = 0.0  # live unknowns only: a dead d solves to 0
        a[:, idx, idx] += np.where(lv, 1e-12 * np.maximum(a[:, idx, idx].max(1), 1e-300)[:, None], 1.0)
        y = np.where(lv, y, 0.0)
        try:
            sol = np.linalg.solve(a, y[..., None])[..., 0]
        except np.linalg.LinAlgError:
            continue  # a singular batch keeps its scales
        with np.errstate(over="ignore", invalid="ignore"):
            sol = np.where(lv, sol.astype(np.float16).astype(np.float64), 0.0)  # as stored

        def err(d):  # (w - ŵ) H (w - ŵ)^T up to the constant w H w^T (and the ridge's ~1e-12)
            return -2.0 * np.einsum("rk,rk->r", d, y) + np.einsum("rk,rkl,rl->r", d, a, d)

        cur = old[r0:r1].reshape(r, n)
        better = np.all(np.isfinite(sol), axis=1)
        better[better] = err(sol[better]) < err(cur[better])
        new[r0:r1][better] = sol[better].reshape(-1, nt, nb)
    for ti, at in enumerate(ats):
        blocks = qt.with_block_f16(blocks, new[:, ti].reshape(-1), at)
    return blocks.reshape(rows, nb * ts)


def output_error(x: np.ndarray, w: np.ndarray, w_hat: np.ndarray) -> float:
    """||X W^T - X W_hat^T||_F (float64)."""
    x = np.asarray(x, np.float64)
    return float(np.linalg.norm(x @ (np.asarray(w, np.float64) - np.asarray(w_hat, np.float64)).T))
