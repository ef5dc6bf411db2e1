"""32-element ("legacy") GGML block types: Q4_0 (id 2), Q4_1 (3), Q5_0 (6), Q5_1 (7), Q8_0 (8).

Byte layouts are GGML's (see spec/QUANTS-32.md). Two quantization modes:

* reference (imatrix=None, search=False): bit-for-bit ggml's quantize_row_*_ref, i.e. what
  `gguf.quants.quantize` produces. All arithmetic that decides a bit is done in float32 in
  the same order as ggml (d = max / -8, id = 1 / d, q = trunc(x * id + 8.5), ...).
* search (search=True, or any imatrix): weighted least-squares scale search.
  Weights: imatrix[j] * sqrt(sigma2 + x[j]^2) with an imatrix (llama.cpp's
  quantize_row_q*_impl); without one, per type (NO_IMATRIX_WMODE, chosen by the model's KLD):
  uniform for Q5_0, sqrt(sigma2 + x[j]^2) for the others (sigma2 = mean x^2 of the row).
  - Q4_0 / Q5_0 / Q8_0: make_qx_quants-style: 19 candidate inverse scales
    -(nmax + 0.1 i) / max, i = -9..9, each with its least-squares scale; the best is rounded
    to fp16 and the levels re-derived for that rounded scale.
    Q8_0 uses the full int8 range -128..127 (the reference only uses -127..127).
  - Q4_1 / Q5_1: make_qkx3-style: 37 candidate scales over the block's [min, max], each
    with the joint least-squares (scale, min) solution. Unlike llama.cpp's k-quant helper
    the min is not clamped to <= 0 because these types store a signed fp16 m.
  (The kernel's `wmode` 1 selects weights x^2, llama.cpp's no-imatrix choice for k-quants: it
  made plain RMSE worse than the reference on Student-t data for Q4_0, and SmolLM2's KLD worse
  for Q5_0 and Q5_1, so no type uses it.)
  Each block finally keeps whichever of {reference block, search result} has the smaller
  weighted squared error measured on the actual fp16 scales and decoded float32 values,
  so search mode is never worse than absmax in its own metric, block by block.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ..errors import QuantError
from .base import QuantType, as_rows

QK = 32

# fp16 bit pattern -> float32 value, built by NumPy (so it is IEEE-exact for every pattern).
F16_TO_F32 = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)

# type codes used inside the kernels
_Q4_0, _Q4_1, _Q5_0, _Q5_1, _Q8_0 = 0, 1, 2, 3, 4
# search weights without an imatrix, per type (kernel wmode: 0 sqrt(sigma2 + x^2), 2 uniform).
# Chosen by the model's KLD, not the weight error: SmolLM2 off-grid, development text, q4_k_s
# (576-wide matrices Q5_0): Q5_0 uniform 0.1309, sqrt(sigma2 + x^2) 0.1376, x^2 0.1409,
# llama.cpp's reference 0.1313; q5_k_m (Q5_1): sqrt(sigma2 + x^2) 0.0457, uniform 0.0475,
# reference 0.0521. One model and one text: against the reference, Q5_0's gain is within noise.
WMODE_SQRT_SIGMA2_X2, WMODE_X2, WMODE_UNIFORM = 0, 1, 2  # the kernels' wmode values
NO_IMATRIX_WMODE = {_Q4_0: WMODE_SQRT_SIGMA2_X2, _Q4_1: WMODE_SQRT_SIGMA2_X2, _Q5_0: WMODE_UNIFORM,
                    _Q5_1: WMODE_SQRT_SIGMA2_X2, _Q8_0: WMODE_SQRT_SIGMA2_X2}


# --------------------------------------------------------------------------------------
# scalar helpers
# --------------------------------------------------------------------------------------
@njit(cache=True)
def _rne(y):
    """Round a non-negative float64 to the nearest integer, ties to even."""
    f = math.floor(y)
    r = y - f
    if r > 0.5 or (r == 0.5 and (int(f) & 1) == 1):
        f += 1.0
    return int(f)


@njit(cache=True)
def f32_to_f16(v):
    """float32 -> (fp16 bits, fp16 value as float32); round to nearest even like NumPy/F16C.
    Arithmetic rather than bit tricks because Numba cannot bit-cast scalars."""
    a = abs(np.float64(v))
    sign = 0x8000 if math.copysign(1.0, v) < 0 else 0
    if a != a:
        return 0x7E00 | sign, np.float32(np.nan)
    if a >= 65520.0:  # halfway between 65504 and 65536 rounds (to even) up to inf
        return 0x7C00 | sign, np.float32(-np.inf if sign else np.inf)
    if a < 6.103515625e-05:  # below 2**-14: subnormal fp16, step 2**-24
        q = _rne(a * 16777216.0)
        val = q * 5.9604644775390625e-08
        bits = sign | q  # q == 1024 lands exactly on the smallest normal
    else:
        m, e = math.frexp(a)  # a = m * 2**e, 0.5 <= m < 1
        q = _rne(m * 2048.0)  # 11 significant bits
        if q == 2048:
            q = 1024
            e += 1
        bits = sign | ((e + 14) << 10) | (q - 1024)
        val = math.ldexp(float(q), e - 11)
    return bits, np.float32(-val if sign else val)


@njit(cache=True)
def _roundf32(v):
    """C roundf (half away from zero) of a float32, as ggml's Q8_0 reference uses it."""
    a = abs(np.float64(v))
    f = math.floor(a)
    b = f + math.floor(2.0 * (a - f))
    return int(-b) if v < 0 else int(b)


# --------------------------------------------------------------------------------------
# block packing. Levels are kept as unsigned codes: Q4_0 0..15, Q5_0 0..31, Q4_1 0..15,
# Q5_1 0..31, Q8_0 stored as int8 (code = level & 0xFF).
# --------------------------------------------------------------------------------------
@njit(cache=True)
def _put_f16(out, r, b, bits):
    out[r, b] = bits & 0xFF
    out[r, b + 1] = (bits >> 8) & 0xFF


@njit(cache=True)
def _pack(kind, out, r, b, dbits, mbits, q):
    _put_f16(out, r, b, dbits)
    if kind == _Q8_0:
        for j in range(QK):
            out[r, b + 2 + j] = q[j] & 0xFF
        return
    p = b + 2
    if kind == _Q4_1 or kind == _Q5_1:
        _put_f16(out, r, p, mbits)
        p += 2
    if kind == _Q5_0 or kind == _Q5_1:
        qh = 0
        for j in range(QK):
            qh |= ((q[j] >> 4) & 1) << j
        for k in range(4):
            out[r, p + k] = (qh >> (8 * k)) & 0xFF
        p += 4
    for j in range(16):
        out[r, p + j] = (q[j] & 0x0F) | ((q[j + 16] & 0x0F) << 4)


# --------------------------------------------------------------------------------------
# reference (ggml quantize_row_*_ref) per block; fills q, returns (d, m) as float32
# --------------------------------------------------------------------------------------
@njit(cache=True)
def _ref_block(kind, x, i0, q):
    zero = np.float32(0.0)
    one = np.float32(1.0)
    if kind == _Q8_0:
        amax = zero
        for j in range(QK):
            ax = abs(x[i0 + j])
            if ax > amax:
                amax = ax
        d = amax / np.float32(127.0)
        idd = one / d if d != zero else zero
        for j in range(QK):
            q[j] = _roundf32(x[i0 + j] * idd)
        return d, zero
    if kind == _Q4_0 or kind == _Q5_0:
        # start from element 0 like NumPy's argmax (gguf-py): an all-zero block keeps the
        # sign of x[0] in max, so -0.0 blocks get d = +0 (ggml's C code gives -0; same values)
        mx = x[i0]
        amax = abs(mx)
        for j in range(1, QK):
            v = x[i0 + j]
            if abs(v) > amax:
                amax = abs(v)
                mx = v
        if kind == _Q4_0:
            d = mx / np.float32(-8.0)
            off = np.float32(8.5)
            top = 15
        else:
            d = mx / np.float32(-16.0)
            off = np.float32(16.5)
            top = 31
        idd = one / d if d != zero else zero
        for j in range(QK):
            t = int(x[i0 + j] * idd + off)  # float32 multiply, float32 add, truncate
            q[j] = min(max(t, 0), top)
        return d, zero
    # Q4_1 / Q5_1: min / max
    mn = x[i0]
    mx = x[i0]
    for j in range(1, QK):
        v = x[i0 + j]
        if v < mn:
            mn = v
        if v > mx:
            mx = v
    top = 15 if kind == _Q4_1 else 31
    d = (mx - mn) / np.float32(top)
    idd = one / d if d != zero else zero
    for j in range(QK):
        t = int((x[i0 + j] - mn) * idd + np.float32(0.5))
        q[j] = min(max(t, 0), top)
    return d, mn


@njit(cache=True)
def _level_offset(kind):
    if kind == _Q4_0:
        return 8
    if kind == _Q5_0:
        return 16
    return 0


@njit(cache=True)
def _block_err(kind, x, i0, w, q, dv, mv):
    """Weighted squared error of a block decoded exactly as the dequantizer does."""
    off = _level_offset(kind)
    err = 0.0
    for j in range(QK):
        if kind == _Q4_1 or kind == _Q5_1:
            y = dv * np.float32(q[j]) + mv
        else:
            y = dv * np.float32(q[j] - off)
        e = np.float64(x[i0 + j]) - np.float64(y)
        err += w[j] * e * e
    return err


# Candidate scoring only ranks candidates (the winner is re-evaluated exactly), so it may
# use float32 and reassociation: that lets LLVM vectorise the 32-element loops.
_FM = {"nsz", "arcp", "contract", "reassoc"}


@njit(cache=True, fastmath=_FM)
def _sym_sums(xb, wb, wx, iscale, lo, hi):
    sumlx = np.float32(0.0)
    suml2 = np.float32(0.0)
    for j in range(QK):
        l = np.floor(iscale * xb[j] + np.float32(0.5))
        l = lo if l < lo else l
        l = hi if l > hi else l
        sumlx += wx[j] * l
        suml2 += wb[j] * l * l
    return sumlx, suml2


@njit(cache=True, fastmath=_FM)
def _asym_sums(xb, wb, wx, iscale, mn, top):
    sum_l = np.float32(0.0)
    sum_l2 = np.float32(0.0)
    sum_xl = np.float32(0.0)
    zero = np.float32(0.0)
    for j in range(QK):
        l = np.floor(iscale * (xb[j] - mn) + np.float32(0.5))
        l = zero if l < zero else l
        l = top if l > top else l
        sum_l += wb[j] * l
        sum_l2 += wb[j] * l * l
        sum_xl += wx[j] * l
    return sum_l, sum_l2, sum_xl


# The final fit decides bytes, so its decoded value y must be the decoder's float32 one:
# reassociation only (for the sums), no contraction into fused multiply-adds.
@njit(cache=True, fastmath={"nsz", "reassoc"})
def _requant(xb, w, inv, dv, mv, lo, hi, lv):
    """Levels nearest to (x - mv) / dv, clamped to [lo, hi], into lv. Returns the weighted
    squared error of the decoded block and the sums (w l, w l^2, w l x) for a refit."""
    err = 0.0
    s_l = 0.0
    s_l2 = 0.0
    s_xl = 0.0
    m64 = np.float64(mv)
    for j in range(QK):
        v = np.float64(xb[j])
        l = np.floor((v - m64) * inv + 0.5)
        l = lo if l < lo else l
        l = hi if l > hi else l
        lv[j] = l
        y = dv * np.float32(l) + mv
        e = v - np.float64(y)
        err += w[j] * e * e
        s_l += w[j] * l
        s_l2 += w[j] * l * l
        s_xl += w[j] * l * v
    return err, s_l, s_l2, s_xl


# --------------------------------------------------------------------------------------
# search per block; returns (dbits, mbits, improved) and leaves codes in q when improved
# --------------------------------------------------------------------------------------
@njit(cache=True)
def _search_sym(kind, x, i0, w, xb, wb, wx, q, lv, best_err):
    if kind == _Q4_0:
        nmax = 8
    elif kind == _Q5_0:
        nmax = 16
    else:
        nmax = 128
    off = _level_offset(kind)  # code = level + off (Q8_0: level itself)
    amax = 0.0
    mx = 0.0
    for j in range(QK):
        v = np.float64(x[i0 + j])
        if abs(v) > amax:
            amax = abs(v)
            mx = v
    if amax == 0.0:
        return 0, 0, False
    best_obj = -1.0
    best_scale = 0.0
    lo = np.float32(-nmax)
    hi = np.float32(nmax - 1)
    for i in range(-9, 10):
        iscale = np.float32(-(nmax + 0.1 * i) / mx)
        sumlx, suml2 = _sym_sums(xb, wb, wx, iscale, lo, hi)
        if suml2 > 0.0 and np.float64(sumlx) * sumlx > best_obj * suml2:
            best_scale = np.float64(sumlx) / suml2
            best_obj = best_scale * sumlx
    if best_scale == 0.0:
        return 0, 0, False
    improved = False
    dbits = 0
    lo = np.float64(-nmax)
    hi = np.float64(nmax - 1)
    # two rounds: fit -> round scale to fp16 -> re-derive levels -> refit on those levels
    for _ in range(2):
        bits, dv = f32_to_f16(np.float32(best_scale))
        if dv == 0 or not math.isfinite(dv):
            break
        err, _sl, suml2, sumlx = _requant(xb, w, 1.0 / np.float64(dv), dv, np.float32(0.0), lo, hi, lv)
        if err < best_err:
            best_err = err
            improved = True
            dbits = bits
            for j in range(QK):
                q[j] = int(lv[j]) + off
        if suml2 <= 0.0:
            break
        best_scale = sumlx / suml2
    return dbits, 0, improved


@njit(cache=True)
def _search_asym(kind, x, i0, w, xb, wb, wx, q, lv, best_err):
    nmax = 15 if kind == _Q4_1 else 31
    mn = np.float64(x[i0])
    mx = mn
    sum_w = 0.0
    sum_x = 0.0
    sum_x2 = 0.0
    for j in range(QK):
        v = np.float64(x[i0 + j])
        mn = min(mn, v)
        mx = max(mx, v)
        sum_w += w[j]
        sum_x += w[j] * v
        sum_x2 += w[j] * v * v
    if mx <= mn or sum_w <= 0.0:
        return 0, 0, False
    best_obj = np.inf
    bs = 0.0
    bm = 0.0
    mn32 = np.float32(mn)
    top = np.float32(nmax)
    for i in range(37):  # llama.cpp quantize_row_q4_1_impl: rmin -0.9, rdelta 0.05, 36 steps
        iscale = np.float32((-0.9 + 0.05 * i + nmax) / (mx - mn))
        f_l, f_l2, f_xl = _asym_sums(xb, wb, wx, iscale, mn32, top)
        sum_l = np.float64(f_l)
        sum_l2 = np.float64(f_l2)
        sum_xl = np.float64(f_xl)
        D = sum_w * sum_l2 - sum_l * sum_l
        if D > 0.0:
            s = (sum_w * sum_xl - sum_x * sum_l) / D
            m = (sum_l2 * sum_x - sum_l * sum_xl) / D
            if s > 0.0:
                obj = (s * s * sum_l2 + 2.0 * s * m * sum_l + m * m * sum_w
                       - 2.0 * s * sum_xl - 2.0 * m * sum_x + sum_x2)
                if obj < best_obj:
                    best_obj = obj
                    bs = s
                    bm = m
    if bs <= 0.0:
        return 0, 0, False
    improved = False
    dbits = 0
    mbits = 0
    for _ in range(2):
        b1, dv = f32_to_f16(np.float32(bs))
        b2, mv = f32_to_f16(np.float32(bm))
        if dv <= 0 or not math.isfinite(dv) or not math.isfinite(mv):
            break
        err, sum_l, sum_l2, sum_xl = _requant(xb, w, 1.0 / np.float64(dv), dv, mv, 0.0, np.float64(nmax), lv)
        if err < best_err:
            best_err = err
            improved = True
            dbits = b1
            mbits = b2
            for j in range(QK):
                q[j] = int(lv[j])
        D = sum_w * sum_l2 - sum_l * sum_l
        if D <= 0.0:
            break
        bs = (sum_w * sum_xl - sum_x * sum_l) / D
        bm = (sum_l2 * sum_x - sum_l * sum_xl) / D
        if bs <= 0.0:
            break
    return dbits, mbits, improved


# --------------------------------------------------------------------------------------
# row kernels
# --------------------------------------------------------------------------------------
@njit(cache=True)
def _type_size(kind):
    if kind == _Q4_0:
        return 18
    if kind == _Q4_1:
        return 20
    if kind == _Q5_0:
        return 22
    if kind == _Q5_1:
        return 24
    return 34


@njit(parallel=True, cache=True)
def _quantize_ref(kind, x, out):
    rows, cols = x.shape
    ts = _type_size(kind)
    for r in prange(rows):
        q = np.empty(QK, np.int64)
        xr = x[r]
        for ib in range(cols // QK):
            d, m = _ref_block(kind, xr, ib * QK, q)
            dbits, _dv = f32_to_f16(d)
            mbits, _mv = f32_to_f16(m)
            _pack(kind, out, r, ib * ts, dbits, mbits, q)


@njit(parallel=True, cache=True)
def _quantize_search(kind, x, imat, use_imat, wmode, out):
    rows, cols = x.shape
    ts = _type_size(kind)
    for r in prange(rows):
        q = np.empty(QK, np.int64)
        lv = np.empty(QK, np.float64)
        w = np.empty(QK, np.float64)
        xb = np.empty(QK, np.float32)
        wb = np.empty(QK, np.float32)
        wx = np.empty(QK, np.float32)
        xr = x[r]
        sigma2 = 0.0
        for j in range(cols):
            sigma2 += np.float64(xr[j]) * np.float64(xr[j])
        sigma2 /= cols
        for ib in range(cols // QK):
            i0 = ib * QK
            for j in range(QK):
                v = np.float64(xr[i0 + j])
                if wmode == 0:
                    w[j] = math.sqrt(sigma2 + v * v)
                elif wmode == 1:
                    w[j] = v * v
                else:
                    w[j] = 1.0
                if use_imat:
                    w[j] *= np.float64(imat[i0 + j])
                xb[j] = xr[i0 + j]
                wb[j] = np.float32(w[j])
                wx[j] = np.float32(w[j] * v)
            d, m = _ref_block(kind, xr, i0, q)
            dbits, dv = f32_to_f16(d)
            mbits, mv = f32_to_f16(m)
            if math.isfinite(dv) and math.isfinite(mv):
                ref_err = _block_err(kind, xr, i0, w, q, dv, mv)
            else:
                ref_err = np.inf
            if kind == _Q4_1 or kind == _Q5_1:
                b1, b2, ok = _search_asym(kind, xr, i0, w, xb, wb, wx, q, lv, ref_err)
            else:
                b1, b2, ok = _search_sym(kind, xr, i0, w, xb, wb, wx, q, lv, ref_err)
            if ok:
                dbits = b1
                mbits = b2
            _pack(kind, out, r, ib * ts, dbits, mbits, q)


@njit(parallel=True, cache=True)
def _dequantize(kind, data, cols, tab, out):
    rows = data.shape[0]
    ts = _type_size(kind)
    for r in prange(rows):
        for ib in range(cols // QK):
            b = ib * ts
            o = ib * QK
            d = tab[np.int64(data[r, b]) | (np.int64(data[r, b + 1]) << 8)]
            if kind == _Q8_0:
                for j in range(QK):
                    out[r, o + j] = np.float32(np.int8(data[r, b + 2 + j])) * d
            elif kind == _Q4_0:
                for j in range(16):
                    c = data[r, b + 2 + j]
                    out[r, o + j] = d * np.float32(np.int64(c & 0x0F) - 8)
                    out[r, o + j + 16] = d * np.float32(np.int64(c >> 4) - 8)
            elif kind == _Q4_1:
                m = tab[np.int64(data[r, b + 2]) | (np.int64(data[r, b + 3]) << 8)]
                for j in range(16):
                    c = data[r, b + 4 + j]
                    out[r, o + j] = d * np.float32(c & 0x0F) + m
                    out[r, o + j + 16] = d * np.float32(c >> 4) + m
            elif kind == _Q5_0:
                qh = (np.int64(data[r, b + 2]) | (np.int64(data[r, b + 3]) << 8)
                      | (np.int64(data[r, b + 4]) << 16) | (np.int64(data[r, b + 5]) << 24))
                for j in range(16):
                    c = np.int64(data[r, b + 6 + j])
                    lo = (c & 0x0F) | (((qh >> j) & 1) << 4)
                    hi = (c >> 4) | (((qh >> (j + 16)) & 1) << 4)
                    out[r, o + j] = d * np.float32(lo - 16)
                    out[r, o + j + 16] = d * np.float32(hi - 16)
            else:  # Q5_1
                m = tab[np.int64(data[r, b + 2]) | (np.int64(data[r, b + 3]) << 8)]
                qh = (np.int64(data[r, b + 4]) | (np.int64(data[r, b + 5]) << 8)
                      | (np.int64(data[r, b + 6]) << 16) | (np.int64(data[r, b + 7]) << 24))
                for j in range(16):
                    c = np.int64(data[r, b + 8 + j])
                    lo = (c & 0x0F) | (((qh >> j) & 1) << 4)
                    hi = (c >> 4) | (((qh >> (j + 16)) & 1) << 4)
                    out[r, o + j] = d * np.float32(lo) + m
                    out[r, o + j + 16] = d * np.float32(hi) + m


@njit(parallel=True, cache=True)
def _count_nonfinite(x):
    rows, cols = x.shape
    n = 0
    for r in prange(rows):
        c = 0
        for j in range(cols):
            v = x[r, j]
            if not (v - v == 0):  # false for inf and nan
                c += 1
        n += c
    return n


# --------------------------------------------------------------------------------------
# QuantType classes
# --------------------------------------------------------------------------------------
class _Legacy(QuantType):
    block_size = QK
    kind = -1

    def quantize(self, x, imatrix=None, search=False):
        """float32 (rows, cols) -> uint8 (rows, row_bytes). imatrix=None and search=False:
        ggml's reference quantizer, bit for bit; otherwise the weighted least-squares search."""
        if np.ndim(x) == 0:
            raise QuantError(f"{self.name}: cannot quantize a scalar, need rows of {QK} values")
        x = as_rows(x)
        rows, cols = x.shape
        rb = self.row_bytes(cols)
        if _count_nonfinite(x):
            raise QuantError(f"{self.name}: input contains NaN or infinite values")
        out = np.empty((rows, rb), np.uint8)
        if imatrix is None and not search:
            _quantize_ref(self.kind, x, out)
            return out
        if imatrix is not None:
            imat = np.ascontiguousarray(imatrix, dtype=np.float32).reshape(-1)
            if imat.shape[0] != cols:
                raise QuantError(f"{self.name}: importance matrix has {imat.shape[0]} entries, expected {cols}")
            if not np.all(np.isfinite(imat)) or np.any(imat < 0):
                raise QuantError(f"{self.name}: importance matrix must be finite and non-negative")
            _quantize_search(self.kind, x, imat, True, 0, out)
        else:
            _quantize_search(self.kind, x, np.ones(cols, np.float32), False, NO_IMATRIX_WMODE[self.kind], out)
        return out

    def dequantize(self, data, cols):
        from .floats import _check_raw
        data = _check_raw(self, data, cols)
        out = np.empty((data.shape[0], int(cols)), np.float32)
        _dequantize(self.kind, data, int(cols), F16_TO_F32, out)
        return out


class _Q4_0T(_Legacy):
    name, ggml_id, type_size, kind = "Q4_0", 2, 18, _Q4_0
    grid_f16_at = 0  # d


class _Q4_1T(_Legacy):
    name, ggml_id, type_size, kind = "Q4_1", 3, 20, _Q4_1
    grid_f16_at, grid_min_f16_at = 0, 2  # d, m


class _Q5_0T(_Legacy):
    name, ggml_id, type_size, kind = "Q5_0", 6, 22, _Q5_0
    grid_f16_at = 0  # d


class _Q5_1T(_Legacy):
    name, ggml_id, type_size, kind = "Q5_1", 7, 24, _Q5_1
    grid_f16_at, grid_min_f16_at = 0, 2  # d, m


class _Q8_0T(_Legacy):
    name, ggml_id, type_size, kind = "Q8_0", 8, 34, _Q8_0
    _TABLE = np.arange(-128, 128, dtype=np.float32)
    grid_f16_at = 0  # d

    def fixed_grid(self, q):
        return self.d_grid(q, self._TABLE)

    def with_codes(self, q, codes):
        q = q.copy()
        q[:, 2:] = (codes.astype(np.int64) - 128).astype(np.int8).view(np.uint8)
        return q


Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = _Q4_0T(), _Q4_1T(), _Q5_0T(), _Q5_1T(), _Q8_0T()

from . import register  # noqa: E402

for _qt in (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0):
    register(_qt)
