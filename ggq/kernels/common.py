"""Shared pieces of the Numba kernels: fp16/bf16 scalar decode, activation quantization,
and the row intrinsics of the matvec kernels written as LLVM vector IR (rows_* for the legacy
blocks, krows for the k-quants; AVX512-VNNI and generic flavours).

Why the intrinsics: Numba promotes integer arithmetic to int64, so a plain loop of int8 x
int16 products becomes 32-bit multiplies (vpmulld) that leave the kernel arithmetic-bound.
Emitting sext + mul + even/odd add + reduce directly lets LLVM pick pmaddwd on x86 (and the
equivalent on other targets); the IR is target-neutral.

Numba's on-disk cache keys a kernel on its own source file only; ggq.kernels calls
ggq.jit_cache.guard so that an edit here clears the cached kernels that inline this file.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
import llvmlite.binding as _llb
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

QK = 32  # activation block (int8 scale group), also the legacy weight block


@intrinsic
def u32_as_f32(typingctx, v):
    sig = types.float32(types.uint32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@intrinsic
def _f16_hw(typingctx, lo, hi):
    """two little-endian bytes of an IEEE half -> float32 via LLVM half (vcvtph2ps on F16C)"""
    sig = types.float32(types.uint8, types.uint8)

    def codegen(context, builder, signature, args):
        i16 = ir.IntType(16)
        a = builder.zext(args[0], i16)
        b = builder.shl(builder.zext(args[1], i16), ir.Constant(i16, 8))
        return builder.fpext(builder.bitcast(builder.or_(a, b), ir.HalfType()), ir.FloatType())

    return sig, codegen


@intrinsic
def h2f(typingctx, h):
    """uint16 half bits -> float32 (vectorizable: fpext half)"""
    sig = types.float32(types.uint16)

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return sig, codegen


@njit(inline="always")
def _f16_sw(lo, hi):
    # exact for zero, subnormal, normal, inf, nan (checked against numpy in the tests)
    h = np.uint32(lo) | (np.uint32(hi) << np.uint32(8))
    sign = (h & np.uint32(0x8000)) << np.uint32(16)
    e = (h >> np.uint32(10)) & np.uint32(0x1F)
    m = h & np.uint32(0x3FF)
    if e == 0:
        f = np.float32(m) * np.float32(5.9604644775390625e-08)
        return -f if sign else f
    if e == 31:
        return u32_as_f32(sign | np.uint32(0x7F800000) | (m << np.uint32(13)))
    return u32_as_f32(sign | ((e + np.uint32(112)) << np.uint32(23)) | (m << np.uint32(13)))


def _has_native_half() -> bool:
    try:
        feats = _llb.get_host_cpu_features().flatten()
    except Exception:  # pragma: no cover - non-x86 hosts may not report features
        feats = ""
    import platform
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        return "+f16c" in feats
    return platform.machine().lower() in ("aarch64", "arm64")


# x86 without F16C would turn `fpext half` into a libcall the JIT cannot resolve
f16 = _f16_hw if _has_native_half() else _f16_sw


@njit(inline="always")
def bf16(lo, hi):
    return u32_as_f32((np.uint32(lo) << np.uint32(16)) | (np.uint32(hi) << np.uint32(24)))


def _arr_ptr(context, builder, aryty, ary, off):
    a = context.make_array(aryty)(context, builder, ary)
    return builder.gep(a.data, [off])


@njit(inline="always")
def quantize_act(x, xq, xd, xs):  # the scalar reference quantize_act8 is tested against
    """x float32 (cols) -> xq int16 in [-127, 127], xd scale per 32, xs exact float sum per 16
    (xs serves the min/offset terms, so those stay in float)."""
    nb = x.size // QK
    for b in range(nb):
        amax = np.float32(0.0)
        s0 = np.float32(0.0)
        s1 = np.float32(0.0)
        for k in range(16):
            v = x[b * QK + k]
            amax = max(amax, abs(v))
            s0 += v
        for k in range(16, 32):
            v = x[b * QK + k]
            amax = max(amax, abs(v))
            s1 += v
        xs[2 * b] = s0
        xs[2 * b + 1] = s1
        d = amax / np.float32(127.0)
        xd[b] = d
        inv = np.float32(1.0) / d if d > 0 else np.float32(0.0)
        for k in range(QK):
            xq[b * QK + k] = np.int16(np.round(x[b * QK + k] * inv))


# ---------------------------------------------------------------------------------------
# IR helpers of the row intrinsics below: bit extraction happens in vector registers (a
# scratch buffer would cost a store-forwarding stall per block); splatted scalars are
# loop-invariant, so LLVM folds them.

def _splat(builder, val, ty, n):
    v = builder.insert_element(ir.Constant(ir.VectorType(ty, n), ir.Undefined), val, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(ir.IntType(32), n), [0] * n))


def _ok(*arrs):
    return all(isinstance(a, types.Array) for a in arrs)


def _host_has_vnni() -> bool:
    try:
        feats = _llb.get_host_cpu_features()
    except Exception:  # pragma: no cover - non-x86 hosts may not report features
        return False
    return bool(feats.get("avx512vnni") and feats.get("avx512vl"))


def _use_vnni() -> bool:
    import os
    return _host_has_vnni() and os.environ.get("GGQ_NO_VNNI", "") in ("", "0")


HAS_VNNI = _use_vnni()  # legacy.MATVEC picks the vnni kernels when True (GGQ_NO_VNNI=1: never)
NR = 4  # rows per rows_* call
# Software prefetch of the weights: a row intrinsic reads NR short rows (a few hundred bytes
# each) side by side, which the hardware prefetchers do not follow, so each iteration asks for
# the lines PREFETCH bytes further along the NR rows' bytes, read as one stream (prefetcht0).
# Types that decode cheaply per byte wait on memory instead: Q6_K asks further ahead and into
# L2 only (prefetcht1: more lines in flight than L1's miss buffers hold), Q8_0 also brings the
# lines 2048 bytes ahead from L2 into L1. Measured here, one thread, against the plain 4096
# ahead into L1: Q8_0 +10-20% out of cache and +9% in cache, Q6_K +30%; the nibble types were
# slower with the far prefetch.
PREFETCH = 4096  # bytes ahead (prefetcht0)
# per type: (bytes ahead, locality: 3 prefetcht0, 2 prefetcht1) of the prefetches per iteration
PREFETCH_PLAN = {"q8_0": ((8192, 2), (2048, 3)), "q6_k": ((8192, 2),)}


@njit(cache=True)
def act8(x):
    """quantize_act8 into fresh buffers: (xq, xd, xp, xs) for the row intrinsics.

    A function of its own (not inlined): compiled once per process and linked into every
    matvec kernel, instead of being typed and inlined again into each (a quarter of their
    compile time). Strict float math, like the kernels that call it: see legacy.py."""
    nb = x.size // QK
    xq = np.empty(x.size, np.int8)
    xd = np.empty(nb, np.float32)
    xp = np.empty(8 * nb, np.int32)
    xs = np.empty(nb, np.float32)
    quantize_act8(x, xq, xd, xp, xs)
    return xq, xd, xp, xs


@njit(inline="always")
def put_rows(y, r0, rows, t):
    """y[r0:r0+NR] = t, without writing past the last row."""
    for r in range(NR):
        if r0 + r < rows:
            y[r0 + r] = t[r]


@njit(inline="always")
def quantize_act8(x, xq, xd, xp, xs):
    """x float32 (cols) -> xq int8 = round(x / d), d = absmax / 127 per 32 (llama.cpp's Q8_0
    activations; same values as quantize_act), xd = d, xp int32 = sum of each 4 consecutive
    xq, xs = float sum of each block's 32 x (two halves of 16 added, as in quantize_act)."""
    nb = x.size // QK
    for b in range(nb):
        amax = np.float32(0.0)
        s0 = np.float32(0.0)
        s1 = np.float32(0.0)
        for k in range(16):
            v = x[b * QK + k]
            amax = max(amax, abs(v))
            s0 += v
        for k in range(16, 32):
            v = x[b * QK + k]
            amax = max(amax, abs(v))
            s1 += v
        xs[b] = s0 + s1
        d = amax / np.float32(127.0)
        xd[b] = d
        inv = np.float32(1.0) / d if d > 0 else np.float32(0.0)
        for j in range(8):
            s = 0
            for k in range(4):
                q = np.int8(np.round(x[b * QK + 4 * j + k] * inv))
                xq[b * QK + 4 * j + k] = q
                s += q
            xp[b * 8 + j] = s


def _f16_ir(builder, h16, soft=None):
    """i16 half bits -> float: hardware conversion where the host has it, else bit math
    (exact for all values; a `fpext half` libcall would not resolve in the JIT)."""
    if (not soft) if soft is not None else _has_native_half():
        return builder.fpext(builder.bitcast(h16, ir.HalfType()), ir.FloatType())
    i32 = ir.IntType(32)

    def c(v):
        return ir.Constant(i32, v)

    # only normal floats in the arithmetic (no denormal-as-zero hazard): F. Giesen's method
    h = builder.zext(h16, i32)
    u = builder.shl(builder.and_(h, c(0x7FFF)), c(13))
    e = builder.and_(u, c(0x7C00 << 13))
    u = builder.add(u, c(112 << 23))
    inf = builder.add(u, c(112 << 23))
    sub = builder.fsub(builder.bitcast(builder.add(u, c(1 << 23)), ir.FloatType()),
                       ir.Constant(ir.FloatType(), 2.0 ** -14))
    bits = builder.select(builder.icmp_unsigned("==", e, c(0x7C00 << 13)), inf,
                          builder.select(builder.icmp_unsigned("==", e, c(0)), builder.bitcast(sub, i32), u))
    bits = builder.or_(bits, builder.shl(builder.and_(h, c(0x8000)), c(16)))
    return builder.bitcast(bits, ir.FloatType())


def _rows_signature(wa, xq, xd, xp, xs):
    """Row intrinsics' type: (w_flat, r0, rows, row_bytes, nblocks, xq, xd, xp, xs) -> NR float32."""
    if not _ok(wa, xq, xd, xp, xs):
        return None
    ip = types.intp
    return types.UniTuple(types.float32, NR)(wa, ip, ip, ip, ip, xq, xd, xp, xs)


class _RowsIR:
    """What every row intrinsic's codegen starts from: the arrays' data pointers, constant and
    vector helpers, the NR rows' byte offsets (clamped to rows-1) and the prefetch intrinsic."""

    def __init__(self, context, builder, signature, args):
        wty, _, _, _, _, xqty, xdty, xpty, xsty = signature.args
        wa, r0, rows, rb, self.nblocks, xqa, xda, xpa, xsa = args
        self.builder = builder

        def data(ty, a):
            return context.make_array(ty)(context, builder, a).data

        self.wp, self.xqp, self.xdp, self.xpp, self.xsp = (
            data(wty, wa), data(xqty, xqa), data(xdty, xda), data(xpty, xpa), data(xsty, xsa))
        self.ity = r0.type
        last = builder.sub(rows, self.k(1))
        self.offs = []
        for r in range(NR):
            rr = builder.add(r0, self.k(r))
            self.offs.append(builder.mul(builder.select(builder.icmp_signed("<", rr, last), rr, last), rb))
        i32, pi8 = ir.IntType(32), ir.IntType(8).as_pointer()
        # typed pointers (LLVM 14) mangle as p0i8, opaque ones as p0
        self.pfn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [pi8, i32, i32, i32]),
            "llvm.prefetch.p0" if str(pi8) == "ptr" else "llvm.prefetch.p0i8")

    def k(self, v):
        return ir.Constant(self.ity, v)

    def prefetch(self, kind, b, bs):
        """Prefetch for iteration b (bs bytes per row per iteration): the lines of the NR rows'
        bytes PREFETCH (PREFETCH_PLAN[kind]) ahead of the iteration's share of them."""
        builder, k, i32 = self.builder, self.k, ir.IntType(32)
        for ahead, locality in PREFETCH_PLAN.get(kind, ((PREFETCH, 3),)):
            base = builder.add(self.offs[0], builder.add(k(ahead), builder.mul(b, k(NR * bs))))
            for j in range((NR * bs + 63) // 64):  # step <= 64 bytes: every line is touched
                builder.call(self.pfn, [builder.gep(self.wp, [builder.add(base, k(64 * j))]),
                                        ir.Constant(i32, 0), ir.Constant(i32, locality), ir.Constant(i32, 1)])

    def vload(self, ptr, off, vty, align):
        return self.builder.load(self.builder.bitcast(self.builder.gep(ptr, [off]), vty.as_pointer()), align=align)

    def splat(self, c, n):
        return ir.Constant(ir.VectorType(c.type, n), [c.constant] * n) if isinstance(c, ir.Constant) \
            else _splat(self.builder, c, c.type, n)

    def shuf(self, a, idx):
        return self.builder.shuffle_vector(a, a, ir.Constant(ir.VectorType(ir.IntType(32), len(idx)), idx))


# per type: bytes per block, offsets of d, m (or None), qh (or None), qs; code bias
_LEGACY = {"q8_0": (34, 0, None, None, 2, 0), "q4_0": (18, 0, None, None, 2, 8),
           "q4_1": (20, 0, 2, None, 4, 0), "q5_0": (22, 0, None, 2, 6, 16),
           "q5_1": (24, 0, 2, 4, 8, 0)}


def _rows_intrinsic(kind, vnni):
    bs, doff, moff, qhoff, qsoff, bias = _LEGACY[kind]

    def typer(typingctx, wa, r0, rows, rb, nb, xq, xd, xp, xs):
        sig = _rows_signature(wa, xq, xd, xp, xs)
        return None if sig is None else (sig, codegen)

    def codegen(context, builder, signature, args):
        R = _RowsIR(context, builder, signature, args)
        wp, xqp, xdp, xpp, xsp, nb, offs = R.wp, R.xqp, R.xdp, R.xpp, R.xsp, R.nblocks, R.offs
        k, vload, splat, shuf = R.k, R.vload, R.splat, R.shuf
        i8, i16, i32, f32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.FloatType()
        v8i32, v8f, v32i8 = ir.VectorType(i32, 8), ir.VectorType(f32, 8), ir.VectorType(i8, 32)
        contract = ("contract",)  # fma allowed, no reassociation: same order on every path
        accs = [cgutils.alloca_once_value(builder, ir.Constant(v8f, [0.0] * 8)) for _ in range(NR)]
        maccs = [cgutils.alloca_once_value(builder, ir.Constant(f32, 0.0)) for _ in range(NR)] \
            if moff is not None else []
        if vnni:
            dpb = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(v8i32, [v8i32, v8i32, v8i32]), "llvm.x86.avx512.vpdpbusd.256")

        with cgutils.for_range(builder, nb) as loop:
            b = loop.index
            R.prefetch(kind, b, bs)
            xv = vload(xqp, builder.mul(b, k(QK)), v32i8, 1)
            dx = builder.load(builder.gep(xdp, [b]))
            if vnni:
                ub = 128 if kind == "q8_0" else bias
                init = builder.mul(vload(xpp, builder.mul(b, k(8)), v8i32, 4), splat(ir.Constant(i32, -ub), 8))
                xw = builder.bitcast(xv, v8i32)
            else:
                x32 = builder.sext(xv, ir.VectorType(i32, 32))
            if moff is not None:
                sx = builder.load(builder.gep(xsp, [b]))
            bo = builder.mul(b, k(bs))
            for r in range(NR):
                o = builder.add(offs[r], bo)
                # the block's 32 codes as bytes: Q8_0 signed, nibble types unsigned 0..31
                if kind == "q8_0":
                    q = vload(wp, builder.add(o, k(qsoff)), v32i8, 1)
                else:
                    v = vload(wp, builder.add(o, k(qsoff)), ir.VectorType(i8, 16), 1)
                    lo = builder.and_(v, splat(ir.Constant(i8, 15), 16))
                    hi = builder.lshr(v, splat(ir.Constant(i8, 4), 16))
                    q = builder.shuffle_vector(lo, hi, ir.Constant(ir.VectorType(i32, 32), list(range(32))))
                    if qhoff is not None:
                        # bit l of qh (32 bits, little-endian) -> 16 in lane l: the word as a
                        # lane mask (one mask-register move and a masked byte move on AVX-512)
                        hit = builder.bitcast(vload(wp, builder.add(o, k(qhoff)), i32, 1), ir.VectorType(ir.IntType(1), 32))
                        q = builder.or_(q, builder.select(hit, ir.Constant(v32i8, [16] * 32),
                                                          ir.Constant(v32i8, [0] * 32)))
                if vnni:
                    if kind == "q8_0":
                        q = builder.xor(q, ir.Constant(v32i8, [-128] * 32))
                    dot = builder.call(dpb, [init, builder.bitcast(q, v8i32), xw])
                else:
                    v16 = ir.VectorType(i16, 32)
                    q16 = builder.sext(q, v16) if kind == "q8_0" else builder.zext(q, v16)
                    if bias:
                        q16 = builder.sub(q16, ir.Constant(v16, [bias] * 32))
                    m = builder.mul(builder.sext(q16, ir.VectorType(i32, 32)), x32)
                    s = builder.add(shuf(m, list(range(0, 32, 2))), shuf(m, list(range(1, 32, 2))))
                    dot = builder.add(shuf(s, list(range(0, 16, 2))), shuf(s, list(range(1, 16, 2))))
                d = _f16_ir(builder, vload(wp, builder.add(o, k(doff)), i16, 1))
                dd = builder.fmul(d, dx)
                t = builder.fmul(builder.sitofp(dot, v8f), splat(dd, 8), flags=contract)
                builder.store(builder.fadd(builder.load(accs[r]), t, flags=contract), accs[r])
                if moff is not None:
                    mm = builder.fmul(_f16_ir(builder, vload(wp, builder.add(o, k(moff)), i16, 1)), sx,
                                      flags=contract)
                    builder.store(builder.fadd(builder.load(maccs[r]), mm, flags=contract), maccs[r])
        outs = []
        for r in range(NR):
            a = builder.load(accs[r])
            for n in (4, 2, 1):
                a = builder.fadd(shuf(a, list(range(n))), shuf(a, list(range(n, 2 * n))))
            s = builder.extract_element(a, ir.Constant(i32, 0))
            if moff is not None:
                s = builder.fadd(s, builder.load(maccs[r]))
            outs.append(s)
        return context.make_tuple(builder, signature.return_type, outs)

    typer.__name__ = typer.__qualname__ = f"rows_{kind}" + ("_vnni" if vnni else "")
    return intrinsic(typer)


# rows_<type>[_vnni](w_flat, r0, rows, row_bytes, nblocks, xq, xd, xp, xs) -> NR float32:
# rows r0 .. r0+NR-1 (clamped to rows-1) of W times the activations from quantize_act8.
# The _vnni ones need AVX512-VNNI + VL (HAS_VNNI); the others run anywhere.
rows_q8_0, rows_q8_0_vnni = _rows_intrinsic("q8_0", False), _rows_intrinsic("q8_0", True)
rows_q4_0, rows_q4_0_vnni = _rows_intrinsic("q4_0", False), _rows_intrinsic("q4_0", True)
rows_q4_1, rows_q4_1_vnni = _rows_intrinsic("q4_1", False), _rows_intrinsic("q4_1", True)
rows_q5_0, rows_q5_0_vnni = _rows_intrinsic("q5_0", False), _rows_intrinsic("q5_0", True)
rows_q5_1, rows_q5_1_vnni = _rows_intrinsic("q5_1", False), _rows_intrinsic("q5_1", True)


# ---------------------------------------------------------------------------------------
# k-quant (Q2_K .. Q6_K) matvec: the same scheme for 256-element super-blocks. Activations
# from quantize_act8 (int8 per 32, the values quantize_act gives). Per super-block and row,
# each of the 8 chunks of 32 codes gives 8 int32 lanes (lane j = elements 4j..4j+3) of
# sum (code - bias) * xq, multiplied in integers by the chunk's sub-block scales (one per
# 32, or one per 16 = lanes 0-3 / 4-7), converted to float, multiplied by xd and summed over
# the super-block, then multiply-added by d into the row's float accumulator. Two chunks whose
# codes come from one 64-byte span go together in 512-bit vectors (16 lanes, vpdpbusd.512:
# half the instructions of 256-bit ones). The integer sums are exactly those of dot_k; only
# the float accumulation order differs. Mins (Q2_K, Q4_K, Q5_K) go into a second per-row
# float vector: dmin * min * (exact float sum of the activations), as before.
# Codes are unsigned (0..63) and fed to vpdpbusd as they are; the bias (Q6_K 32, Q3_K 4) is
# the lane's start value -bias * xp. The generic flavour subtracts it in int16 instead.

# per type: super-block bytes, code bias
_KQ = {"q2_k": (84, 0), "q3_k": (110, 4), "q4_k": (144, 0), "q5_k": (176, 0), "q6_k": (210, 32)}


def _krows_intrinsic(kind, vnni):
    bs, bias = _KQ[kind]
    mins = kind in ("q2_k", "q4_k", "q5_k")
    nmin = 16 if kind == "q2_k" else 8  # mins per super-block (xs: sums per 16 for Q2_K, else per 32)
    # chunks handled together in one 512-bit vector (their codes come from one 64-byte span)
    pairs = {"q4_k": ((0, 2), (1, 3), (4, 6), (5, 7)), "q5_k": ((0, 2), (1, 3), (4, 6), (5, 7)),
             "q6_k": ((0, 1), (2, 3), (4, 5), (6, 7))}.get(kind, ((0, 4), (1, 5), (2, 6), (3, 7)))

    def typer(typingctx, wa, r0, rows, rb, nsb, xq, xd, xp, xs):
        sig = _rows_signature(wa, xq, xd, xp, xs)
        return None if sig is None else (sig, codegen)

    def codegen(context, builder, signature, args):
        R = _RowsIR(context, builder, signature, args)
        wp, xqp, xdp, xpp, xsp, nsb, offs = R.wp, R.xqp, R.xdp, R.xpp, R.xsp, R.nblocks, R.offs
        k, vload, splat, shuf = R.k, R.vload, R.splat, R.shuf
        i8, i16, i32, f32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.FloatType()
        v8i32, v8f, v32i8 = ir.VectorType(i32, 8), ir.VectorType(f32, 8), ir.VectorType(i8, 32)
        vmf = ir.VectorType(f32, nmin)

        def cv(ty, v, n):
            return ir.Constant(ir.VectorType(ty, n), [v] * n)

        def c32(v):
            return ir.Constant(i32, v)

        def bit_to(v, src, dst, mask):
            # (v >> src) << dst, masked: one shift of a <32 x i8> and an and
            if src < dst:
                v = builder.shl(v, cv(i8, dst - src, 32))
            elif src > dst:
                v = builder.lshr(v, cv(i8, src - dst, 32))
            return builder.and_(v, cv(i8, mask, 32))

        contract = ("contract",)
        v16i32, v16f = ir.VectorType(i32, 16), ir.VectorType(f32, 16)
        accs = [cgutils.alloca_once_value(builder, ir.Constant(v16f, [0.0] * 16)) for _ in range(NR)]
        maccs = [cgutils.alloca_once_value(builder, ir.Constant(vmf, [0.0] * nmin)) for _ in range(NR)] \
            if mins else []
        if vnni:
            dpb = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(v16i32, [v16i32, v16i32, v16i32]), "llvm.x86.avx512.vpdpbusd.512")

        def cat(a, b):
            n = a.type.count
            return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(i32, 2 * n), list(range(2 * n))))

        def decode(o):
            """-> d, dmin (or None), mins as <nmin x float> (or None), [(codes <32 x u8>, scales <8 x i32>)] * 8"""
            def ld(off, n):
                return vload(wp, builder.add(o, k(off)), ir.VectorType(i8, n), 1)

            def ld32(off):
                return vload(wp, builder.add(o, k(off)), i32, 1)

            def f16at(off):
                return _f16_ir(builder, vload(wp, builder.add(o, k(off)), i16, 1))

            def words16(ws):  # four i32 -> <16 x i32> of their bytes (little-endian)
                v = ir.Constant(ir.VectorType(i32, 4), ir.Undefined)
                for n, wv in enumerate(ws):
                    v = builder.insert_element(v, wv, c32(n))
                return builder.bitcast(v, ir.VectorType(i8, 16))

            def pair(sc16, a, b):  # lanes 0-3 = sc16[a], lanes 4-7 = sc16[b]
                return shuf(sc16, [a] * 4 + [b] * 4)

            chunks = []
            dmin = mf = None
            if kind in ("q4_k", "q5_k"):
                d, dmin = f16at(0), f16at(2)
                # bytes 4..19 of the block (scales, then 4 code bytes): u0, u1, u2, -
                u = vload(wp, builder.add(o, k(4)), ir.VectorType(i32, 4), 1)
                a = shuf(u, [0, 2, 1, 2])
                b = shuf(u, [0, 0, 1, 1])
                v4 = ir.VectorType(i32, 4)
                m1, m2, m3 = 0x3F3F3F3F, 0x0F0F0F0F, 0x03030303
                # [u0 & m1, u2 & m2 | ((u0>>6)&m3)<<4, u1 & m1, (u2>>4) & m2 | ((u1>>6)&m3)<<4]
                lo = builder.and_(builder.lshr(a, ir.Constant(v4, [0, 0, 0, 4])),
                                  ir.Constant(v4, [m1, m2, m1, m2]))
                hi = builder.shl(builder.and_(builder.lshr(b, ir.Constant(v4, [6] * 4)),
                                              ir.Constant(v4, [0, m3, 0, m3])), ir.Constant(v4, [4] * 4))
                sm = builder.zext(builder.bitcast(builder.or_(lo, hi), ir.VectorType(i8, 16)),
                                  ir.VectorType(i32, 16))  # scales 0..7, mins 0..7
                mf = builder.uitofp(shuf(sm, list(range(8, 16))), vmf)
                qh = ld(16, 32) if kind == "q5_k" else None
                qs = 16 if kind == "q4_k" else 48
                for j in range(4):
                    v = ld(qs + 32 * j, 32)
                    lo = builder.and_(v, cv(i8, 15, 32))
                    hi = builder.lshr(v, cv(i8, 4, 32))
                    if qh is not None:
                        lo = builder.or_(lo, bit_to(qh, 2 * j, 4, 16))
                        hi = builder.or_(hi, bit_to(qh, 2 * j + 1, 4, 16))
                    chunks.append((lo, shuf(sm, [2 * j] * 8)))
                    chunks.append((hi, shuf(sm, [2 * j + 1] * 8)))
            elif kind == "q6_k":
                d = f16at(208)
                sc = builder.sext(ld(192, 16), ir.VectorType(i32, 16))
                for n in range(2):
                    ql0, ql1, qh = ld(64 * n, 32), ld(64 * n + 32, 32), ld(128 + 32 * n, 32)
                    for t in range(4):
                        v = ql0 if t % 2 == 0 else ql1
                        v = builder.and_(v, cv(i8, 15, 32)) if t < 2 else builder.lshr(v, cv(i8, 4, 32))
                        v = builder.or_(v, bit_to(qh, 2 * t, 4, 0x30))
                        chunks.append((v, pair(sc, 8 * n + 2 * t, 8 * n + 2 * t + 1)))
            elif kind == "q3_k":
                d = f16at(108)
                a0, a1, tm = ld32(96), ld32(100), ld32(104)
                k1, k2 = c32(0x03030303), c32(0x0F0F0F0F)

                def part(a, sh_a, sh_t):
                    lo = builder.and_(builder.lshr(a, c32(sh_a)) if sh_a else a, k2)
                    hb = builder.and_(builder.lshr(tm, c32(sh_t)) if sh_t else tm, k1)
                    return builder.or_(lo, builder.shl(hb, c32(4)))

                sc = builder.sub(builder.zext(words16([part(a0, 0, 0), part(a1, 0, 2), part(a0, 4, 4),
                                                       part(a1, 4, 6)]), ir.VectorType(i32, 16)),
                                 cv(i32, 32, 16))
                hm = ld(0, 32)
                for n in range(2):
                    q = ld(32 + 32 * n, 32)
                    for j in range(4):
                        v = builder.and_(builder.lshr(q, cv(i8, 2 * j, 32)) if j else q, cv(i8, 3, 32))
                        v = builder.or_(v, bit_to(hm, 4 * n + j, 2, 4))
                        chunks.append((v, pair(sc, 8 * n + 2 * j, 8 * n + 2 * j + 1)))
            else:  # q2_k
                d, dmin = f16at(80), f16at(82)
                s8 = ld(0, 16)
                sc = builder.zext(builder.and_(s8, cv(i8, 15, 16)), ir.VectorType(i32, 16))
                mf = builder.uitofp(builder.lshr(s8, cv(i8, 4, 16)), vmf)
                for n in range(2):
                    q = ld(16 + 32 * n, 32)
                    for j in range(4):
                        v = builder.and_(builder.lshr(q, cv(i8, 2 * j, 32)) if j else q, cv(i8, 3, 32))
                        chunks.append((v, pair(sc, 8 * n + 2 * j, 8 * n + 2 * j + 1)))
            return d, dmin, mf, chunks

        with cgutils.for_range(builder, nsb) as loop:
            s = loop.index
            R.prefetch(kind, s, bs)
            c0 = builder.mul(s, k(8))  # first activation block of the super-block
            xv = [vload(xqp, builder.mul(builder.add(c0, k(c)), k(QK)), v32i8, 1) for c in range(8)]
            if vnni and bias:
                xpv = [vload(xpp, builder.mul(builder.add(c0, k(c)), k(8)), v8i32, 4) for c in range(8)]
            xdv = vload(xdp, c0, v8f, 4)
            xin = []
            for a, b in pairs:
                x64 = cat(xv[a], xv[b])
                if vnni:
                    init = builder.mul(cat(xpv[a], xpv[b]), cv(i32, -bias, 16)) if bias else cv(i32, 0, 16)
                    xin.append((builder.bitcast(x64, v16i32), init))
                else:
                    xin.append((builder.sext(x64, ir.VectorType(i32, 64)), None))
            xdb = [shuf(xdv, [a] * 8 + [b] * 8) for a, b in pairs]
            if mins:
                xsv = vload(xsp, builder.mul(s, k(nmin)), vmf, 4)
            bo = builder.mul(s, k(bs))
            for r in range(NR):
                d, dmin, mf, chunks = decode(builder.add(offs[r], bo))
                acc = None  # sum_c float(lanes_c) * xd[c], then times d
                for p, (a, b) in enumerate(pairs):
                    xa, init = xin[p]
                    q = cat(chunks[a][0], chunks[b][0])
                    if vnni:
                        dot = builder.call(dpb, [init, builder.bitcast(q, v16i32), xa])
                    else:
                        v16 = ir.VectorType(i16, 64)
                        q16 = builder.zext(q, v16)
                        if bias:
                            q16 = builder.sub(q16, cv(i16, bias, 64))
                        m = builder.mul(builder.sext(q16, ir.VectorType(i32, 64)), xa)
                        t = builder.add(shuf(m, list(range(0, 64, 2))), shuf(m, list(range(1, 64, 2))))
                        dot = builder.add(shuf(t, list(range(0, 32, 2))), shuf(t, list(range(1, 32, 2))))
                    scv = cat(chunks[a][1], chunks[b][1])
                    t = builder.fmul(builder.sitofp(builder.mul(dot, scv), v16f), xdb[p], flags=contract)
                    acc = t if acc is None else builder.fadd(acc, t, flags=contract)
                builder.store(builder.fadd(builder.load(accs[r]), builder.fmul(acc, splat(d, 16), flags=contract),
                                           flags=contract), accs[r])
                if mins:
                    mm = builder.fmul(builder.fmul(mf, xsv), splat(dmin, nmin), flags=contract)
                    builder.store(builder.fadd(builder.load(maccs[r]), mm, flags=contract), maccs[r])

        def hsum(a, n):
            while n > 1:
                n //= 2
                a = builder.fadd(shuf(a, list(range(n))), shuf(a, list(range(n, 2 * n))))
            return builder.extract_element(a, c32(0))

        outs = []
        for r in range(NR):
            v = hsum(builder.load(accs[r]), 16)
            if mins:
                v = builder.fsub(v, hsum(builder.load(maccs[r]), nmin))
            outs.append(v)
        return context.make_tuple(builder, signature.return_type, outs)

    typer.__name__ = typer.__qualname__ = f"rows_{kind}" + ("_vnni" if vnni else "")
    return intrinsic(typer)


# rows_<k-type>[_vnni](w_flat, r0, rows, row_bytes, nsuperblocks, xq, xd, xp, xs) -> NR float32,
# activations from quantize_act8; xs: float sums per 32 (Q4_K, Q5_K), per 16 (Q2_K), unused
# (Q3_K, Q6_K); xp: quantize_act8's sums of 4, read by the _vnni flavour of Q3_K, Q6_K.
rows_q2_k, rows_q2_k_vnni = _krows_intrinsic("q2_k", False), _krows_intrinsic("q2_k", True)
rows_q3_k, rows_q3_k_vnni = _krows_intrinsic("q3_k", False), _krows_intrinsic("q3_k", True)
rows_q4_k, rows_q4_k_vnni = _krows_intrinsic("q4_k", False), _krows_intrinsic("q4_k", True)
rows_q5_k, rows_q5_k_vnni = _krows_intrinsic("q5_k", False), _krows_intrinsic("q5_k", True)
rows_q6_k, rows_q6_k_vnni = _krows_intrinsic("q6_k", False), _krows_intrinsic("q6_k", True)
