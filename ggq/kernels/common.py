"""Shared pieces of the Numba kernels: fp16/bf16 scalar decode, activation quantization
and a 32-element integer dot product written as LLVM vector IR.

Why the intrinsics: Numba promotes integer arithmetic to int64, so a plain loop of int8 x
int16 products becomes 32-bit multiplies (vpmulld) that leave the kernel arithmetic-bound.
Emitting sext + mul + even/odd add + reduce directly lets LLVM pick pmaddwd on x86 (and the
equivalent on other targets); the IR is target-neutral.

Numba's on-disk cache keys a kernel on its own source file only: after editing this file,
delete ggq/kernels/__pycache__/*.nbi/*.nbc, or kernels in legacy.py/kquants.py stay stale.
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


@intrinsic
def dot32(typingctx, wa, woff, xa, xoff):
    """sum_{k<32} w[woff+k] * xq[xoff+k] as int32.
    w: uint8/int8 array read as signed int8, or int16 array; xq: int16 array (1-D, contiguous).
    Caller guarantees bounds (no checks here)."""
    if not (isinstance(wa, types.Array) and isinstance(xa, types.Array)):
        return None
    if wa.dtype not in (types.uint8, types.int8, types.int16) or xa.dtype != types.int16:
        return None
    sig = types.int32(wa, types.intp, xa, types.intp)
    wbits = 16 if wa.dtype == types.int16 else 8

    def codegen(context, builder, signature, args):
        wt, _, xt, _ = signature.args
        pw = _arr_ptr(context, builder, wt, args[0], args[1])
        px = _arr_ptr(context, builder, xt, args[2], args[3])
        vw = ir.VectorType(ir.IntType(wbits), 32)
        vx = ir.VectorType(ir.IntType(16), 32)
        v32 = ir.VectorType(ir.IntType(32), 32)
        lw = builder.load(builder.bitcast(pw, vw.as_pointer()), align=1)
        lx = builder.load(builder.bitcast(px, vx.as_pointer()), align=2)
        m = builder.mul(builder.sext(lw, v32), builder.sext(lx, v32))
        idx = ir.VectorType(ir.IntType(32), 16)
        ev = builder.shuffle_vector(m, m, ir.Constant(idx, [2 * i for i in range(16)]))
        od = builder.shuffle_vector(m, m, ir.Constant(idx, [2 * i + 1 for i in range(16)]))
        s = builder.add(ev, od)
        v16 = ir.VectorType(ir.IntType(32), 16)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.IntType(32), [v16]), "llvm.vector.reduce.add.v16i32")
        return builder.call(fn, [s])

    return sig, codegen


@njit(inline="always")
def quantize_act(x, xq, xd, xs):
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
# decode-and-dot intrinsics: the bit extraction happens in vector registers (a scratch
# buffer would cost a store-forwarding stall per block). Scalar arguments are constants or
# loop-invariant at the call sites, so LLVM folds the splats.

def _splat(builder, val, ty, n):
    v = builder.insert_element(ir.Constant(ir.VectorType(ty, n), ir.Undefined), val, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(ir.IntType(32), n), [0] * n))


def _load_u8(context, builder, aty, ary, off, n):
    p = _arr_ptr(context, builder, aty, ary, off)
    v = builder.load(builder.bitcast(p, ir.VectorType(ir.IntType(8), n).as_pointer()), align=1)
    return builder.zext(v, ir.VectorType(ir.IntType(16), n))


def _int_dot(context, builder, v16, xty, xa, xoff):
    """sum over 32 lanes of v16 (<32 x i16>) * xq[xoff:xoff+32] (int16) as i32."""
    i32 = ir.IntType(32)
    px = _arr_ptr(context, builder, xty, xa, xoff)
    lx = builder.load(builder.bitcast(px, ir.VectorType(ir.IntType(16), 32).as_pointer()), align=2)
    v32 = ir.VectorType(i32, 32)
    m = builder.mul(builder.sext(v16, v32), builder.sext(lx, v32))
    idx = ir.VectorType(i32, 16)
    s = builder.add(builder.shuffle_vector(m, m, ir.Constant(idx, [2 * i for i in range(16)])),
                    builder.shuffle_vector(m, m, ir.Constant(idx, [2 * i + 1 for i in range(16)])))
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i32, [ir.VectorType(i32, 16)]),
                                        "llvm.vector.reduce.add.v16i32")
    return builder.call(fn, [s])


def _ok(*arrs):
    return all(isinstance(a, types.Array) for a in arrs)


@intrinsic
def dot_nib(typingctx, wa, off, qh, bias, xa, xoff):
    """Legacy 4/5-bit block: 16 bytes at w[off] hold elements l (low nibble) and l+16 (high
    nibble); bit l of qh is bit 4 of element l. Returns sum_l (q_l - bias) * xq[xoff+l]."""
    if not _ok(wa, xa):
        return None
    sig = types.int32(wa, types.intp, types.uint32, types.intp, xa, types.intp)

    def codegen(context, builder, signature, args):
        wty, _, _, _, xty, _ = signature.args
        w, o, h, b, x, xo = args
        i16 = ir.IntType(16)
        v = _load_u8(context, builder, wty, w, o, 16)
        lo = builder.and_(v, _splat(builder, ir.Constant(i16, 15), i16, 16))
        hi = builder.lshr(v, _splat(builder, ir.Constant(i16, 4), i16, 16))
        q = builder.shuffle_vector(lo, hi, ir.Constant(ir.VectorType(ir.IntType(32), 32), list(range(32))))
        # bit l of qh -> 16 in lane l: byte l//8 to every lane, test bit l%8 (byte shuffle +
        # test, much cheaper than 32 variable shifts of i32 lanes)
        i8 = ir.IntType(8)
        hbytes = builder.bitcast(h, ir.VectorType(i8, 4))
        hl = builder.shuffle_vector(hbytes, hbytes, ir.Constant(ir.VectorType(ir.IntType(32), 32), [l // 8 for l in range(32)]))
        hit = builder.icmp_unsigned("!=", builder.and_(hl, ir.Constant(ir.VectorType(i8, 32), [1 << (l % 8) for l in range(32)])),
                                    ir.Constant(ir.VectorType(i8, 32), [0] * 32))
        hb = builder.shl(builder.zext(hit, ir.VectorType(i16, 32)), _splat(builder, ir.Constant(i16, 4), i16, 32))
        q = builder.or_(q, hb)
        q = builder.sub(q, _splat(builder, builder.trunc(b, i16), i16, 32))
        return _int_dot(context, builder, q, xty, x, xo)

    return sig, codegen


@intrinsic
def dot_k(typingctx, wa, aoff, sa, ma, boff, sb, mb, shb, bias, s_lo, s_hi, xa, xoff):
    """k-quant 32-element chunk: q_l = ((w[aoff+l] >> sa) & ma) | (((w[boff+l] >> sb) & mb) << shb)
    - bias; returns sum_l s(l) * q_l * xq[xoff+l], s = s_lo for l < 16 else s_hi (int32)."""
    if not _ok(wa, xa):
        return None
    ip = types.intp
    sig = types.int32(wa, ip, ip, ip, ip, ip, ip, ip, ip, types.int32, types.int32, xa, ip)

    def codegen(context, builder, signature, args):
        wty = signature.args[0]
        xty = signature.args[11]
        w, ao, sa_, ma_, bo, sb_, mb_, shb_, bias_, slo, shi, x, xo = args
        i16 = ir.IntType(16)
        i32 = ir.IntType(32)
        n = 32

        def sp(v):
            return _splat(builder, builder.trunc(v, i16), i16, n)

        a = _load_u8(context, builder, wty, w, ao, n)
        q = builder.and_(builder.lshr(a, sp(sa_)), sp(ma_))
        b = _load_u8(context, builder, wty, w, bo, n)
        hb = builder.shl(builder.and_(builder.lshr(b, sp(sb_)), sp(mb_)), sp(shb_))
        q = builder.sub(builder.or_(q, hb), sp(bias_))
        # |q * scale| <= 32 * 128 fits int16: scale in i16 lanes (vpmullw), then pmaddwd
        lo = _splat(builder, builder.trunc(slo, i16), i16, 16)
        hi = _splat(builder, builder.trunc(shi, i16), i16, 16)
        scale = builder.shuffle_vector(lo, hi, ir.Constant(ir.VectorType(i32, 32), list(range(32))))
        return _int_dot(context, builder, builder.mul(q, scale), xty, x, xo)

    return sig, codegen
