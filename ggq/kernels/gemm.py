"""Prompt-batch matmul with 8-bit activations: Y (n, rows) = X (n, cols) @ W.T, W quantized.

What llama.cpp does for a batch, in ggq's own layout. Per call:
1. quantize_rows: each row of X to int8 per 32 (the values the decode matvec uses: round(x /
   d), d = absmax / 127), plus per-block sums (int of the codes, float of x) for the bias and
   min terms; rows padded with zeros to a multiple of NT.
2. Per group of 16 weight rows (one parallel task): pack_<type> decodes the group's blocks into
   unsigned codes, interleaved so that 4 consecutive codes of 16 rows fill one 512-bit vector
   (codes[block][quad][row][4]), and one float scale per block and row (plus a min for the
   types with one). Every GGML type is such a block: 32 elements for the legacy types and the
   sub-blocks of Q4_K/Q5_K, 16 for the sub-blocks of Q2_K/Q3_K/Q6_K:
       w = dsc * (code - bias) + msc
3. The group times NT activation rows at a time (tile* intrinsics): per block and row the
   integer dot sum of codes and activation bytes (vpdpbusd: 4 byte products per int32 lane,
   each lane one weight row), started at -bias * (sum of the block's activation codes), then
       y += dsc * xd * isum  (+ msc * exact float sum of the block's x)
   in 16 float lanes (16 rows) per activation row.
The integer sums are exact; only float rounding differs from the decode matvec (which sums the
same products per row). Two flavours give the same integer sums: vpdpbusd (AVX512-VNNI) and
generic vector IR; the flavour is the dtype of the `flavour` argument (uint8: VNNI), so each
compiles and caches on its own.
"""
from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from ..jit_cache import guard
from .common import HAS_VNNI, QK, _ok, f16
from .kquants import _scale_min_k4
from ..quants.iquants import KVALUES_IQ4NL

GROUP = 16  # weight rows per packed group: one 512-bit vector of int32 / float32 lanes
NT = 8      # activation rows per tile call


# ---------------------------------------------------------------------------------------
# activations

# reassociation lets the max and the sums vectorize; xq and xd do not depend on the order (the
# max is exact) and stay those of quantize_act8 (no reciprocal approximations: no "arcp")
@njit(cache=True, nogil=True, fastmath={"reassoc", "nsz", "nnan", "ninf"})
def quantize_rows(x, xq, xd, xs16, xs32, xb16, xb32):
    """x float32 (n, cols) -> xq int8 (n, cols) per 32: round(x / d), d = absmax / 127
    (common.quantize_act8's values), xd = d; xs16/xs32: float sums of x per 16 / 32 (the 32
    sum is the two 16 sums added, as quantize_act8); xb16/xb32: int sums of xq per 16 / 32."""
    n, cols = x.shape
    nb = cols // QK
    for i in range(n):
        for b in range(nb):
            o = b * QK
            amax = np.float32(0.0)
            s0 = np.float32(0.0)
            s1 = np.float32(0.0)
            for k in range(16):
                v = x[i, o + k]
                amax = max(amax, abs(v))
                s0 += v
            for k in range(16, 32):
                v = x[i, o + k]
                amax = max(amax, abs(v))
                s1 += v
            xs16[i, 2 * b] = s0
            xs16[i, 2 * b + 1] = s1
            xs32[i, b] = s0 + s1
            d = amax / np.float32(127.0)
            xd[i, b] = d
            inv = np.float32(1.0) / d if d > 0 else np.float32(0.0)
            t0 = np.int32(0)
            t1 = np.int32(0)
            for k in range(16):  # rint: round half to even, as np.round
                q = np.int32(np.rint(x[i, o + k] * inv))
                xq[i, o + k] = q
                t0 += q
            for k in range(16, 32):
                q = np.int32(np.rint(x[i, o + k] * inv))
                xq[i, o + k] = q
                t1 += q
            xb16[i, 2 * b] = t0
            xb16[i, 2 * b + 1] = t1
            xb32[i, b] = t0 + t1


# ---------------------------------------------------------------------------------------
# the tile intrinsics: out[t0:t0+NT, c0:c0+16] = packed group times activation rows t0..

def _tile_intrinsic(B, with_min):
    nq = B // 4  # 4-byte quads per block

    def typer(typingctx, codes, dsc, msc, nblk, bias, xq, xd, xs, xb, t0, out, c0, flavour):
        if not _ok(codes, dsc, msc, xq, xd, xs, xb, out, flavour):
            return None
        ip = types.intp
        sig = types.void(codes, dsc, msc, ip, ip, xq, xd, xs, xb, ip, out, ip, flavour)
        return sig, _codegen(flavour.dtype == types.uint8)

    def _codegen(vnni):
        def codegen(context, builder, signature, args):
            tys = signature.args
            i8, i32, f32 = ir.IntType(8), ir.IntType(32), ir.FloatType()
            v16i32, v16f = ir.VectorType(i32, 16), ir.VectorType(f32, 16)

            def arr(i):
                return context.make_array(tys[i])(context, builder, args[i])

            cp = builder.bitcast(arr(0).data, i8.as_pointer())  # codes: byte offsets
            dp, mp = arr(1).data, arr(2).data
            xqa, xda, xsa, xba, oa = arr(5), arr(6), arr(7), arr(8), arr(10)
            nblk, bias, t0, c0 = args[3], args[4], args[9], args[11]
            ity = nblk.type

            def k(v):
                return ir.Constant(ity, v)

            def row_stride(a):  # elements per row of a C-contiguous 2-D array
                return builder.extract_value(a.shape, 1)

            ldx, ldd, lds, ldo = row_stride(xqa), row_stride(xda), row_stride(xsa), row_stride(oa)

            def vload(ptr, off, vty, align=1):
                return builder.load(builder.bitcast(builder.gep(ptr, [off]), vty.as_pointer()), align=align)

            def splat(val, n):
                v = builder.insert_element(ir.Constant(ir.VectorType(val.type, n), ir.Undefined), val,
                                           ir.Constant(i32, 0))
                return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(i32, n), [0] * n))

            def shuf(a, idx):
                return builder.shuffle_vector(a, a, ir.Constant(ir.VectorType(i32, len(idx)), idx))

            if vnni:
                dpb = cgutils.get_or_insert_function(
                    builder.module, ir.FunctionType(v16i32, [v16i32, v16i32, v16i32]),
                    "llvm.x86.avx512.vpdpbusd.512")

            def dot4(acc, wv, x4):
                """acc + per lane: sum of 4 (unsigned code byte * signed activation byte)"""
                if vnni:
                    return builder.call(dpb, [acc, wv, splat(x4, 16)])
                w64 = builder.zext(builder.bitcast(wv, ir.VectorType(i8, 64)), ir.VectorType(i32, 64))
                x64 = builder.sext(shuf(builder.bitcast(x4, ir.VectorType(i8, 4)), [0, 1, 2, 3] * 16),
                                   ir.VectorType(i32, 64))
                m = builder.mul(w64, x64)
                s = builder.add(shuf(m, list(range(0, 64, 2))), shuf(m, list(range(1, 64, 2))))
                s = builder.add(shuf(s, list(range(0, 32, 2))), shuf(s, list(range(1, 32, 2))))
                return builder.add(acc, s)

            contract = ("contract",)
            rows_t = [builder.add(t0, k(t)) for t in range(NT)]
            accs = [cgutils.alloca_once_value(builder, ir.Constant(v16f, [0.0] * 16)) for _ in range(NT)]
            nbias = builder.trunc(builder.neg(bias), i32)
            with cgutils.for_range(builder, nblk) as loop:
                b = loop.index
                sb = [builder.add(builder.mul(r, lds), b) for r in rows_t]  # block b of row t in xs, xb
                xoff = [builder.add(builder.mul(r, ldx), builder.mul(b, k(B))) for r in rows_t]
                acc = [splat(builder.mul(builder.load(builder.gep(xba.data, [o])), nbias), 16) for o in sb]
                cb = builder.mul(b, k(nq * GROUP * 4))
                for q in range(nq):
                    wv = vload(cp, builder.add(cb, k(q * GROUP * 4)), v16i32)
                    for t in range(NT):
                        x4 = vload(xqa.data, builder.add(xoff[t], k(4 * q)), i32)
                        acc[t] = dot4(acc[t], wv, x4)
                dv = vload(dp, builder.mul(b, k(GROUP)), v16f, 4)
                if with_min:
                    mv = vload(mp, builder.mul(b, k(GROUP)), v16f, 4)
                db = b if B == QK else builder.lshr(b, k(1))  # activation scale block (per 32)
                for t in range(NT):
                    s = builder.load(builder.gep(xda.data, [builder.add(builder.mul(rows_t[t], ldd), db)]))
                    f = builder.fmul(builder.sitofp(acc[t], v16f), builder.fmul(dv, splat(s, 16)), flags=contract)
                    a = builder.fadd(builder.load(accs[t]), f, flags=contract)
                    if with_min:
                        xs = builder.load(builder.gep(xsa.data, [sb[t]]))
                        a = builder.fadd(a, builder.fmul(mv, splat(xs, 16), flags=contract), flags=contract)
                    builder.store(a, accs[t])
            for t in range(NT):
                o = builder.add(builder.mul(rows_t[t], ldo), c0)
                builder.store(builder.load(accs[t]),
                              builder.bitcast(builder.gep(oa.data, [o]), v16f.as_pointer()), align=4)
            return context.get_dummy_value()

        return codegen

    typer.__name__ = typer.__qualname__ = f"tile{B}" + ("m" if with_min else "")
    return intrinsic(typer)


tile32, tile32m, tile16, tile16m = (_tile_intrinsic(32, False), _tile_intrinsic(32, True),
                                    _tile_intrinsic(16, False), _tile_intrinsic(16, True))


# ---------------------------------------------------------------------------------------
# packing: group rows r0..r0+15 of W into codes (uint32 words [block][quad][row]), dsc, msc
# [block][row]; rows past the end get zero codes and scales.

M4 = np.uint32(0x0F0F0F0F)


@intrinsic
def _load_u32(typingctx, w, o):
    """4 bytes of a 1-D uint8 array at byte offset o, little-endian, as one unaligned load"""
    if not (isinstance(w, types.Array) and w.dtype == types.uint8 and isinstance(o, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        a = context.make_array(signature.args[0])(context, builder, args[0])
        i32 = ir.IntType(32)
        v = builder.load(builder.bitcast(builder.gep(a.data, [args[1]]), i32.as_pointer()), align=1)
        if not _LITTLE_ENDIAN:
            v = builder.call(cgutils.get_or_insert_function(builder.module, ir.FunctionType(i32, [i32]),
                                                            "llvm.bswap.i32"), [v])
        return v

    return types.uint32(w, types.intp), codegen


_LITTLE_ENDIAN = sys.byteorder == "little"


@njit(inline="always")
def _u32(w, r, o):
    # w: the flat (C-contiguous) weights, r: the row's first byte
    return _load_u32(w, r + o)


# bits 0..3 of an index -> bit 0 of bytes 0..3
_SPREAD4 = np.array([sum(((v >> i) & 1) << (8 * i) for i in range(4)) for v in range(16)], np.uint32)


@njit(inline="always")
def _spread4(v):
    return _SPREAD4[v & np.uint32(15)]


@njit(inline="always")
def _put(codes, b, q, nq, r, word):
    codes[(b * nq + q) * GROUP + r] = word


@njit(inline="always")
def _clear(codes, dsc, msc, r):
    for i in range(r, codes.size, GROUP):
        codes[i] = 0
    for i in range(r, dsc.size, GROUP):
        dsc[i] = 0.0
        msc[i] = 0.0


@njit(inline="always")
def _pack_legacy(w, rb, r0, rows, codes, dsc, msc, bs, doff, moff, qhoff, qsoff, signed):
    nb = dsc.size // GROUP
    for r in range(GROUP):
        if r0 + r >= rows:
            _clear(codes, dsc, msc, r)
            continue
        row = (r0 + r) * rb
        for b in range(nb):
            o = b * bs
            dsc[b * GROUP + r] = f16(w[row + o + doff], w[row + o + doff + 1])
            msc[b * GROUP + r] = f16(w[row + o + moff], w[row + o + moff + 1]) if moff >= 0 else np.float32(0.0)
            if signed:  # Q8_0: int8 codes + 128 as unsigned bytes
                for q in range(8):
                    _put(codes, b, q, 8, r, _u32(w, row, o + qsoff + 4 * q) ^ np.uint32(0x80808080))
                continue
            qh = _u32(w, row, o + qhoff) if qhoff >= 0 else np.uint32(0)
            for q in range(4):
                v = _u32(w, row, o + qsoff + 4 * q)
                lo = v & M4
                hi = (v >> np.uint32(4)) & M4
                if qhoff >= 0:
                    lo |= _spread4(qh >> np.uint32(4 * q)) << np.uint32(4)
                    hi |= _spread4(qh >> np.uint32(16 + 4 * q)) << np.uint32(4)
                _put(codes, b, q, 8, r, lo)
                _put(codes, b, q + 4, 8, r, hi)


@njit(inline="always")
def _pack_q45_k(w, rb, r0, rows, codes, dsc, msc, bs, five):
    nsb = dsc.size // (8 * GROUP)
    qs = 48 if five else 16
    for r in range(GROUP):
        if r0 + r >= rows:
            _clear(codes, dsc, msc, r)
            continue
        row = (r0 + r) * rb
        for s in range(nsb):
            o = s * bs
            d = f16(w[row + o], w[row + o + 1])
            dmin = f16(w[row + o + 2], w[row + o + 3])
            for j in range(8):
                sc, mn = _scale_min_k4(w, row + o + 4, j)
                dsc[(8 * s + j) * GROUP + r] = d * np.float32(sc)
                msc[(8 * s + j) * GROUP + r] = -(dmin * np.float32(mn))
            for i in range(4):  # sub-blocks 2i (low nibbles) and 2i+1 (high) share 32 bytes
                for q in range(8):
                    v = _u32(w, row, o + qs + 32 * i + 4 * q)
                    lo = v & M4
                    hi = (v >> np.uint32(4)) & M4
                    if five:
                        h = _u32(w, row, o + 16 + 4 * q)
                        lo |= ((h >> np.uint32(2 * i)) & np.uint32(0x01010101)) << np.uint32(4)
                        hi |= ((h >> np.uint32(2 * i + 1)) & np.uint32(0x01010101)) << np.uint32(4)
                    _put(codes, 8 * s + 2 * i, q, 8, r, lo)
                    _put(codes, 8 * s + 2 * i + 1, q, 8, r, hi)


@njit(inline="always")
def _pack_q6_k(w, rb, r0, rows, codes, dsc, msc):
    nsb = dsc.size // (16 * GROUP)
    for r in range(GROUP):
        if r0 + r >= rows:
            _clear(codes, dsc, msc, r)
            continue
        row = (r0 + r) * rb
        for s in range(nsb):
            o = s * 210
            d = f16(w[row + o + 208], w[row + o + 209])
            for j in range(16):
                dsc[(16 * s + j) * GROUP + r] = d * np.float32(np.int8(w[row + o + 192 + j]))
                msc[(16 * s + j) * GROUP + r] = 0.0
            for n in range(2):  # halves of 128: 4 groups of 32 = 8 blocks of 16
                for q in range(8):  # l = 4q .. 4q+3 of 0..31
                    l0 = _u32(w, row, o + 64 * n + 4 * q)
                    l1 = _u32(w, row, o + 64 * n + 32 + 4 * q)
                    h = _u32(w, row, o + 128 + 32 * n + 4 * q)
                    m3 = np.uint32(0x03030303)
                    c = ((l0 & M4) | ((h & m3) << np.uint32(4)),
                         (l1 & M4) | (((h >> np.uint32(2)) & m3) << np.uint32(4)),
                         ((l0 >> np.uint32(4)) & M4) | (((h >> np.uint32(4)) & m3) << np.uint32(4)),
                         ((l1 >> np.uint32(4)) & M4) | (((h >> np.uint32(6)) & m3) << np.uint32(4)))
                    for g in range(4):  # element 128n + 32g + l: block 16s + 8n + 2g + l // 16
                        _put(codes, 16 * s + 8 * n + 2 * g + q // 4, q % 4, 4, r, c[g])


@njit(inline="always")
def _pack_q3_k(w, rb, r0, rows, codes, dsc, msc):
    nsb = dsc.size // (16 * GROUP)
    k1, k2 = np.uint32(0x03030303), np.uint32(0x0F0F0F0F)
    for r in range(GROUP):
        if r0 + r >= rows:
            _clear(codes, dsc, msc, r)
            continue
        row = (r0 + r) * rb
        for s in range(nsb):
            o = s * 110
            d = f16(w[row + o + 108], w[row + o + 109])
            a0, a1, tmp = _u32(w, row, o + 96), _u32(w, row, o + 100), _u32(w, row, o + 104)
            aux = ((a0 & k2) | ((tmp & k1) << np.uint32(4)),
                   (a1 & k2) | (((tmp >> np.uint32(2)) & k1) << np.uint32(4)),
                   ((a0 >> np.uint32(4)) & k2) | (((tmp >> np.uint32(4)) & k1) << np.uint32(4)),
                   ((a1 >> np.uint32(4)) & k2) | (((tmp >> np.uint32(6)) & k1) << np.uint32(4)))
            for j in range(16):
                sc = np.int32((aux[j // 4] >> np.uint32(8 * (j % 4))) & np.uint32(255)) - 32
                dsc[(16 * s + j) * GROUP + r] = d * np.float32(sc)
                msc[(16 * s + j) * GROUP + r] = 0.0
            for n in range(2):
                for j in range(4):
                    for q in range(8):
                        v = (_u32(w, row, o + 32 + 32 * n + 4 * q) >> np.uint32(2 * j)) & k1
                        hb = (_u32(w, row, o + 4 * q) >> np.uint32(4 * n + j)) & np.uint32(0x01010101)
                        _put(codes, 16 * s + 8 * n + 2 * j + q // 4, q % 4, 4, r, v | (hb << np.uint32(2)))


@njit(inline="always")
def _pack_q2_k(w, rb, r0, rows, codes, dsc, msc):
    nsb = dsc.size // (16 * GROUP)
    k1 = np.uint32(0x03030303)
    for r in range(GROUP):
        if r0 + r >= rows:
            _clear(codes, dsc, msc, r)
            continue
        row = (r0 + r) * rb
        for s in range(nsb):
            o = s * 84
            d = f16(w[row + o + 80], w[row + o + 81])
            dmin = f16(w[row + o + 82], w[row + o + 83])
            for j in range(16):
                sc = w[row + o + j]
                dsc[(16 * s + j) * GROUP + r] = d * np.float32(sc & 15)
                msc[(16 * s + j) * GROUP + r] = -(dmin * np.float32(sc >> 4))
            for n in range(2):
                for j in range(4):
                    for q in range(8):
                        v = (_u32(w, row, o + 16 + 32 * n + 4 * q) >> np.uint32(2 * j)) & k1
                        _put(codes, 16 * s + 8 * n + 2 * j + q // 4, q % 4, 4, r, v)


# IQ4_NL / IQ4_XS: each nibble indexes the int8 table; packed as table value + 128 (unsigned
# bytes 1..241, like Q8_0's codes) with bias 128
_IQ4_U8 = (KVALUES_IQ4NL.astype(np.int32) + 128).astype(np.uint32)


@njit(inline="always")
def _iq4_words(w, row, o, codes, b, r):
    """the 16 code bytes at w[row + o:] -> 8 words of 4 biased table values (elements 4q..4q+3
    from the low nibbles, 16+4q.. from the high ones) into block b, row r"""
    for q in range(4):
        lo = np.uint32(0)
        hi = np.uint32(0)
        for k in range(4):
            c = w[row + o + 4 * q + k]
            lo |= _IQ4_U8[c & 15] << np.uint32(8 * k)
            hi |= _IQ4_U8[c >> 4] << np.uint32(8 * k)
        _put(codes, b, q, 8, r, lo)
        _put(codes, b, q + 4, 8, r, hi)


@njit(inline="always")
def _pack_iq4_nl(w, rb, r0, rows, codes, dsc, msc):
    nb = dsc.size // GROUP
    for r in range(GROUP):
        if r0 + r >= rows:
            _clear(codes, dsc, msc, r)
            continue
        row = (r0 + r) * rb
        for b in range(nb):
            o = b * 18
            dsc[b * GROUP + r] = f16(w[row + o], w[row + o + 1])
            msc[b * GROUP + r] = 0.0
            _iq4_words(w, row, o + 2, codes, b, r)


@njit(inline="always")
def _pack_iq4_xs(w, rb, r0, rows, codes, dsc, msc):
    nsb = dsc.size // (8 * GROUP)
    for r in range(GROUP):
        if r0 + r >= rows:
            _clear(codes, dsc, msc, r)
            continue
        row = (r0 + r) * rb
        for s in range(nsb):
            o = s * 136
            d = f16(w[row + o], w[row + o + 1])
            sh = np.int32(w[row + o + 2]) | (np.int32(w[row + o + 3]) << 8)
            for ib in range(8):
                ls = ((np.int32(w[row + o + 4 + ib // 2]) >> (4 * (ib % 2))) & 15) | (((sh >> (2 * ib)) & 3) << 4)
                dsc[(8 * s + ib) * GROUP + r] = d * np.float32(ls - 32)
                msc[(8 * s + ib) * GROUP + r] = 0.0
                _iq4_words(w, row, o + 8 + 16 * ib, codes, 8 * s + ib, r)


# ---------------------------------------------------------------------------------------
# kernels: (w uint8 (rows, row_bytes), groups g0..g1, activations from quantize_rows, out
# float32 (npad, rows rounded up to 16), flavour): out[:, 16 g0 : 16 g1]. Serial and without
# the GIL: gemm() runs one range per thread (a parallel=True kernel per type took 2 s longer to
# compile, and compile time is user-facing). Written out per type (a factory-made kernel would
# miss Numba's disk cache every run).

@njit(inline="always")
def _scratch(nblk, B):
    return (np.empty(nblk * (B // 4) * GROUP, np.uint32), np.empty(nblk * GROUP, np.float32),
            np.empty(nblk * GROUP, np.float32))


@njit(nogil=True, cache=True)
def gemm_q8_0(w, g0, g1, xq, xd, xs, xb, out, flavour):
    nblk = xq.shape[1] // 32
    codes, dsc, msc = _scratch(nblk, 32)
    wf = w.reshape(-1)
    for g in range(g0, g1):
        _pack_legacy(wf, w.shape[1], g * GROUP, w.shape[0], codes, dsc, msc, 34, 0, -1, -1, 2, True)
        for t0 in range(0, xq.shape[0], NT):
            tile32(codes, dsc, msc, nblk, 128, xq, xd, xs, xb, t0, out, g * GROUP, flavour)


@njit(nogil=True, cache=True)
def gemm_q4_0(w, g0, g1, xq, xd, xs, xb, out, flavour):
    nblk = xq.shape[1] // 32
    codes, dsc, msc = _scratch(nblk, 32)
    wf = w.reshape(-1)
    for g in range(g0, g1):
        _pack_legacy(wf, w.shape[1], g * GROUP, w.shape[0], codes, dsc, msc, 18, 0, -1, -1, 2, False)
        for t0 in range(0, xq.shape[0], NT):
            tile32(codes, dsc, msc, nblk, 8, xq, xd, xs, xb, t0, out, g * GROUP, flavour)


@njit(nogil=True, cache=True)
def gemm_q4_1(w, g0, g1, xq, xd, xs, xb, out, flavour):
    nblk = xq.shape[1] // 32
    codes, dsc, msc = _scratch(nblk, 32)
    wf = w.reshape(-1)
    for g in range(g0, g1):
        _pack_legacy(wf, w.shape[1], g * GROUP, w.shape[0], codes, dsc, msc, 20, 0, 2, -1, 4, False)
        for t0 in range(0, xq.shape[0], NT):
            tile32m(codes, dsc, msc, nblk, 0, xq, xd, xs, xb, t0, out, g * GROUP, flavour)


@njit(nogil=True, cache=True)
def gemm_q5_0(w, g0, g1, xq, xd, xs, xb, out, flavour):
    nblk = xq.shape[1] // 32
    codes, dsc, msc = _scratch(nblk, 32)
    wf = w.reshape(-1)
    for g in range(g0, g1):
        _pack_legacy(wf, w.shape[1], g * GROUP, w.shape[0], codes, dsc, msc, 22, 0, -1, 2, 6, False)
        for t0 in range(0, xq.shape[0], NT):
            tile32(codes, dsc, msc, nblk, 16, xq, xd, xs, xb, t0, out, g * GROUP, flavour)


@njit(nogil=True, cache=True)
def gemm_q5_1(w, g0, g1, xq, xd, xs, xb, out, flavour):
    nblk = xq.shape[1] // 32
    codes, dsc, msc = _scratch(nblk, 32)
    wf = w.reshape(-1)
    for g in range(g0, g1):
        _pack_legacy(wf, w.shape[1], g * GROUP, w.shape[0], codes, dsc, msc, 24, 0, 2, 4, 8, False)
        for t0 in range(0, xq.shape[0], NT):
            tile32m(codes, dsc, msc, nblk, 0, xq, xd, xs, xb, t0, out, g * GROUP, flavour)


@njit(nogil=True, cache=True)
def gemm_q4_k(w, g0, g1, xq, xd, xs, xb, out, flavour):
    nblk = xq.shape[1] // 32
    codes, dsc, msc = _scratch(nblk, 32)
    wf = w.reshape(-1)
    for g in range(g0, g1):
        _pack_q45_k(wf, w.shape[1], g * GROUP, w.shape[0], codes, dsc, msc, 144, False)
        for t0 in range(0, xq.shape[0], NT):
            tile32m(codes, dsc, msc, nblk, 0, xq, xd, xs, xb, t0, out, g * GROUP, flavour)


@njit(nogil=True, cache=True)
def gemm_q5_k(w, g0, g1, xq, xd, xs, xb, out, flavour):
    nblk = xq.shape[1] // 32
    codes, dsc, msc = _scratch(nblk, 32)
    wf = w.reshape(-1)
    for g in range(g0, g1):
        _pack_q45_k(wf, w.shape[1], g * GROUP, w.shape[0], codes, dsc, msc, 176, True)
        for t0 in range(0, xq.shape[0], NT):
            tile32m(codes, dsc, msc, nblk, 0, xq, xd, xs, xb, t0, out, g * GROUP, flavour)


@njit(nogil=True, cache=True)
def gemm_q6_k(w, g0, g1, xq, xd, xs, xb, out, flavour):
    nblk = xq.shape[1] // 16
    codes, dsc, msc = _scratch(nblk, 16)
    wf = w.reshape(-1)
    for g in range(g0, g1):
        _pack_q6_k(wf, w.shape[1], g * GROUP, w.shape[0], codes, dsc, msc)
        for t0 in range(0, xq.shape[0], NT):
            tile16(codes, dsc, msc, nblk, 32, xq, xd, xs, xb, t0, out, g * GROUP, flavour)


@njit(nogil=True, cache=True)
def gemm_q3_k(w, g0, g1, xq, xd, xs, xb, out, flavour):
    nblk = xq.shape[1] // 16
    codes, dsc, msc = _scratch(nblk, 16)
    wf = w.reshape(-1)
    for g in range(g0, g1):
        _pack_q3_k(wf, w.shape[1], g * GROUP, w.shape[0], codes, dsc, msc)
        for t0 in range(0, xq.shape[0], NT):
            tile16(codes, dsc, msc, nblk, 4, xq, xd, xs, xb, t0, out, g * GROUP, flavour)


@njit(nogil=True, cache=True)
def gemm_q2_k(w, g0, g1, xq, xd, xs, xb, out, flavour):
    nblk = xq.shape[1] // 16
    codes, dsc, msc = _scratch(nblk, 16)
    wf = w.reshape(-1)
    for g in range(g0, g1):
        _pack_q2_k(wf, w.shape[1], g * GROUP, w.shape[0], codes, dsc, msc)
        for t0 in range(0, xq.shape[0], NT):
            tile16m(codes, dsc, msc, nblk, 0, xq, xd, xs, xb, t0, out, g * GROUP, flavour)


@njit(nogil=True, cache=True)
def gemm_iq4_nl(w, g0, g1, xq, xd, xs, xb, out, flavour):
    nblk = xq.shape[1] // 32
    codes, dsc, msc = _scratch(nblk, 32)
    wf = w.reshape(-1)
    for g in range(g0, g1):
        _pack_iq4_nl(wf, w.shape[1], g * GROUP, w.shape[0], codes, dsc, msc)
        for t0 in range(0, xq.shape[0], NT):
            tile32(codes, dsc, msc, nblk, 128, xq, xd, xs, xb, t0, out, g * GROUP, flavour)


@njit(nogil=True, cache=True)
def gemm_iq4_xs(w, g0, g1, xq, xd, xs, xb, out, flavour):
    nblk = xq.shape[1] // 32
    codes, dsc, msc = _scratch(nblk, 32)
    wf = w.reshape(-1)
    for g in range(g0, g1):
        _pack_iq4_xs(wf, w.shape[1], g * GROUP, w.shape[0], codes, dsc, msc)
        for t0 in range(0, xq.shape[0], NT):
            tile32(codes, dsc, msc, nblk, 128, xq, xd, xs, xb, t0, out, g * GROUP, flavour)


# name -> (kernel, block of the min/bias sums: 16 or 32)
GEMM = {"Q8_0": (gemm_q8_0, 32), "Q4_0": (gemm_q4_0, 32), "Q4_1": (gemm_q4_1, 32),
        "Q5_0": (gemm_q5_0, 32), "Q5_1": (gemm_q5_1, 32), "Q2_K": (gemm_q2_k, 16),
        "Q3_K": (gemm_q3_k, 16), "Q4_K": (gemm_q4_k, 32), "Q5_K": (gemm_q5_k, 32),
        "Q6_K": (gemm_q6_k, 16), "IQ4_NL": (gemm_iq4_nl, 32), "IQ4_XS": (gemm_iq4_xs, 32)}

FLAVOUR_VNNI = np.zeros(0, np.uint8)
FLAVOUR_GENERIC = np.zeros(0, np.int8)
FLAVOUR = FLAVOUR_VNNI if HAS_VNNI else FLAVOUR_GENERIC


PARALLEL_QUANTIZE_MIN = 1 << 15  # elements per thread below which one thread quantizes all


class Activations:
    """quantize_rows' buffers for n rows padded to a multiple of NT (one set per matmul input,
    reusable for every matrix that reads the same x)."""
    __slots__ = ("n", "xq", "xd", "xs16", "xs32", "xb16", "xb32")

    def __init__(self, x: np.ndarray):
        n, cols = x.shape
        npad = -(-n // NT) * NT
        nb = cols // QK
        self.n = n
        self.xq = np.zeros((npad, cols), np.int8)
        self.xd = np.zeros((npad, nb), np.float32)
        self.xs16 = np.zeros((npad, 2 * nb), np.float32)
        self.xs32 = np.zeros((npad, nb), np.float32)
        self.xb16 = np.zeros((npad, 2 * nb), np.int32)
        self.xb32 = np.zeros((npad, nb), np.int32)
        bufs = (self.xq, self.xd, self.xs16, self.xs32, self.xb16, self.xb32)
        nt = min(numba.get_num_threads(), n * cols // PARALLEL_QUANTIZE_MIN)
        _split(n, nt, lambda a, b: quantize_rows(x[a:b], *(t[a:b] for t in bufs)))


_pool: ThreadPoolExecutor | None = None


def _workers() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=max(1, (os.cpu_count() or 2) - 1), thread_name_prefix="ggq-gemm")
    return _pool


def gemm(name: str, w: np.ndarray, act: Activations, flavour=None, threads: int | None = None) -> np.ndarray:
    """float32 (npad, rows rounded up to 16): act's rows times W.T; the caller takes [:n, :rows].
    threads: how many ranges of row groups run at once (default: Numba's thread count)."""
    kernel, B = GEMM[name]
    groups = -(-w.shape[0] // GROUP)
    out = np.empty((act.xq.shape[0], groups * GROUP), np.float32)
    xs, xb = (act.xs16, act.xb16) if B == 16 else (act.xs32, act.xb32)
    fl = FLAVOUR if flavour is None else flavour
    _split(groups, threads or numba.get_num_threads(),
           lambda g0, g1: kernel(w, g0, g1, act.xq, act.xd, xs, xb, out, fl))
    return out


def _split(n: int, nt: int, run) -> None:
    """run(a, b) over min(nt, n) (at least 1) contiguous ranges of 0..n at once: this thread
    takes the first, pool threads the others (the kernels release the GIL)."""
    nt = max(1, min(nt, n))
    cuts = [n * i // nt for i in range(nt + 1)]
    jobs = [_workers().submit(run, a, b) for a, b in zip(cuts[1:-1], cuts[2:])]
    run(cuts[0], cuts[1])
    for j in jobs:
        j.result()


# the kernels inline common.py's f16, kquants.py's _scale_min_k4, the IQ4 table of
# quants/iquants.py and the intrinsics here: Numba alone would not see an edit there
guard([sys.modules[__name__]], [Path(__file__)] + [Path(__file__).with_name(f) for f in ("common.py", "kquants.py")]
      + [Path(__file__).parent.parent / "quants" / "iquants.py"], "gemm")
