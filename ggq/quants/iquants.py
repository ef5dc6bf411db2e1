"""IQ4_NL (GGML id 20) and IQ4_XS (id 23): 4-bit codes that index a fixed non-uniform table of
16 int8 values (KVALUES_IQ4NL), scaled per 32 elements.

Byte layouts are GGML's block_iq4_nl / block_iq4_xs (see spec/QUANTS-IQ.md):
- IQ4_NL, 32 elements in 18 bytes (4.5 bits per weight): fp16 d, 16 bytes of nibbles;
  element j (< 16) is the low nibble of byte j, element j + 16 its high nibble;
  value = d * KVALUES_IQ4NL[nibble].
- IQ4_XS, 256 elements in 136 bytes (4.25 bits per weight): fp16 d, u16 scales_h, 4 bytes
  scales_l, 128 bytes of nibbles (16 per 32-element sub-block, same order as IQ4_NL); the 6-bit
  sub-block scale ls of sub-block ib is (scales_l[ib/2] >> 4*(ib%2)) & 15 | ((scales_h >> 2*ib) & 3) << 4,
  value = d * (ls - 32) * KVALUES_IQ4NL[nibble].

Two quantization modes:
* reference (imatrix=None, search=False, and any imatrix with search=False): bit for bit what
  llama.cpp's quantize_iq4_nl / quantize_iq4_xs write (llama-quantize's path: ggml-quants.c's
  quantize_row_iq4_nl_impl with ntry = 7; weights x^2, or imatrix * sqrt(sigma2 + x^2) with
  sigma2 = 2 * mean x^2 of the super-block). All arithmetic that decides a bit is float32 in the
  C code's order (checked against the C code compiled without FMA contraction).
* search (search=True): per 32 elements 2 x 15 candidate scales (the block's largest |x| mapped
  near -127 as llama.cpp does, and near +113, which llama.cpp never tries), each with its weighted
  least-squares scale, two assign/refit rounds, and codes re-derived for the scale as stored in
  fp16 (llama.cpp derives them from the unrounded float scale). IQ4_XS also tries 16 super-block
  scales (both signs) and, per sub-block, the 6-bit scale code below and above the rounded one,
  keeping what lowers the weighted error. Each super-block finally keeps whichever of {the
  reference block, the search result} has the smaller weighted squared error measured on the
  decoded values, so search mode is never worse than llama.cpp in its own metric, block by block.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from numba import njit, prange

from ..errors import QuantError
from . import register
from .base import QuantType, as_rows
from .kquants import GROUP_MAX_EPS, _f16_to_f32, _f32_to_f16, _nint, _signed_absmax

# the one table both types index (ggml-common.h kvalues_iq4nl)
KVALUES_IQ4NL = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113],
                         np.int8)
_KV = KVALUES_IQ4NL.astype(np.float32)  # frozen into the kernels as a constant
# _BELOW[k + 128]: the last table index whose value is <= k (the values are integers, so for any
# x in [k, k+1) it is the lower neighbour the binary search of best_index_int8 ends on)
_BELOW = np.array([max([i for i in range(16) if KVALUES_IQ4NL[i] <= k] or [0]) for k in range(-128, 128)],
                  np.int64)
QK4_NL = 32   # IQ4_NL block, and the IQ4_XS sub-block
QK_K = 256    # IQ4_XS super-block
NTRY = 7      # llama.cpp's candidate count per side (quantize_iq4_nl / quantize_iq4_xs)
NTRY_SEARCH = 7
XS_SUPER_TRIES = 8  # super-block scale candidates per sign in search mode


# ----------------------------------------------------------------------------- scalars

@njit(cache=True)
def _best_index(x):
    """best_index_int8(16, kvalues_iq4nl, x): index of the table value nearest x (ties: upper)."""
    if x <= _KV[0]:
        return 0
    if x >= _KV[15]:
        return 15
    ml = _BELOW[int(math.floor(x)) + 128]
    return ml if x - _KV[ml] < _KV[ml + 1] - x else ml + 1


@njit(cache=True)
def _put_f16(y, off, h):
    y[off] = h & 0xFF
    y[off + 1] = (h >> 8) & 0xFF


@njit(cache=True)
def _pack_codes(L, y, qo, nsub):
    # q4[16*i + j] = L[32*i + j] | L[32*i + 16 + j] << 4
    for i in range(nsub):
        for j in range(16):
            y[qo + 16 * i + j] = (L[32 * i + j] | (L[32 * i + 16 + j] << 4)) & 0xFF


@njit(cache=True)
def _weights(x, xo, n, qw, use_qw, wmode, w):
    """Per-element weights of a super-block of n: llama.cpp's (use_qw: qw * sqrt(sigma2 + x^2),
    else x^2; wmode 1: sqrt(sigma2 + x^2) without an imatrix, the search's choice)."""
    sigma2 = np.float32(0.0)
    for j in range(n):
        sigma2 += x[xo + j] * x[xo + j]
    sigma2 *= np.float32(2.0) / np.float32(n)
    for j in range(n):
        xj = x[xo + j]
        if use_qw:
            w[j] = qw[xo + j] * np.float32(np.sqrt(sigma2 + xj * xj))
        elif wmode == 1:
            w[j] = np.float32(np.sqrt(sigma2 + xj * xj))
        else:
            w[j] = xj * xj


# ----------------------------------------------------------------------------- reference

@njit(cache=True)
def _ref_superblock(x, xo, n, w, y, yo, L, scales):
    """quantize_row_iq4_nl_impl(n, 32, ..., ntry=7) with the weights w already computed:
    writes the block (n = 32: IQ4_NL, n = 256: IQ4_XS) at y[yo:]."""
    nsub = n // QK4_NL
    max_scale = np.float32(0.0)
    amax_scale = np.float32(0.0)
    for ib in range(nsub):
        bo = xo + QK4_NL * ib
        lo = QK4_NL * ib
        amax, mx = _signed_absmax(x, bo, QK4_NL)
        if amax < GROUP_MAX_EPS:
            scales[ib] = np.float32(0.0)
            continue
        d = -mx / _KV[0]
        iscale = np.float32(1.0) / d
        sumqx = np.float32(0.0)
        sumq2 = np.float32(0.0)
        for j in range(QK4_NL):
            xj = x[bo + j]
            l = _best_index(iscale * xj)
            L[lo + j] = l
            q = _KV[l]
            wq = w[lo + j] * q
            sumqx += wq * xj
            sumq2 += wq * q
        d = sumqx / sumq2 if sumq2 > 0 else np.float32(0.0)
        best = d * sumqx
        for itry in range(-NTRY, NTRY + 1):
            iscale = np.float32(itry - 127) / mx
            sumqx = np.float32(0.0)
            sumq2 = np.float32(0.0)
            for j in range(QK4_NL):
                xj = x[bo + j]
                q = _KV[_best_index(iscale * xj)]
                wq = w[lo + j] * q
                sumqx += wq * xj
                sumq2 += wq * q
            if sumq2 > 0 and sumqx * sumqx > best * sumq2:
                d = sumqx / sumq2
                best = d * sumqx
        scales[ib] = d
        if abs(d) > amax_scale:
            amax_scale = abs(d)
            max_scale = d
    if nsub > 1:
        # IQ4_XS: fp16 d, 6-bit sub-scales; codes from the unrounded d as in llama.cpp
        d = -max_scale / np.float32(32.0)
        _put_f16(y, yo, _f32_to_f16(d))
        iscale = np.float32(1.0) / d if d != 0 else np.float32(0.0)
        sh = 0
        for ib in range(nsub):
            l = max(-32, min(31, _nint(iscale * scales[ib])))
            dl = d * np.float32(l)
            idl = np.float32(1.0) / dl if dl != 0 else np.float32(0.0)
            for j in range(QK4_NL):
                L[QK4_NL * ib + j] = _best_index(idl * x[xo + QK4_NL * ib + j])
            l += 32
            if ib % 2 == 0:
                y[yo + 4 + ib // 2] = l & 0xF
            else:
                y[yo + 4 + ib // 2] |= (l & 0xF) << 4
            sh |= (l >> 4) << (2 * ib)
        _put_f16(y, yo + 2, sh)
        _pack_codes(L, y, yo + 8, nsub)
    else:
        _put_f16(y, yo, _f32_to_f16(scales[0]))
        iscale = np.float32(1.0) / scales[0] if scales[0] != 0 else np.float32(0.0)
        for j in range(QK4_NL):
            L[j] = _best_index(iscale * x[xo + j])
        _pack_codes(L, y, yo + 2, 1)


# ----------------------------------------------------------------------------- search

@njit(cache=True)
def _assign_err(x, bo, w, wo, dl, L, lo):
    """Codes nearest x / dl into L[lo:lo+32]; returns the weighted squared error of dl * value."""
    inv = np.float32(1.0) / dl if dl != 0 else np.float32(0.0)
    err = np.float32(0.0)
    for j in range(QK4_NL):
        xj = x[bo + j]
        l = _best_index(inv * xj)
        L[lo + j] = l
        e = xj - dl * _KV[l]
        err += w[wo + j] * e * e
    return err


@njit(cache=True)
def _sub_scale(x, bo, w, wo, Laux):
    """The search's float scale for the 32 elements at x[bo:]: best weighted least-squares scale
    over 2 x (2 NTRY_SEARCH + 1) candidates, then two assign/refit rounds."""
    amax, mx = _signed_absmax(x, bo, QK4_NL)
    if amax < GROUP_MAX_EPS:
        return np.float32(0.0)
    d = np.float32(0.0)
    best = np.float32(0.0)
    for side in range(2):
        anchor = _KV[0] if side == 0 else _KV[15]
        for itry in range(-NTRY_SEARCH, NTRY_SEARCH + 1):
            iscale = (anchor + np.float32(itry)) / mx
            sumqx = np.float32(0.0)
            sumq2 = np.float32(0.0)
            for j in range(QK4_NL):
                xj = x[bo + j]
                q = _KV[_best_index(iscale * xj)]
                wq = w[wo + j] * q
                sumqx += wq * xj
                sumq2 += wq * q
            if sumq2 > 0 and sumqx * sumqx > best * sumq2:
                d = sumqx / sumq2
                best = d * sumqx
    for _ in range(2):
        if d == 0:
            break
        iscale = np.float32(1.0) / d
        sumqx = np.float32(0.0)
        sumq2 = np.float32(0.0)
        for j in range(QK4_NL):
            xj = x[bo + j]
            q = _KV[_best_index(iscale * xj)]
            wq = w[wo + j] * q
            sumqx += wq * xj
            sumq2 += wq * q
        if not (sumq2 > 0 and sumqx * sumqx > best * sumq2):
            break
        d = sumqx / sumq2
        best = d * sumqx
    return d


@njit(inline="always")
def iq4xs_sub_scale(scales_l_byte, scales_h, ib):
    """IQ4_XS sub-block ib's scale multiplier ls - 32 (ls: the 6-bit code, low 4 bits in
    scales_l[ib // 2] at nibble ib % 2, high 2 bits in scales_h at bits 2*ib); the sub-block's
    scale is d * (ls - 32). The one decode of the layout: quantizer check, dequantizers, kernels."""
    return (((scales_l_byte >> (4 * (ib % 2))) & 15) | (((scales_h >> (2 * ib)) & 3) << 4)) - 32


@njit(cache=True)
def _decoded_err(x, xo, n, w, y, yo):
    """Weighted squared error of the block at y[yo:] (IQ4_NL if n == 32, else IQ4_XS) against x."""
    err = np.float32(0.0)
    d = _f16_to_f32(np.int64(y[yo]) | (np.int64(y[yo + 1]) << 8))
    if n == QK4_NL:
        for j in range(16):
            c = np.int64(y[yo + 2 + j])
            e0 = x[xo + j] - d * _KV[c & 0xF]
            e1 = x[xo + j + 16] - d * _KV[c >> 4]
            err += w[j] * e0 * e0 + w[j + 16] * e1 * e1
        return err
    sh = np.int64(y[yo + 2]) | (np.int64(y[yo + 3]) << 8)
    for ib in range(n // QK4_NL):
        dl = d * np.float32(iq4xs_sub_scale(np.int64(y[yo + 4 + ib // 2]), sh, ib))
        for j in range(16):
            c = np.int64(y[yo + 8 + 16 * ib + j])
            e0 = x[xo + 32 * ib + j] - dl * _KV[c & 0xF]
            e1 = x[xo + 32 * ib + j + 16] - dl * _KV[c >> 4]
            err += w[32 * ib + j] * e0 * e0 + w[32 * ib + j + 16] * e1 * e1
    return err


@njit(cache=True)
def _search_nl(x, xo, w, y, yo, L, Laux):
    d = _sub_scale(x, xo, w, 0, Laux)
    h = _f32_to_f16(d)
    d16 = _f16_to_f32(h)
    err = _assign_err(x, xo, w, 0, d16, L, 0)
    # one refit on the codes of the stored scale (its rounding may have moved the optimum)
    sumqx = np.float32(0.0)
    sumq2 = np.float32(0.0)
    for j in range(QK4_NL):
        q = _KV[L[j]]
        wq = w[j] * q
        sumqx += wq * x[xo + j]
        sumq2 += wq * q
    if sumq2 > 0:
        h2 = _f32_to_f16(sumqx / sumq2)
        if h2 != h:
            e2 = _assign_err(x, xo, w, 0, _f16_to_f32(h2), Laux, 0)
            if e2 < err:
                err = e2
                h = h2
                for j in range(QK4_NL):
                    L[j] = Laux[j]
    _put_f16(y, yo, h)
    _pack_codes(L, y, yo + 2, 1)
    return err


@njit(cache=True)
def _search_xs(x, xo, w, y, yo, L, Laux, scales, Lbest, lsel):
    nsub = QK_K // QK4_NL
    max_scale = np.float32(0.0)
    amax_scale = np.float32(0.0)
    for ib in range(nsub):
        s = _sub_scale(x, xo + QK4_NL * ib, w, QK4_NL * ib, Laux)
        scales[ib] = s
        if abs(s) > amax_scale:
            amax_scale = abs(s)
            max_scale = s
    best_total = np.float32(np.inf)
    best_h = 0
    for cand in range(2 * XS_SUPER_TRIES):
        # the largest sub-scale maps near code -32 (negative d) or +31 (positive d)
        k = cand % XS_SUPER_TRIES
        if cand < XS_SUPER_TRIES:
            d = -max_scale / (np.float32(32.0) - np.float32(0.5) * np.float32(k))
        else:
            d = max_scale / (np.float32(31.0) - np.float32(0.5) * np.float32(k))
        h = _f32_to_f16(d)
        d16 = _f16_to_f32(h)
        if not (d16 == d16) or abs(d16) == np.inf:
            continue
        inv = np.float32(1.0) / d16 if d16 != 0 else np.float32(0.0)
        total = np.float32(0.0)
        for ib in range(nsub):
            bo = xo + QK4_NL * ib
            l0 = _nint(inv * scales[ib])
            be = np.float32(np.inf)
            for dlt in range(-1, 2):
                l = max(-32, min(31, l0 + dlt))
                if dlt != 0 and l == max(-32, min(31, l0)):
                    continue
                e = _assign_err(x, bo, w, QK4_NL * ib, d16 * np.float32(l), Laux, QK4_NL * ib)
                if e < be:
                    be = e
                    lsel[ib] = l
                    for j in range(QK4_NL):
                        L[QK4_NL * ib + j] = Laux[QK4_NL * ib + j]
            total += be
            if total >= best_total:
                break
        if total < best_total:
            best_total = total
            best_h = h
            for ib in range(nsub):
                lsel[nsub + ib] = lsel[ib]
            for j in range(QK_K):
                Lbest[j] = L[j]
    _put_f16(y, yo, best_h)
    sh = 0
    for ib in range(nsub):
        l = lsel[nsub + ib] + 32
        if ib % 2 == 0:
            y[yo + 4 + ib // 2] = l & 0xF
        else:
            y[yo + 4 + ib // 2] |= (l & 0xF) << 4
        sh |= (l >> 4) << (2 * ib)
    _put_f16(y, yo + 2, sh)
    _pack_codes(Lbest, y, yo + 8, nsub)
    return best_total


# ----------------------------------------------------------------------------- row drivers

@njit(cache=True, parallel=True)
def _quantize_rows(n, tsz, x, qw, use_qw, search, wmode, out):
    """n = 32 (IQ4_NL) or 256 (IQ4_XS) elements per block of tsz bytes."""
    rows, cols = x.shape
    nb = cols // n
    for r in prange(rows):
        L = np.zeros(QK_K, np.int64)
        Laux = np.zeros(QK_K, np.int64)
        Lbest = np.zeros(QK_K, np.int64)
        lsel = np.zeros(16, np.int64)
        w = np.zeros(QK_K, np.float32)
        wr = np.zeros(QK_K, np.float32)
        scales = np.zeros(8, np.float32)
        tmp = np.zeros(tsz, np.uint8)
        xr = x[r]
        yr = out[r]
        for i in range(nb):
            xo = i * n
            yo = i * tsz
            _weights(xr, xo, n, qw, use_qw, 0, wr)
            _ref_superblock(xr, xo, n, wr, yr, yo, L, scales)
            if not search:
                continue
            _weights(xr, xo, n, qw, use_qw, wmode, w)
            if n == QK4_NL:
                e = _search_nl(xr, xo, w, tmp, 0, L, Laux)
            else:
                e = _search_xs(xr, xo, w, tmp, 0, L, Laux, scales, Lbest, lsel)
            if e < _decoded_err(xr, xo, n, w, yr, yo):
                for k in range(tsz):
                    yr[yo + k] = tmp[k]


@njit(cache=True)
def dequant_block_iq4_nl(b, bo, y, yo):
    d = _f16_to_f32(np.int64(b[bo]) | (np.int64(b[bo + 1]) << 8))
    for j in range(16):
        c = np.int64(b[bo + 2 + j])
        y[yo + j] = d * _KV[c & 0xF]
        y[yo + j + 16] = d * _KV[c >> 4]


@njit(cache=True)
def dequant_block_iq4_xs(b, bo, y, yo):
    d = _f16_to_f32(np.int64(b[bo]) | (np.int64(b[bo + 1]) << 8))
    sh = np.int64(b[bo + 2]) | (np.int64(b[bo + 3]) << 8)
    for ib in range(8):
        dl = d * np.float32(iq4xs_sub_scale(np.int64(b[bo + 4 + ib // 2]), sh, ib))
        for j in range(16):
            c = np.int64(b[bo + 8 + 16 * ib + j])
            y[yo + 32 * ib + j] = dl * _KV[c & 0xF]
            y[yo + 32 * ib + j + 16] = dl * _KV[c >> 4]


@njit(cache=True, parallel=True)
def _dequantize_rows(n, data, cols, out):
    rows = data.shape[0]
    nb = cols // n
    tsz = data.shape[1] // nb if nb else 0
    for r in prange(rows):
        b = data[r]
        y = out[r]
        for i in range(nb):
            if n == QK4_NL:
                dequant_block_iq4_nl(b, i * tsz, y, i * n)
            else:
                dequant_block_iq4_xs(b, i * tsz, y, i * n)


# ----------------------------------------------------------------------------- the types

class _IQ4(QuantType):
    def quantize(self, x, imatrix=None, search=False, *, wmode=1):
        """float32 (rows, cols) -> uint8 (rows, row_bytes). search=False: llama.cpp's quantizer
        bit for bit (with or without imatrix); search=True: the wider search (see the module
        docstring). wmode (search only, no imatrix): 1 weights sqrt(sigma2 + x^2), 0 x^2."""
        if np.ndim(x) == 0:
            raise QuantError(f"{self.name}: cannot quantize a scalar, need rows of {self.block_size} values")
        x = as_rows(x)
        rows, cols = x.shape
        rb = self.row_bytes(cols)
        if not np.isfinite(x).all():
            raise QuantError(f"{self.name}: input contains NaN or infinite values")
        if wmode not in (0, 1):
            raise QuantError(f"{self.name}: wmode must be 0 or 1, got {wmode!r}")
        if imatrix is None:
            qw = np.zeros(1, np.float32)
            use_qw = False
        else:
            qw = np.ascontiguousarray(imatrix, dtype=np.float32).reshape(-1)
            if qw.shape[0] != cols:
                raise QuantError(f"{self.name}: importance matrix has {qw.shape[0]} entries, expected {cols}")
            if not np.isfinite(qw).all() or (qw < 0).any():
                raise QuantError(f"{self.name}: importance matrix must be finite and non-negative")
            use_qw = True
        out = np.zeros((rows, rb), np.uint8)
        if rows and cols:
            _quantize_rows(self.block_size, self.type_size, x, qw, use_qw, bool(search), int(wmode), out)
        return out

    def dequantize(self, data, cols):
        from .floats import _check_raw
        data = _check_raw(self, data, cols)
        out = np.empty((data.shape[0], int(cols)), np.float32)
        if data.shape[0] and cols:
            _dequantize_rows(self.block_size, data, int(cols), out)
        return out


def _pack_nibbles(q, start, codes):
    """32 codes per sub-block into 16 bytes from `start`: byte j holds codes j and j + 16."""
    c = codes.astype(np.uint8).reshape(codes.shape[0], -1, 2, 16)
    q[:, start:] = (c[:, :, 0, :] | (c[:, :, 1, :] << 4)).reshape(codes.shape[0], -1)
    return q


class _IQ4_NL(_IQ4):
    name, ggml_id, block_size, type_size = "IQ4_NL", 20, QK4_NL, 18

    grid_f16_at = 0  # d

    def fixed_grid(self, q):
        return self.d_grid(q, _KV)

    def with_codes(self, q, codes):
        return _pack_nibbles(q.copy(), 2, codes)


class _IQ4_XS(_IQ4):
    name, ggml_id, block_size, type_size = "IQ4_XS", 23, QK_K, 136

    grid_f16_at = 0  # d (the sub-scales are integers)

    def fixed_grid(self, q):
        d = self.block_f16(q)
        sh = q[:, 2].astype(np.int64) | (q[:, 3].astype(np.int64) << 8)
        scale = np.empty((q.shape[0], QK_K), np.float32)
        for ib in range(QK_K // QK4_NL):  # the one decode of the layout, on whole columns of rows
            ls = iq4xs_sub_scale.py_func(q[:, 4 + ib // 2].astype(np.int64), sh, ib)
            scale[:, ib * QK4_NL:(ib + 1) * QK4_NL] = (d * ls.astype(np.float32))[:, None]
        return scale, np.zeros((q.shape[0], QK_K), np.float32), _KV

    def with_codes(self, q, codes):
        return _pack_nibbles(q.copy(), 8, codes)


IQ4_NL = register(_IQ4_NL())
IQ4_XS = register(_IQ4_XS())

# block dequantizer per type (signature: (u8 row, byte off, f32 out, out off))
BLOCK_DEQUANT = {"IQ4_NL": dequant_block_iq4_nl, "IQ4_XS": dequant_block_iq4_xs}


def _guard():
    # these kernels link kquants.py's fp16 and rounding helpers: Numba alone would not see an edit there
    import sys
    from ..jit_cache import guard
    here = Path(__file__)
    guard([sys.modules[__name__]], [here, here.with_name("kquants.py")], "iquants")


_guard()
