"""Kernels for the non-uniform 4-bit types IQ4_NL (32-element blocks) and IQ4_XS (256-element
super-blocks of 8 such blocks with 6-bit sub-block scales), GGML layouts (spec/QUANTS-IQ.md).

matvec: activations quantized once per call to int8 blocks of 32 (common.quantize_act8, the
values every block type's matvec uses). Per 32-element block the 16 code bytes are split into
nibbles and looked up in the 16-entry table in vector registers (pshufb where the host has
SSSE3, a select chain elsewhere), giving 32 int8 weights; their integer dot with the
activation bytes is kept in 8 int32 lanes:
    y = sum_b d_b * xd_b * dot32(table[code], xq)        (IQ4_NL: d_b the block's fp16 d;
                                                          IQ4_XS: d * (ls_b - 32), ls_b in
                                                          integers, then times xd_b and d)
Two flavours with identical integer sums: AVX512-VNNI (vpdpbusd takes unsigned weight bytes:
the table is looked up biased by +128, and each lane starts at -128 * (sum of its 4 activation
codes)) and generic (sign-extended products, pair adds). MATVEC holds the one this host runs
(common.HAS_VNNI; GGQ_NO_VNNI=1 forces generic).
dequant: exact decode of a row range (tiles for BLAS with --exact, embeddings).
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
import llvmlite.binding as _llb
from numba import njit, prange
from numba.core import cgutils
from numba.extending import intrinsic

from ..quants.iquants import KVALUES_IQ4NL, iq4xs_sub_scale
from .common import HAS_VNNI, NR, PREFETCH, QK, _RowsIR, _f16_ir, _rows_signature, act8, f16, put_rows

_KV = KVALUES_IQ4NL.astype(np.float32)
# bytes per unit walked by one loop step of the row intrinsic, and 32-element blocks in it
_UNIT = {"iq4_nl": (18, 1), "iq4_xs": (136, 8)}


def _host_has_pshufb() -> bool:
    import platform
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        return bool(_llb.get_host_cpu_features().get("ssse3"))
    except Exception:  # pragma: no cover
        return False


HAS_PSHUFB = _host_has_pshufb()


def _iq4_rows_intrinsic(kind, vnni, pshufb=HAS_PSHUFB):
    """pshufb: look the table up with SSSE3's byte shuffle (else a select chain: any target)."""
    ubytes, nsub = _UNIT[kind]
    # the table as bytes: biased to unsigned for vpdpbusd, signed otherwise
    table = [int(v) + 128 for v in KVALUES_IQ4NL] if vnni else [int(v) for v in KVALUES_IQ4NL]

    def typer(typingctx, wa, r0, rows, rb, nunits, xq, xd, xp, xs):
        sig = _rows_signature(wa, xq, xd, xp, xs)
        return None if sig is None else (sig, codegen)

    def codegen(context, builder, signature, args):
        R = _RowsIR(context, builder, signature, args)
        wp, xqp, xdp, xpp, nu, offs, pfn = R.wp, R.xqp, R.xdp, R.xpp, R.nblocks, R.offs, R.pfn
        k, vload, splat, shuf = R.k, R.vload, R.splat, R.shuf
        i8, i16, i32, f32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.FloatType()
        v8i32, v8f, v16i8, v32i8 = (ir.VectorType(i32, 8), ir.VectorType(f32, 8), ir.VectorType(i8, 16),
                                    ir.VectorType(i8, 32))
        contract = ("contract",)
        tbl = ir.Constant(v16i8, [t & 0xFF for t in table])
        accs = [cgutils.alloca_once_value(builder, ir.Constant(v8f, [0.0] * 8)) for _ in range(NR)]
        if vnni:
            dpb = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(v8i32, [v8i32, v8i32, v8i32]), "llvm.x86.avx512.vpdpbusd.256")
        if pshufb:
            shuffle = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(v16i8, [v16i8, v16i8]), "llvm.x86.ssse3.pshuf.b.128")

        def lookup(idx):  # <16 x i8> indices 0..15 -> table bytes
            if pshufb:
                return builder.call(shuffle, [tbl, idx])
            out = ir.Constant(v16i8, [table[0] & 0xFF] * 16)
            for t in range(1, 16):
                hit = builder.icmp_unsigned("==", idx, ir.Constant(v16i8, [t] * 16))
                out = builder.select(hit, ir.Constant(v16i8, [table[t] & 0xFF] * 16), out)
            return out

        def block_dot(o, c):
            """int32 lanes of the 32 codes at byte o times activation block c"""
            v = vload(wp, o, v16i8, 1)
            lo = lookup(builder.and_(v, ir.Constant(v16i8, [15] * 16)))
            hi = lookup(builder.lshr(v, ir.Constant(v16i8, [4] * 16)))
            q = builder.shuffle_vector(lo, hi, ir.Constant(ir.VectorType(i32, 32), list(range(32))))
            xv = vload(xqp, builder.mul(c, k(QK)), v32i8, 1)
            if vnni:
                init = builder.mul(vload(xpp, builder.mul(c, k(8)), v8i32, 4), ir.Constant(v8i32, [-128] * 8))
                return builder.call(dpb, [init, builder.bitcast(q, v8i32), builder.bitcast(xv, v8i32)])
            m = builder.mul(builder.sext(q, ir.VectorType(i32, 32)), builder.sext(xv, ir.VectorType(i32, 32)))
            s = builder.add(shuf(m, list(range(0, 32, 2))), shuf(m, list(range(1, 32, 2))))
            return builder.add(shuf(s, list(range(0, 16, 2))), shuf(s, list(range(1, 16, 2))))

        with cgutils.for_range(builder, nu) as loop:
            u = loop.index
            base = builder.add(offs[0], builder.add(k(PREFETCH), builder.mul(u, k(NR * ubytes))))
            for j in range((NR * ubytes + 63) // 64):
                builder.call(pfn, [builder.gep(wp, [builder.add(base, k(64 * j))]),
                                   ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
            c0 = builder.mul(u, k(nsub))  # first activation block of the unit
            uo = builder.mul(u, k(ubytes))
            for r in range(NR):
                o = builder.add(offs[r], uo)
                d = _f16_ir(builder, vload(wp, o, i16, 1))
                if nsub == 1:
                    dot = block_dot(builder.add(o, k(2)), c0)
                    dd = builder.fmul(d, builder.load(builder.gep(xdp, [c0])))
                    t = builder.fmul(builder.sitofp(dot, v8f), splat(dd, 8), flags=contract)
                    builder.store(builder.fadd(builder.load(accs[r]), t, flags=contract), accs[r])
                    continue
                sh = builder.zext(vload(wp, builder.add(o, k(2)), i16, 1), i32)
                acc = None  # sum_b float(ls_b - 32 times lanes_b) * xd_b, then times d
                for ib in range(nsub):
                    c = builder.add(c0, k(ib))
                    sl = builder.zext(builder.load(builder.gep(wp, [builder.add(o, k(4 + ib // 2))])), i32)
                    ls = builder.or_(builder.and_(builder.lshr(sl, ir.Constant(i32, 4 * (ib % 2))), ir.Constant(i32, 15)),
                                     builder.shl(builder.and_(builder.lshr(sh, ir.Constant(i32, 2 * ib)),
                                                              ir.Constant(i32, 3)), ir.Constant(i32, 4)))
                    sc = builder.sub(ls, ir.Constant(i32, 32))  # quants.iquants.iq4xs_sub_scale, in IR
                    dot = builder.mul(block_dot(builder.add(o, k(8 + 16 * ib)), c), splat(sc, 8))
                    xdc = builder.load(builder.gep(xdp, [c]))
                    t = builder.fmul(builder.sitofp(dot, v8f), splat(xdc, 8), flags=contract)
                    acc = t if acc is None else builder.fadd(acc, t, flags=contract)
                builder.store(builder.fadd(builder.load(accs[r]), builder.fmul(acc, splat(d, 8), flags=contract),
                                           flags=contract), accs[r])
        outs = []
        for r in range(NR):
            a = builder.load(accs[r])
            for n in (4, 2, 1):
                a = builder.fadd(shuf(a, list(range(n))), shuf(a, list(range(n, 2 * n))))
            outs.append(builder.extract_element(a, ir.Constant(i32, 0)))
        return context.make_tuple(builder, signature.return_type, outs)

    typer.__name__ = typer.__qualname__ = f"rows_{kind}" + ("_vnni" if vnni else "") + ("" if pshufb else "_sel")
    return intrinsic(typer)


# rows_<type>[_vnni](w_flat, r0, rows, row_bytes, nunits, xq, xd, xp, xs) -> NR float32 (xs unused)
rows_iq4_nl, rows_iq4_nl_vnni = _iq4_rows_intrinsic("iq4_nl", False), _iq4_rows_intrinsic("iq4_nl", True)
rows_iq4_xs, rows_iq4_xs_vnni = _iq4_rows_intrinsic("iq4_xs", False), _iq4_rows_intrinsic("iq4_xs", True)


# ---------------------------------------------------------------------------------------
# matvec kernels: w uint8 (rows, row_bytes), x float32 (cols,), y float32 (rows,). Written out
# per type and flavour so each compiles and caches on its own (see legacy.py); no fastmath.

@njit(parallel=True, cache=True)
def matvec_iq4_nl(w, x, y):
    rows, rb = w.shape
    xq, xd, xp, xs = act8(x)
    wf = w.reshape(-1)
    for g in prange((rows + NR - 1) // NR):
        put_rows(y, g * NR, rows, rows_iq4_nl(wf, g * NR, rows, rb, x.size // 32, xq, xd, xp, xs))


@njit(parallel=True, cache=True)
def matvec_iq4_nl_vnni(w, x, y):
    rows, rb = w.shape
    xq, xd, xp, xs = act8(x)
    wf = w.reshape(-1)
    for g in prange((rows + NR - 1) // NR):
        put_rows(y, g * NR, rows, rows_iq4_nl_vnni(wf, g * NR, rows, rb, x.size // 32, xq, xd, xp, xs))


@njit(parallel=True, cache=True)
def matvec_iq4_xs(w, x, y):
    rows, rb = w.shape
    xq, xd, xp, xs = act8(x)
    wf = w.reshape(-1)
    for g in prange((rows + NR - 1) // NR):
        put_rows(y, g * NR, rows, rows_iq4_xs(wf, g * NR, rows, rb, x.size // 256, xq, xd, xp, xs))


@njit(parallel=True, cache=True)
def matvec_iq4_xs_vnni(w, x, y):
    rows, rb = w.shape
    xq, xd, xp, xs = act8(x)
    wf = w.reshape(-1)
    for g in prange((rows + NR - 1) // NR):
        put_rows(y, g * NR, rows, rows_iq4_xs_vnni(wf, g * NR, rows, rb, x.size // 256, xq, xd, xp, xs))


# ---------------------------------------------------------------------------------------
# exact dequantization of rows r0..r1 into out[0:r1-r0, :cols]; serial (see kquants.py)

@njit(cache=True)
def dequant_iq4_nl(w, r0, r1, out):
    nb = out.shape[1] // 32
    for i in range(r1 - r0):
        r = r0 + i
        for b in range(nb):
            o = b * 18
            d = f16(w[r, o], w[r, o + 1])
            for l in range(16):
                v = w[r, o + 2 + l]
                out[i, b * 32 + l] = d * _KV[v & 15]
                out[i, b * 32 + l + 16] = d * _KV[v >> 4]


@njit(cache=True)
def dequant_iq4_xs(w, r0, r1, out):
    nsb = out.shape[1] // 256
    for i in range(r1 - r0):
        r = r0 + i
        for s in range(nsb):
            o = s * 136
            d = f16(w[r, o], w[r, o + 1])
            sh = np.int32(w[r, o + 2]) | (np.int32(w[r, o + 3]) << 8)
            for ib in range(8):
                dl = d * np.float32(iq4xs_sub_scale(np.int32(w[r, o + 4 + ib // 2]), sh, ib))
                for l in range(16):
                    v = w[r, o + 8 + 16 * ib + l]
                    out[i, s * 256 + 32 * ib + l] = dl * _KV[v & 15]
                    out[i, s * 256 + 32 * ib + l + 16] = dl * _KV[v >> 4]


MATVEC_GENERIC = {"IQ4_NL": matvec_iq4_nl, "IQ4_XS": matvec_iq4_xs}
MATVEC_VNNI = {"IQ4_NL": matvec_iq4_nl_vnni, "IQ4_XS": matvec_iq4_xs_vnni}
MATVEC = MATVEC_VNNI if HAS_VNNI else MATVEC_GENERIC
DEQUANT = {"IQ4_NL": dequant_iq4_nl, "IQ4_XS": dequant_iq4_xs}
