"""Weight matmul dispatch: y = x @ W.T with W quantized (never dequantized whole).

- Block types (Q4_0 .. Q6_K), the default: activations quantized to int8 per 32 (as llama.cpp
  does), which costs a relative error of roughly 1e-2 of the output scale.
  n == 1 (decode): one fused matvec kernel call (ggq.kernels.MATVEC);
  2 <= n <= MATVEC_ROWS_MAX: that kernel once per row (same numbers as the GEMM, and no
  GEMM kernel to compile for a short prompt);
  larger n (prompt, perplexity): the int8 GEMM of ggq.kernels.gemm.
- exact=True, and F32/F16/BF16 weights: float math. n == 1: the float matvec for the float
  types; otherwise tiles of rows are dequantized into a reused float32 buffer and multiplied
  with BLAS (x @ tile.T written into the output columns).
"""
from __future__ import annotations

import threading

import numpy as np

from ..errors import QuantError
from ..kernels import BLOCK, DEQUANT, MATVEC
from ..kernels.floats import VIEW
from ..kernels.gemm import GEMM, Activations, gemm

MATVEC_ROWS_MAX = 4  # up to this many rows: the matvec kernel per row beats packing for the GEMM
TILE_FLOATS = 1 << 17  # tile size in floats (512 KiB: stays in L2 while BLAS reads it)

_local = threading.local()


def _name(qtype) -> str:
    name = qtype if isinstance(qtype, str) else getattr(qtype, "name", None)
    if not isinstance(name, str):
        raise QuantError(f"linear: bad quant type {qtype!r}")
    name = name.upper()
    if name not in DEQUANT and name != "F32":
        raise QuantError(f"linear: no kernel for quant type {name}")
    return name


def _tile(rows: int, cols: int) -> np.ndarray:
    """Per-thread reused float32 buffer of at least rows x cols."""
    buf = getattr(_local, "buf", None)
    need = rows * cols
    if buf is None or buf.size < need:
        buf = np.empty(max(need, TILE_FLOATS), np.float32)
        _local.buf = buf
    return buf[:need].reshape(rows, cols)


def _prep_w(name: str, w: np.ndarray, cols: int) -> np.ndarray:
    if not isinstance(w, np.ndarray) or w.dtype != np.uint8 or w.ndim != 2:
        raise QuantError(f"linear: weights must be a 2-D uint8 array, got "
                         f"{getattr(w, 'dtype', type(w))} {getattr(w, 'shape', '')}")
    if not w.flags.c_contiguous:
        w = np.ascontiguousarray(w)
    if name in VIEW:
        size = np.dtype(VIEW[name]).itemsize
        if w.shape[1] != cols * size:
            raise QuantError(f"linear: {name} weight rows are {w.shape[1]} bytes, expected {cols * size}")
        w = w.view(VIEW[name])
    if w.flags.writeable:
        # one compiled signature per kernel: mmap views are read-only, so make all read-only
        w = w.view()
        w.flags.writeable = False
    return w


def _check_rows(name, qtype, w, cols):
    if name in VIEW:
        return
    bs, ts = BLOCK[name]
    if cols <= 0 or cols % bs:
        raise QuantError(f"linear: {name} needs columns in multiples of {bs}, got {cols}")
    rb = cols // bs * ts
    if w.shape[1] != rb:
        raise QuantError(f"linear: {name} weight rows are {w.shape[1]} bytes, expected {rb} for {cols} columns")


def activations(x: np.ndarray) -> Activations:
    """x float32 (n, cols) quantized for the GEMM once, for several linear(..., act=) calls that
    read the same x (q, k, v; gate, up)."""
    return Activations(np.ascontiguousarray(x, dtype=np.float32))


def uses_gemm(qtype, n: int, exact: bool = False) -> bool:
    """Whether linear() multiplies n rows with the int8 GEMM (and so can use activations())."""
    return not exact and n > MATVEC_ROWS_MAX and _name(qtype) in GEMM


def linear(qtype, w: np.ndarray, cols: int, x: np.ndarray, out: np.ndarray | None = None,
           exact: bool = False, act: Activations | None = None) -> np.ndarray:
    """x float32 (n, cols) -> float32 (n, rows) = x @ W.T; W: uint8 (rows, row_bytes).
    act: activations(x), where the GEMM is used (uses_gemm), to quantize x only once."""
    name = _name(qtype)
    w = _prep_w(name, w, cols)
    _check_rows(name, qtype, w, cols)
    rows = w.shape[0]
    x = np.asarray(x)
    if x.ndim == 1:
        x = x.reshape(1, -1)
    if x.ndim != 2 or x.shape[1] != cols:
        raise QuantError(f"linear: activations of shape {x.shape}, expected (n, {cols})")
    if x.dtype != np.float32 or not x.flags.c_contiguous or not x.flags.writeable:
        x = np.array(x, dtype=np.float32, order="C")  # copy: one signature, contiguous rows
    n = x.shape[0]
    if out is not None and (out.shape != (n, rows) or out.dtype != np.float32):
        raise QuantError(f"linear: out has shape {out.shape} {out.dtype}, expected ({n}, {rows}) float32")
    if not exact and n > MATVEC_ROWS_MAX and name in GEMM:
        if act is None:
            act = Activations(x)
        elif act.n != n or act.xq.shape[1] != cols:
            raise QuantError(f"linear: activations for {act.n} x {act.xq.shape[1]}, expected {n} x {cols}")
        y = gemm(name, w, act)[:n, :rows]  # a view of the padded product: no copy unless out is given
        if out is None:
            return y if y.flags.c_contiguous else np.ascontiguousarray(y)
        out[...] = y
        return out
    if out is None:
        out = np.empty((n, rows), np.float32)
    if name == "F32":
        np.matmul(x, w.T, out=out)
    elif exact or n > 1 and name not in GEMM:
        _tiled(name, w, cols, x, out)
    elif out.flags.c_contiguous:
        for i in range(n):
            MATVEC[name](w, x[i], out[i])
    else:
        _tiled(name, w, cols, x, out)
    return out


def _tiled(name, w, cols, x, out):
    rows = w.shape[0]
    step = max(16, min(rows, TILE_FLOATS // cols))
    deq = DEQUANT[name]
    n = x.shape[0]
    tile = _tile(min(step, rows), cols + n)  # tile rows, then room for a contiguous product
    flat = tile.reshape(-1)
    prod_at = min(step, rows) * cols
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        t = flat[: (r1 - r0) * cols].reshape(r1 - r0, cols)
        deq(w, r0, r1, t)
        if r0 == 0 and r1 == rows and out.flags.c_contiguous:
            np.matmul(x, t.T, out=out)
        else:
            # BLAS needs a contiguous destination (a strided out= falls back to a slow loop)
            p = flat[prod_at: prod_at + n * (r1 - r0)].reshape(n, r1 - r0)
            np.matmul(x, t.T, out=p)
            out[:, r0:r1] = p


def dequantize_rows(qtype, w: np.ndarray, cols: int, r0: int, r1: int,
                    out: np.ndarray | None = None) -> np.ndarray:
    """float32 (r1-r0, cols): exact decode of rows r0..r1 of W."""
    name = _name(qtype)
    w = _prep_w(name, w, cols)
    _check_rows(name, qtype, w, cols)
    r0, r1 = int(r0), int(r1)
    if not 0 <= r0 <= r1 <= w.shape[0]:
        raise QuantError(f"dequantize_rows: rows {r0}..{r1} out of range 0..{w.shape[0]}")
    if out is None:
        out = np.empty((r1 - r0, cols), np.float32)
    elif out.shape != (r1 - r0, cols) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise QuantError(f"dequantize_rows: out must be C-contiguous float32 ({r1 - r0}, {cols})")
    if r1 == r0:
        return out
    if name == "F32":
        out[...] = w[r0:r1]
    else:
        DEQUANT[name](w, r0, r1, out)
    return out


def _q8_0_rows(w: np.ndarray, ids: np.ndarray, cols: int) -> np.ndarray:
    """Rows ids of a Q8_0 matrix decoded with NumPy: d * q per block, the DEQUANT kernel's one
    float multiply, so the same bits, and no kernel to compile (cold start: 0.15 s of CPU here,
    ahead of the first forward) or load (warm start) for the embedding lookup."""
    bs, ts = BLOCK["Q8_0"]
    blocks = w[ids].reshape(ids.size, cols // bs, ts)
    d = np.ascontiguousarray(blocks[:, :, :2]).view(np.float16).astype(np.float32)
    q = blocks[:, :, 2:].view(np.int8).astype(np.float32)
    return np.multiply(d, q).reshape(ids.size, cols)


def embedding_rows(qtype, w: np.ndarray, cols: int, ids) -> np.ndarray:
    """float32 (len(ids), cols): the rows of W for the token ids (embedding lookup)."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    rows = w.shape[0]
    if ids.size and (ids.min() < 0 or ids.max() >= rows):
        raise QuantError(f"embedding_rows: token id out of range 0..{rows - 1}")
    name = _name(qtype)
    if name == "Q8_0":
        w = _prep_w(name, w, cols)
        _check_rows(name, qtype, w, cols)
        return _q8_0_rows(w, ids, cols)
    out = np.empty((ids.size, cols), np.float32)
    for i, t in enumerate(ids.tolist()):
        dequantize_rows(qtype, w, cols, t, t + 1, out[i:i + 1])
    return out
