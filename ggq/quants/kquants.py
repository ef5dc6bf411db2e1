"""K-quants: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K (256-element super-blocks).

Byte layouts are GGML's block_q2_K ... block_q6_K (see spec/QUANTS-K.md).
Quantizers port llama.cpp's ggml-quants.c:
- no importance matrix: quantize_row_q*_K_ref (make_qkx2_quants for Q2_K/Q4_K/Q5_K,
  make_q3_quants for Q3_K, make_qx_quants for Q6_K);
- with an importance matrix: quantize_row_q*_K_impl (make_qkx3_quants + make_qp_quants,
  make_qx_quants with weights).
All arithmetic is float32 in the same order as the C code, so that results match a
llama.cpp build without FMA contraction.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ..errors import QuantError
from . import register
from .base import QuantType, as_rows

QK_K = 256
GROUP_MAX_EPS = np.float32(1e-15)


# ----------------------------------------------------------------------------- scalars

@njit(cache=True)
def _nint(f):
    # ggml's nearest_int: float32 add of 1.5*2^23 rounds half to even in float32.
    v = f + np.float32(12582912.0)
    return int(v) - 12582912


@njit(cache=True)
def _f16_to_f32(h):
    s = (h >> 15) & 1
    e = (h >> 10) & 0x1F
    m = h & 0x3FF
    if e == 0:
        v = math.ldexp(float(m), -24)
    elif e == 31:
        v = math.inf if m == 0 else math.nan
    else:
        v = math.ldexp(float(1024 + m), e - 25)
    return np.float32(-v if s else v)


@njit(cache=True)
def _f32_to_f16(f):
    # round to nearest even, like GGML_FP32_TO_FP16 (F16C or the portable fallback)
    u = np.int64(np.float32(f).view(np.uint32))
    sign = (u >> 16) & 0x8000
    e = (u >> 23) & 0xFF
    m = u & 0x7FFFFF
    if e == 0xFF:
        return sign | 0x7C00 | (0x200 if m else 0)
    e16 = e - 112  # e - 127 + 15
    if e16 >= 31:
        return sign | 0x7C00
    if e16 <= 0:
        if e16 < -10:
            return sign
        m |= 0x800000
        shift = 14 - e16
        half = 1 << (shift - 1)
        r = m >> shift
        rem = m & ((1 << shift) - 1)
        if rem > half or (rem == half and (r & 1)):
            r += 1
        return sign | r
    r = (e16 << 10) | (m >> 13)
    rem = m & 0x1FFF
    if rem > 0x1000 or (rem == 0x1000 and (r & 1)):
        r += 1  # a carry into the exponent is correct (may give inf)
    return sign | r


@njit(cache=True)
def _rd16(b, off):
    return _f16_to_f32(np.int64(b[off]) | (np.int64(b[off + 1]) << 8))


@njit(cache=True)
def _wr16(b, off, f):
    """Store f as fp16 at b[off]; return the stored value as float32."""
    h = _f32_to_f16(f)
    b[off] = h & 0xFF
    b[off + 1] = h >> 8
    return _f16_to_f32(h)


@njit(cache=True)
def _scale_min_k4(j, s, so):
    """get_scale_min_k4: 6-bit scale and min of sub-block j from the 12 bytes at s[so:]."""
    if j < 4:
        return np.int64(s[so + j]) & 63, np.int64(s[so + j + 4]) & 63
    d = (np.int64(s[so + j + 4]) & 0xF) | ((np.int64(s[so + j - 4]) >> 6) << 4)
    m = (np.int64(s[so + j + 4]) >> 4) | ((np.int64(s[so + j]) >> 6) << 4)
    return d, m


# ----------------------------------------------------------------------------- searches

@njit(cache=True)
def _make_qkx2(n, nmax, x, xo, w, L, lo, Laux, rmin, rdelta, nstep, use_mad):
    """make_qkx2_quants (== make_qkx3_quants with weights): x[xo:xo+n] ~ scale*L - the_min.
    Returns (scale, the_min); L[lo:lo+n] in [0, nmax]."""
    mn = x[xo]
    mx = x[xo]
    sum_w = w[0]
    sum_x = sum_w * x[xo]
    for i in range(1, n):
        xi = x[xo + i]
        if xi < mn:
            mn = xi
        if xi > mx:
            mx = xi
        sum_w += w[i]
        sum_x += w[i] * xi
    if mn > 0:
        mn = np.float32(0.0)
    if mx == mn:
        for i in range(n):
            L[lo + i] = 0
        return np.float32(0.0), -mn
    fnmax = np.float32(nmax)
    iscale = fnmax / (mx - mn)
    scale = np.float32(1.0) / iscale
    best = np.float32(0.0)
    for i in range(n):
        l = max(0, min(nmax, _nint(iscale * (x[xo + i] - mn))))
        L[lo + i] = l
        diff = scale * np.float32(l) + mn - x[xo + i]
        diff = abs(diff) if use_mad else diff * diff
        best += w[i] * diff
    if nstep < 1:
        return scale, -mn
    for st in range(nstep + 1):
        iscale = (rmin + rdelta * np.float32(st) + fnmax) / (mx - mn)
        sum_l = np.float32(0.0)
        sum_l2 = np.float32(0.0)
        sum_xl = np.float32(0.0)
        for i in range(n):
            l = max(0, min(nmax, _nint(iscale * (x[xo + i] - mn))))
            Laux[i] = l
            fl = np.float32(l)
            sum_l += w[i] * fl
            sum_l2 += w[i] * fl * fl
            sum_xl += w[i] * fl * x[xo + i]
        D = sum_w * sum_l2 - sum_l * sum_l
        if D > 0:
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            if this_min > 0:
                this_min = np.float32(0.0)
                this_scale = sum_xl / sum_l2
            cur = np.float32(0.0)
            for i in range(n):
                diff = this_scale * np.float32(Laux[i]) + this_min - x[xo + i]
                diff = abs(diff) if use_mad else diff * diff
                cur += w[i] * diff
            if cur < best:
                for i in range(n):
                    L[lo + i] = Laux[i]
                best = cur
                scale = this_scale
                mn = this_min
    return scale, -mn


@njit(inline="always")
def _signed_absmax(x, xo, n):
    """(largest |x|, the signed value that has it) over x[xo:xo+n]; the first one wins ties."""
    mx = np.float32(0.0)
    amax = np.float32(0.0)
    for i in range(n):
        ax = abs(x[xo + i])
        if ax > amax:
            amax = ax
            mx = x[xo + i]
    return amax, mx


@njit(cache=True)
def _make_qx(n, nmax, x, xo, L, lo, qw, qo, use_qw):
    """make_qx_quants with rmse_type 1: x ~ scale*(L - nmax), L[lo:lo+n] in [0, 2*nmax-1].
    Weights qw[qo:qo+n] when use_qw, else x^2."""
    amax, mx = _signed_absmax(x, xo, n)
    if amax < GROUP_MAX_EPS:
        for i in range(n):
            L[lo + i] = 0
        return np.float32(0.0)
    fnmax = np.float32(nmax)
    iscale = -fnmax / mx
    sumlx = np.float32(0.0)
    suml2 = np.float32(0.0)
    for i in range(n):
        xi = x[xo + i]
        l = max(-nmax, min(nmax - 1, _nint(iscale * xi)))
        L[lo + i] = l + nmax
        w = qw[qo + i] if use_qw else xi * xi
        fl = np.float32(l)
        sumlx += w * xi * fl
        suml2 += w * fl * fl
    scale = sumlx / suml2 if suml2 != 0 else np.float32(0.0)
    best = scale * sumlx
    for st in range(-9, 10):
        if st == 0:
            continue
        iscale = -(fnmax + np.float32(0.1) * np.float32(st)) / mx
        sumlx = np.float32(0.0)
        suml2 = np.float32(0.0)
        for i in range(n):
            xi = x[xo + i]
            l = max(-nmax, min(nmax - 1, _nint(iscale * xi)))
            w = qw[qo + i] if use_qw else xi * xi
            fl = np.float32(l)
            sumlx += w * xi * fl
            suml2 += w * fl * fl
        if suml2 > 0 and sumlx * sumlx > best * suml2:
            for i in range(n):
                L[lo + i] = nmax + max(-nmax, min(nmax - 1, _nint(iscale * x[xo + i])))
            scale = sumlx / suml2
            best = scale * sumlx
    return scale


@njit(cache=True)
def _make_q3(n, nmax, x, xo, L, lo):
    """make_q3_quants(do_rmse=true): iterative weighted (x^2) least squares, L in [0, 2*nmax-1]."""
    amax, mx = _signed_absmax(x, xo, n)
    if amax < GROUP_MAX_EPS:
        for i in range(n):
            L[lo + i] = 0
        return np.float32(0.0)
    iscale = -np.float32(nmax) / mx
    sumlx = np.float32(0.0)
    suml2 = np.float32(0.0)
    for i in range(n):
        xi = x[xo + i]
        l = max(-nmax, min(nmax - 1, _nint(iscale * xi)))
        L[lo + i] = l
        w = xi * xi
        fl = np.float32(l)
        sumlx += w * xi * fl
        suml2 += w * fl * fl
    for _ in range(5):
        changed = 0
        for i in range(n):
            xi = x[xo + i]
            w = xi * xi
            fL = np.float32(L[lo + i])
            slx = sumlx - w * xi * fL
            if slx > 0:
                sl2 = suml2 - w * fL * fL
                nl = max(-nmax, min(nmax - 1, _nint(xi * sl2 / slx)))
                if nl != L[lo + i]:
                    fn = np.float32(nl)
                    slx += w * xi * fn
                    sl2 += w * fn * fn
                    if sl2 > 0 and slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[lo + i] = nl
                        sumlx = slx
                        suml2 = sl2
                        changed += 1
        if changed == 0:
            break
    for i in range(n):
        L[lo + i] += nmax
    return sumlx / suml2 if suml2 > 0 else np.float32(0.0)


@njit(cache=True)
def _make_qp(n, nmax, x, L, qw):
    """make_qp_quants: quantize non-negative x (sub-block scales or mins) to [0, nmax]
    with weights qw; returns the super-block scale."""
    mx = np.float32(0.0)
    for i in range(n):
        mx = max(mx, x[i])
    if mx < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return np.float32(0.0)
    fnmax = np.float32(nmax)
    iscale = fnmax / mx
    scale = np.float32(1.0) / iscale
    best = np.float32(0.0)
    for i in range(n):
        l = _nint(iscale * x[i])  # unclamped, as in the reference
        diff = x[i] - scale * np.float32(l)
        best += qw[i] * diff * diff
    for st in range(-4, 5):
        if st == 0:
            continue
        isc = (np.float32(0.1) * np.float32(st) + fnmax) / mx
        sc = np.float32(1.0) / isc
        mse = np.float32(0.0)
        for i in range(n):
            l = min(nmax, _nint(isc * x[i]))
            diff = x[i] - sc * np.float32(l)
            mse += qw[i] * diff * diff
        if mse < best:
            best = mse
            iscale = isc
    sumlx = np.float32(0.0)
    suml2 = np.float32(0.0)
    for i in range(n):
        l = min(nmax, _nint(iscale * x[i]))
        L[i] = l
        fl = np.float32(l)
        sumlx += qw[i] * x[i] * fl
        suml2 += qw[i] * fl * fl
    for _ in range(5):
        changed = 0
        for i in range(n):
            w = qw[i]
            fL = np.float32(L[i])
            slx = sumlx - w * x[i] * fL
            sl2 = suml2 - w * fL * fL
            if slx > 0 and sl2 > 0:
                nl = min(nmax, _nint(x[i] * sl2 / slx))
                if nl != L[i]:
                    fn = np.float32(nl)
                    slx += w * x[i] * fn
                    sl2 += w * fn * fn
                    if slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = nl
                        sumlx = slx
                        suml2 = sl2
                        changed += 1
        if changed == 0:
            break
    for i in range(n):
        # scales/mins are >= 0 in practice; keep codes in range whatever happens
        L[i] = max(0, min(nmax, L[i]))
    return sumlx / suml2 if suml2 > 0 else np.float32(0.0)


@njit(cache=True)
def _imatrix_weights(x, xo, n, qw, qo, sigma2, w):
    # weight = importance * sqrt(sigma2 + x^2)  (quantize_row_q*_K_impl)
    for l in range(n):
        xi = x[xo + l]
        w[l] = qw[qo + l] * np.float32(np.sqrt(sigma2 + xi * xi))


@njit(cache=True)
def _sum_sq(x, xo, n):
    s = np.float32(0.0)
    for l in range(n):
        s += x[xo + l] * x[xo + l]
    return s


# ----------------------------------------------------------------------------- packing helpers

@njit(cache=True)
def _pack_2bit(L, y, qo):
    # 4 x 32 values per 32 bytes: element j+l+32*k in bits 2k of byte l (per 128-element half)
    for j in range(0, QK_K, 128):
        for l in range(32):
            y[qo + j // 4 + l] = (L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4)
                                  | (L[j + l + 96] << 6)) & 0xFF


@njit(cache=True)
def _pack_k4_scales(ls, lm, y, so):
    """Pack eight 6-bit scales ls and mins lm into 12 bytes (inverse of get_scale_min_k4)."""
    for j in range(4):
        # bytes 0-3: low 6 bits scale j, top 2 bits = high bits of scale j+4; 4-7 same for mins
        y[so + j] = (ls[j] & 63) | ((ls[j + 4] >> 4) << 6)
        y[so + j + 4] = (lm[j] & 63) | ((lm[j + 4] >> 4) << 6)
        y[so + j + 8] = (ls[j + 4] & 0xF) | ((lm[j + 4] & 0xF) << 4)


@njit(cache=True)
def _pack_q3_scales(codes, y, so):
    """Pack sixteen 6-bit codes (0..63) into Q3_K's 12 scale bytes."""
    for k in range(8):
        y[so + k] = (codes[k] & 0xF) | ((codes[k + 8] & 0xF) << 4)
    for k in range(4):
        y[so + 8 + k] = (((codes[k] >> 4) & 3) | (((codes[k + 4] >> 4) & 3) << 2)
                         | (((codes[k + 8] >> 4) & 3) << 4) | (((codes[k + 12] >> 4) & 3) << 6))


@njit(cache=True)
def _q3_scale(y, so, j):
    lo = (np.int64(y[so + j]) & 0xF) if j < 8 else (np.int64(y[so + j - 8]) >> 4)
    hi = (np.int64(y[so + 8 + j % 4]) >> (2 * (j // 4))) & 3
    return (lo | (hi << 4)) - 32


# ----------------------------------------------------------------------------- block quantizers
# Each takes the row x, block start xo, row imatrix qw (length cols) + flag, output row y,
# byte offset yo, and per-row scratch arrays.

@njit(cache=True)
def _q2k_block(x, xo, qw, use_qw, y, yo, L, Laux, w, scales, mins, sw, Ls, Lm):
    # layout: scales[16] qs[64] d dmin
    if not use_qw:
        max_scale = np.float32(0.0)
        max_min = np.float32(0.0)
        for j in range(16):
            for l in range(16):
                w[l] = abs(x[xo + 16 * j + l])
            s, m = _make_qkx2(16, 3, x, xo + 16 * j, w, L, 16 * j, Laux,
                              np.float32(-0.5), np.float32(0.1), 15, True)
            scales[j] = s
            mins[j] = m
            if s > max_scale:
                max_scale = s
            if m > max_min:
                max_min = m
        q4 = np.float32(15.0)
        for j in range(16):
            Ls[j] = 0
            Lm[j] = 0
        if max_scale > 0:
            isc = q4 / max_scale
            for j in range(16):
                Ls[j] = _nint(isc * scales[j])
            d = _wr16(y, yo + 80, max_scale / q4)
        else:
            d = _wr16(y, yo + 80, np.float32(0.0))
        if max_min > 0:
            isc = q4 / max_min
            for j in range(16):
                Lm[j] = _nint(isc * mins[j])
            dmin = _wr16(y, yo + 82, max_min / q4)
        else:
            dmin = _wr16(y, yo + 82, np.float32(0.0))
    else:
        sigma2 = _sum_sq(x, xo, QK_K) / np.float32(QK_K)
        for j in range(16):
            _imatrix_weights(x, xo + 16 * j, 16, qw, xo + 16 * j, sigma2, w)
            t = np.float32(0.0)
            for l in range(16):
                t += w[l]
            sw[j] = t
            s, m = _make_qkx2(16, 3, x, xo + 16 * j, w, L, 16 * j, Laux,
                              np.float32(-0.9), np.float32(0.05), 36, False)
            scales[j] = s
            mins[j] = m
        dm = _make_qp(16, 15, scales, Ls, sw)
        mm = _make_qp(16, 15, mins, Lm, sw)
        d = _wr16(y, yo + 80, dm)
        dmin = _wr16(y, yo + 82, mm)
    for j in range(16):
        sc = (Ls[j] | (Lm[j] << 4)) & 0xFF
        y[yo + j] = sc
        dl = d * np.float32(sc & 0xF)
        if dl == 0:
            continue
        ml = dmin * np.float32(sc >> 4)
        for ii in range(16):
            L[16 * j + ii] = max(0, min(3, _nint((x[xo + 16 * j + ii] + ml) / dl)))
    _pack_2bit(L, y, yo + 16)


@njit(cache=True)
def _q3k_block(x, xo, qw, use_qw, y, yo, L, w, scales, sw, Ls):
    # layout: hmask[32] qs[64] scales[12] d
    zero_scales = False
    if not use_qw:
        max_scale = np.float32(0.0)
        amax = np.float32(0.0)
        for j in range(16):
            s = _make_q3(16, 4, x, xo + 16 * j, L, 16 * j)
            scales[j] = s
            if abs(s) > amax:
                amax = abs(s)
                max_scale = s
        if max_scale != 0:
            isc = np.float32(-32.0) / max_scale
            for j in range(16):
                Ls[j] = max(-32, min(31, _nint(isc * scales[j]))) + 32
            d = _wr16(y, yo + 108, np.float32(1.0) / isc)
        else:
            zero_scales = True
            d = _wr16(y, yo + 108, np.float32(0.0))
    else:
        sigma2 = np.float32(2.0) * _sum_sq(x, xo, QK_K) / np.float32(QK_K)
        for j in range(16):
            _imatrix_weights(x, xo + 16 * j, 16, qw, xo + 16 * j, sigma2, w)
            t = np.float32(0.0)
            for l in range(16):
                t += w[l]
            sw[j] = t
            scales[j] = _make_qx(16, 4, x, xo + 16 * j, L, 16 * j, w, 0, True)
        d_block = _make_qx(16, 32, scales, 0, Ls, 0, sw, 0, True)
        d = _wr16(y, yo + 108, d_block)
    if zero_scales:
        for k in range(12):
            y[yo + 96 + k] = 0
    else:
        _pack_q3_scales(Ls, y, yo + 96)
    for j in range(16):
        dl = d * np.float32(_q3_scale(y, yo + 96, j))
        if dl == 0:
            continue
        for ii in range(16):
            L[16 * j + ii] = max(-4, min(3, _nint(x[xo + 16 * j + ii] / dl))) + 4
    # high bit of element j goes to hmask[j % 32] bit j // 32
    for k in range(32):
        y[yo + k] = 0
    for j in range(QK_K):
        if L[j] > 3:
            y[yo + j % 32] |= 1 << (j // 32)
            L[j] -= 4
    _pack_2bit(L, y, yo + 32)


@njit(cache=True)
def _k4_scales(x, xo, qw, use_qw, nmax, y, yo, L, Laux, w, scales, mins, sw, Ls, Lm):
    """Shared Q4_K/Q5_K front half: sub-block scales/mins, d/dmin and the 12 scale bytes
    at y[yo+4:yo+16]. Returns (d, dmin) as stored."""
    if not use_qw:
        max_scale = np.float32(0.0)
        max_min = np.float32(0.0)
        for j in range(8):
            av_x = np.float32(np.sqrt(_sum_sq(x, xo + 32 * j, 32) / np.float32(32.0)))
            for l in range(32):
                w[l] = av_x + abs(x[xo + 32 * j + l])
            if nmax == 15:
                s, m = _make_qkx2(32, 15, x, xo + 32 * j, w, L, 32 * j, Laux,
                                  np.float32(-1.0), np.float32(0.1), 20, False)
            else:
                s, m = _make_qkx2(32, 31, x, xo + 32 * j, w, L, 32 * j, Laux,
                                  np.float32(-0.5), np.float32(0.1), 15, False)
            scales[j] = s
            mins[j] = m
            if s > max_scale:
                max_scale = s
            if m > max_min:
                max_min = m
        inv_s = np.float32(63.0) / max_scale if max_scale > 0 else np.float32(0.0)
        inv_m = np.float32(63.0) / max_min if max_min > 0 else np.float32(0.0)
        for j in range(8):
            # uint8_t ls = nearest_int(...); MIN(63, ls)
            Ls[j] = min(63, _nint(inv_s * scales[j]) & 0xFF)
            Lm[j] = min(63, _nint(inv_m * mins[j]) & 0xFF)
        _pack_k4_scales(Ls, Lm, y, yo + 4)
        d = _wr16(y, yo, max_scale / np.float32(63.0))
        dmin = _wr16(y, yo + 2, max_min / np.float32(63.0))
    else:
        sigma2 = np.float32(2.0) * _sum_sq(x, xo, QK_K) / np.float32(QK_K)
        for j in range(8):
            _imatrix_weights(x, xo + 32 * j, 32, qw, xo + 32 * j, sigma2, w)
            t = np.float32(0.0)
            for l in range(32):
                t += w[l]
            sw[j] = t
            s, m = _make_qkx2(32, nmax, x, xo + 32 * j, w, L, 32 * j, Laux,
                              np.float32(-0.9), np.float32(0.05), 36, False)
            scales[j] = s
            mins[j] = m
        d_block = _make_qp(8, 63, scales, Ls, sw)
        m_block = _make_qp(8, 63, mins, Lm, sw)
        _pack_k4_scales(Ls, Lm, y, yo + 4)
        d = _wr16(y, yo, d_block)
        dmin = _wr16(y, yo + 2, m_block)
    for j in range(8):
        sc, m = _scale_min_k4(j, y, yo + 4)
        dl = d * np.float32(sc)
        if dl == 0:
            continue
        ml = dmin * np.float32(m)
        for ii in range(32):
            L[32 * j + ii] = max(0, min(nmax, _nint((x[xo + 32 * j + ii] + ml) / dl)))
    return d, dmin


@njit(cache=True)
def _q4k_block(x, xo, qw, use_qw, y, yo, L, Laux, w, scales, mins, sw, Ls, Lm):
    # layout: d dmin scales[12] qs[128]
    _k4_scales(x, xo, qw, use_qw, 15, y, yo, L, Laux, w, scales, mins, sw, Ls, Lm)
    for j in range(0, QK_K, 64):
        for l in range(32):
            y[yo + 16 + j // 2 + l] = L[j + l] | (L[j + l + 32] << 4)


@njit(cache=True)
def _q5k_block(x, xo, qw, use_qw, y, yo, L, Laux, w, scales, mins, sw, Ls, Lm):
    # layout: d dmin scales[12] qh[32] qs[128]
    _k4_scales(x, xo, qw, use_qw, 31, y, yo, L, Laux, w, scales, mins, sw, Ls, Lm)
    for k in range(32):
        y[yo + 16 + k] = 0
    m1 = 1
    for n in range(0, QK_K, 64):
        for j in range(32):
            l1 = L[n + j]
            if l1 > 15:
                l1 -= 16
                y[yo + 16 + j] |= m1
            l2 = L[n + j + 32]
            if l2 > 15:
                l2 -= 16
                y[yo + 16 + j] |= m1 << 1
            y[yo + 48 + n // 2 + j] = l1 | (l2 << 4)
        m1 <<= 2


@njit(cache=True)
def _q6k_block(x, xo, qw, use_qw, y, yo, L, scales):
    # layout: ql[128] qh[64] scales[16] (int8) d
    max_scale = np.float32(0.0)
    max_abs = np.float32(0.0)
    for ib in range(16):
        s = _make_qx(16, 32, x, xo + 16 * ib, L, 16 * ib, qw, xo + 16 * ib, use_qw)
        scales[ib] = s
        if abs(s) > max_abs:
            max_abs = abs(s)
            max_scale = s
    if max_abs < GROUP_MAX_EPS:
        for k in range(210):
            y[yo + k] = 0
        return
    isc = np.float32(-128.0) / max_scale
    d = _wr16(y, yo + 208, np.float32(1.0) / isc)
    for ib in range(16):
        y[yo + 192 + ib] = min(127, _nint(isc * scales[ib])) & 0xFF
    for j in range(16):
        sc = np.int64(y[yo + 192 + j])
        if sc > 127:
            sc -= 256
        dl = d * np.float32(sc)
        if dl == 0:
            continue
        for ii in range(16):
            L[16 * j + ii] = max(-32, min(31, _nint(x[xo + 16 * j + ii] / dl))) + 32
    for j in range(0, QK_K, 128):
        ql = yo + j // 2
        qh = yo + 128 + j // 4
        for l in range(32):
            q1 = L[j + l] & 0xF
            q2 = L[j + l + 32] & 0xF
            q3 = L[j + l + 64] & 0xF
            q4 = L[j + l + 96] & 0xF
            y[ql + l] = q1 | (q3 << 4)
            y[ql + l + 32] = q2 | (q4 << 4)
            y[qh + l] = ((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2)
                         | ((L[j + l + 64] >> 4) << 4) | ((L[j + l + 96] >> 4) << 6))


# ----------------------------------------------------------------------------- row drivers

@njit(cache=True, parallel=True)
def _quantize_rows(kind, x, qw, use_qw, out):
    rows, cols = x.shape
    nb = cols // QK_K
    tsz = out.shape[1] // nb if nb else 0
    for r in prange(rows):
        L = np.zeros(QK_K, np.int64)
        Laux = np.zeros(32, np.int64)
        w = np.zeros(32, np.float32)
        scales = np.zeros(16, np.float32)
        mins = np.zeros(16, np.float32)
        sw = np.zeros(16, np.float32)
        Ls = np.zeros(16, np.int64)
        Lm = np.zeros(16, np.int64)
        xr = x[r]
        yr = out[r]
        for i in range(nb):
            xo = i * QK_K
            yo = i * tsz
            if kind == 2:
                _q2k_block(xr, xo, qw, use_qw, yr, yo, L, Laux, w, scales, mins, sw, Ls, Lm)
            elif kind == 3:
                _q3k_block(xr, xo, qw, use_qw, yr, yo, L, w, scales, sw, Ls)
            elif kind == 4:
                _q4k_block(xr, xo, qw, use_qw, yr, yo, L, Laux, w, scales, mins, sw, Ls, Lm)
            elif kind == 5:
                _q5k_block(xr, xo, qw, use_qw, yr, yo, L, Laux, w, scales, mins, sw, Ls, Lm)
            else:
                _q6k_block(xr, xo, qw, use_qw, yr, yo, L, scales)


# Block dequantizers: b = uint8 row, bo = block byte offset, y = float32 out, yo = out offset.
# Operation order matches ggml's dequantize_row_q*_K and gguf-py (float32 throughout).

@njit(cache=True)
def dequant_block_q2k(b, bo, y, yo):
    d = _rd16(b, bo + 80)
    dmin = _rd16(b, bo + 82)
    for half in range(2):
        q = bo + 16 + 32 * half
        for k in range(4):
            shift = 2 * k
            for h in range(2):
                sc = np.int64(b[bo + 8 * half + 2 * k + h])
                dl = d * np.float32(sc & 0xF)
                ml = dmin * np.float32(sc >> 4)
                base = yo + 128 * half + 32 * k + 16 * h
                for l in range(16):
                    y[base + l] = dl * np.float32((np.int64(b[q + 16 * h + l]) >> shift) & 3) - ml


@njit(cache=True)
def dequant_block_q3k(b, bo, y, yo):
    d = _rd16(b, bo + 108)
    for j in range(16):
        dl = d * np.float32(_q3_scale(b, bo + 96, j))
        half = j // 8
        k = (j % 8) // 2
        h = j % 2
        shift = 2 * k
        bit = 4 * half + k  # hmask bit for elements of this sub-block
        for l in range(16):
            e = 16 * h + l
            q = (np.int64(b[bo + 32 + 32 * half + e]) >> shift) & 3
            if not (np.int64(b[bo + e]) >> bit) & 1:
                q -= 4
            y[yo + 16 * j + l] = dl * np.float32(q)


@njit(cache=True)
def dequant_block_q4k(b, bo, y, yo):
    d = _rd16(b, bo)
    dmin = _rd16(b, bo + 2)
    for j in range(8):
        sc, m = _scale_min_k4(j, b, bo + 4)
        dl = d * np.float32(sc)
        ml = dmin * np.float32(m)
        q = bo + 16 + 32 * (j // 2)
        shift = 4 * (j % 2)
        for l in range(32):
            y[yo + 32 * j + l] = dl * np.float32((np.int64(b[q + l]) >> shift) & 0xF) - ml


@njit(cache=True)
def dequant_block_q5k(b, bo, y, yo):
    d = _rd16(b, bo)
    dmin = _rd16(b, bo + 2)
    for j in range(8):
        sc, m = _scale_min_k4(j, b, bo + 4)
        dl = d * np.float32(sc)
        ml = dmin * np.float32(m)
        q = bo + 48 + 32 * (j // 2)
        shift = 4 * (j % 2)
        for l in range(32):
            v = ((np.int64(b[q + l]) >> shift) & 0xF) | (((np.int64(b[bo + 16 + l]) >> j) & 1) << 4)
            y[yo + 32 * j + l] = dl * np.float32(v) - ml


@njit(cache=True)
def dequant_block_q6k(b, bo, y, yo):
    d = _rd16(b, bo + 208)
    for j in range(16):
        sc = np.int64(b[bo + 192 + j])
        if sc > 127:
            sc -= 256
        dl = d * np.float32(sc)
        half = j // 8          # which 128-element half
        k = (j % 8) // 2       # quarter inside the half: 32 elements each
        ql = bo + 64 * half + 32 * (k % 2)
        qshift = 4 * (k // 2)
        qh = bo + 128 + 32 * half
        hshift = 2 * k
        for l in range(16 * (j % 2), 16 * (j % 2) + 16):
            v = ((np.int64(b[ql + l]) >> qshift) & 0xF) | (((np.int64(b[qh + l]) >> hshift) & 3) << 4)
            y[yo + 128 * half + 32 * k + l] = dl * np.float32(v - 32)


@njit(cache=True, parallel=True)
def _dequantize_rows(kind, data, cols, out):
    rows = data.shape[0]
    nb = cols // QK_K
    tsz = data.shape[1] // nb if nb else 0
    for r in prange(rows):
        b = data[r]
        y = out[r]
        for i in range(nb):
            if kind == 2:
                dequant_block_q2k(b, i * tsz, y, i * QK_K)
            elif kind == 3:
                dequant_block_q3k(b, i * tsz, y, i * QK_K)
            elif kind == 4:
                dequant_block_q4k(b, i * tsz, y, i * QK_K)
            elif kind == 5:
                dequant_block_q5k(b, i * tsz, y, i * QK_K)
            else:
                dequant_block_q6k(b, i * tsz, y, i * QK_K)


# ----------------------------------------------------------------------------- the types

class _KQuant(QuantType):
    block_size = QK_K
    kind = 0

    def quantize(self, x: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
        x = as_rows(x)
        rows, cols = x.shape
        rb = self.row_bytes(cols)
        if not np.isfinite(x).all():
            raise QuantError(f"{self.name}: input contains NaN or Inf")
        if imatrix is None:
            qw = np.zeros(1, np.float32)
            use_qw = False
        else:
            qw = np.ascontiguousarray(imatrix, dtype=np.float32).reshape(-1)
            if qw.shape[0] != cols:
                raise QuantError(f"{self.name}: imatrix has {qw.shape[0]} values, expected {cols} (one per column)")
            if not np.isfinite(qw).all() or (qw < 0).any():
                raise QuantError(f"{self.name}: imatrix must be finite and non-negative")
            use_qw = True
        out = np.zeros((rows, rb), np.uint8)
        if rows and cols:
            _quantize_rows(self.kind, x, qw, use_qw, out)
        return out

    def dequantize(self, data: np.ndarray, cols: int) -> np.ndarray:
        cols = int(cols)
        rb = self.row_bytes(cols)
        data = np.asarray(data)
        if data.dtype != np.uint8:
            raise QuantError(f"{self.name}: quantized data must be uint8, got {data.dtype}")
        if data.ndim == 1:
            data = data.reshape(1, -1)
        if data.ndim != 2 or data.shape[1] != rb:
            raise QuantError(f"{self.name}: data shape {data.shape} does not match {rb} bytes per row of {cols}")
        data = np.ascontiguousarray(data)
        out = np.empty((data.shape[0], cols), np.float32)
        if data.shape[0] and cols:
            _dequantize_rows(self.kind, data, cols, out)
        return out


def _make(name, ggml_id, type_size, kind):
    cls = type(name, (_KQuant,), {"name": name, "ggml_id": ggml_id, "type_size": type_size, "kind": kind})
    return register(cls())


Q2_K = _make("Q2_K", 10, 84, 2)
Q3_K = _make("Q3_K", 11, 110, 3)
Q4_K = _make("Q4_K", 12, 144, 4)
Q5_K = _make("Q5_K", 13, 176, 5)
Q6_K = _make("Q6_K", 14, 210, 6)

# block dequantizer per type, for the fused kernels (signature: (u8 row, byte off, f32 out, out off))
BLOCK_DEQUANT = {
    "Q2_K": dequant_block_q2k,
    "Q3_K": dequant_block_q3k,
    "Q4_K": dequant_block_q4k,
    "Q5_K": dequant_block_q5k,
    "Q6_K": dequant_block_q6k,
}
