"""Triton kernels that decode GGML blocks: the matrix-vector product of one-token steps on CUDA,
and the tile decode of prompt products (dequantize).

y = W x for W uint8 (rows, row_bytes) as stored and x float32 (cols,), summed in float32; codes
and scales are read as bytes at their GGML offsets (spec/QUANTS-32.md, spec/QUANTS-K.md).
- Block-structured products (STRUCTURED: Q8_0, Q5_0, Q4_K, Q6_K, the types that carry most
  weights): codes dotted with x per (sub-)block, each scale applied once.
- _matvec, the other types: each program takes ROWS rows and walks them in tiles of TILE
  elements, every element decoded with its scales by _decode (the float operations of
  ggq.torch_backend.dequant), specialised per type by the constexpr KIND; _dequant writes the
  same decode out as prompt tiles.

Triton's interpreter (TRITON_INTERPRET=1) runs the same kernels on CPU tensors: the tests
check them there on every machine that has triton, and on CUDA where there is a GPU.
"""
from __future__ import annotations

import triton
import triton.language as tl

# type name -> (KIND, elements per block, bytes per block, tile elements)
KINDS = {"Q4_0": (0, 32, 18, 256), "Q4_1": (1, 32, 20, 256), "Q5_0": (2, 32, 22, 256),
         "Q5_1": (3, 32, 24, 256), "Q8_0": (4, 32, 34, 256), "Q2_K": (5, 256, 84, 256),
         "Q3_K": (6, 256, 110, 256), "Q4_K": (7, 256, 144, 256), "Q5_K": (8, 256, 176, 256),
         "Q6_K": (9, 256, 210, 256), "IQ4_NL": (10, 32, 18, 256), "IQ4_XS": (11, 256, 136, 256)}
ROWS = 4  # rows per program


@triton.jit
def _u8(p, off):
    return tl.load(p + off).to(tl.int32)


@triton.jit
def _f16(p, off):
    """Little-endian half float at byte offsets off -> float32."""
    h = tl.load(p + off).to(tl.uint16) | (tl.load(p + off + 1).to(tl.uint16) << 8)
    return h.to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _kvalue(q):
    """IQ4's 16-entry table (ggq.quants.iquants.KVALUES_IQ4NL) at codes q, as float32."""
    v = tl.where(q < 8,
                 tl.where(q < 4, tl.where(q < 2, tl.where(q < 1, -127, -104), tl.where(q < 3, -83, -65)),
                          tl.where(q < 6, tl.where(q < 5, -49, -35), tl.where(q < 7, -22, -10))),
                 tl.where(q < 12, tl.where(q < 10, tl.where(q < 9, 1, 13), tl.where(q < 11, 25, 38)),
                          tl.where(q < 14, tl.where(q < 13, 53, 69), tl.where(q < 15, 89, 113))))
    return v.to(tl.float32)


@triton.jit
def _decode(blk, j, KIND: tl.constexpr):
    """float32 values of elements j (position in their block) of the blocks starting at byte
    pointers blk (same shape as j)."""
    if KIND == 0:    # Q4_0: d, 16 bytes: element j in byte j % 16, high nibble for j >= 16
        q = (_u8(blk, 2 + j % 16) >> (4 * (j // 16))) & 15
        return _f16(blk, 0) * (q - 8).to(tl.float32)
    elif KIND == 1:  # Q4_1: d, m, nibbles
        q = (_u8(blk, 4 + j % 16) >> (4 * (j // 16))) & 15
        return _f16(blk, 0) * q.to(tl.float32) + _f16(blk, 2)
    elif KIND == 2 or KIND == 4:  # Q5_0, Q8_0: d times a signed code
        return _f16(blk, 0) * _b32_codes(blk, j, KIND)
    elif KIND == 3:  # Q5_1: d, m, qh, nibbles
        q = ((_u8(blk, 8 + j % 16) >> (4 * (j // 16))) & 15) | (((_u8(blk, 4 + j // 8) >> (j % 8)) & 1) << 4)
        return _f16(blk, 0) * q.to(tl.float32) + _f16(blk, 2)
    elif KIND == 5:  # Q2_K: scales[16] (low: scale, high: min), qs[64], d, dmin
        h = j // 128
        jj = j % 128
        q = (_u8(blk, 16 + h * 32 + jj % 32) >> (2 * (jj // 32))) & 3
        sc = _u8(blk, j // 16)
        dl = _f16(blk, 80) * (sc & 15).to(tl.float32)
        ml = _f16(blk, 82) * (sc >> 4).to(tl.float32)
        return dl * q.to(tl.float32) - ml
    elif KIND == 6:  # Q3_K: hmask[32], qs[64], scales[12] (6-bit, packed), d
        h = j // 128
        jj = j % 128
        ql = (_u8(blk, 32 + h * 32 + jj % 32) >> (2 * (jj // 32))) & 3
        hb = (_u8(blk, j % 32) >> (j // 32)) & 1
        s = j // 16
        lo = (_u8(blk, 96 + s % 8) >> (4 * (s // 8))) & 15
        hi = (_u8(blk, 104 + s % 4) >> (2 * (s // 4))) & 3
        dl = _f16(blk, 108) * ((lo | (hi << 4)) - 32).to(tl.float32)
        return dl * (ql - 4 * (1 - hb)).to(tl.float32)
    elif KIND == 10:  # IQ4_NL: d, nibbles indexing the table
        q = (_u8(blk, 2 + j % 16) >> (4 * (j // 16))) & 15
        return _f16(blk, 0) * _kvalue(q)
    elif KIND == 11:  # IQ4_XS: d, scales_h (u16), scales_l[4], nibbles per 32-element sub-block
        s = j // 32
        ls = ((_u8(blk, 4 + s // 2) >> (4 * (s % 2))) & 15) | (((_u8(blk, 2 + s // 4) >> (2 * (s % 4))) & 3) << 4)
        q = (_u8(blk, 8 + s * 16 + j % 16) >> (4 * ((j % 32) // 16))) & 15
        return (_f16(blk, 0) * (ls - 32).to(tl.float32)) * _kvalue(q)
    elif KIND == 9:  # Q6_K: ql[128], qh[64], scales[16] int8, d
        h = j // 128
        jj = j % 128
        lo = (_u8(blk, h * 64 + jj % 64) >> (4 * (jj // 64))) & 15
        hi = (_u8(blk, 128 + h * 32 + jj % 32) >> (2 * (jj // 32))) & 3
        sc = tl.load(blk + 192 + j // 16).to(tl.int8, bitcast=True).to(tl.float32)
        return (_f16(blk, 208) * sc) * ((lo | (hi << 4)) - 32).to(tl.float32)
    else:            # Q4_K (7), Q5_K (8): d, dmin, 12 bytes of 6-bit scales/mins, [qh[32]], qs[128]
        s = j // 32
        sc, mn = _k4_scale_min(blk, s)
        if KIND == 7:
            q = (_u8(blk, 16 + (j // 64) * 32 + j % 32) >> (4 * (s % 2))) & 15
        else:
            q = ((_u8(blk, 48 + (j // 64) * 32 + j % 32) >> (4 * (s % 2))) & 15) \
                | (((_u8(blk, 16 + j % 32) >> s) & 1) << 4)
        dl = _f16(blk, 0) * sc
        ml = _f16(blk, 2) * mn
        return dl * q.to(tl.float32) - ml


@triton.jit
def _matvec(w, x, y, rows, cols, row_bytes, KIND: tl.constexpr, BS: tl.constexpr, TS: tl.constexpr,
            TILE: tl.constexpr, R: tl.constexpr):
    r = tl.program_id(0) * R + tl.arange(0, R)
    r = tl.minimum(r, rows - 1)  # past the end: recompute the last row, store masked below
    e = tl.arange(0, TILE)
    acc = tl.zeros((R, TILE), dtype=tl.float32)
    for k0 in range(0, cols, TILE):
        k = k0 + e
        inside = k < cols
        kk = tl.where(inside, k, 0)
        blk = w + r[:, None].to(tl.int64) * row_bytes + (kk // BS * TS)[None, :]
        v = _decode(blk, (kk % BS)[None, :] + 0 * r[:, None], KIND)
        xv = tl.load(x + kk, mask=inside, other=0.0)
        acc += v * xv[None, :]
    out = tl.sum(acc, axis=1)
    rr = tl.program_id(0) * R + tl.arange(0, R)
    tl.store(y + rr, out, mask=rr < rows)


# Block-structured products for the types that carry most weights (q4_k_m, q8_0 and their
# fallbacks): codes are dotted with x per sub-block and each sub-block's scale applied once,
# instead of decoding every element with its scales (a few instructions per weight, not forty).

@triton.jit
def _b32_codes(e, i, KIND: tl.constexpr):
    """Signed codes (float32) of elements i of the 32-element blocks at byte pointers e."""
    if KIND == 4:    # Q8_0: d, 32 int8
        return tl.load(e + 2 + i).to(tl.int8, bitcast=True).to(tl.float32)
    else:            # Q5_0 (2): d, qh (u32: bit i is element i's fifth bit), 16 bytes of nibbles
        q = ((_u8(e, 6 + i % 16) >> (4 * (i // 16))) & 15) | (((_u8(e, 2 + i // 8) >> (i % 8)) & 1) << 4)
        return (q - 16).to(tl.float32)


@triton.jit
def _mv_b32(w, x, y, rows, nb, row_bytes, KIND: tl.constexpr, TS: tl.constexpr, R: tl.constexpr,
            NB: tl.constexpr):
    """32-element blocks of TS bytes that start with their f16 scale d (Q8_0, Q5_0): per block
    d * (codes . x); NB blocks of R rows per iteration."""
    r = tl.minimum(tl.program_id(0) * R + tl.arange(0, R), rows - 1).to(tl.int64)
    i = tl.arange(0, 32)
    acc = tl.zeros((R,), dtype=tl.float32)
    for b0 in range(0, nb, NB):
        b = b0 + tl.arange(0, NB)
        inb = b < nb
        bb = tl.where(inb, b, 0)
        base = w + r[:, None] * row_bytes + (bb * TS)[None, :]                          # (R, NB)
        q = _b32_codes(base[:, :, None], i[None, None, :], KIND)                        # (R, NB, 32)
        xv = tl.load(x + bb[:, None] * 32 + i[None, :], mask=inb[:, None], other=0.0)  # (NB, 32)
        dot = tl.sum(q * xv[None, :, :], axis=2)
        acc += tl.sum(tl.where(inb[None, :], _f16(base, 0) * dot, 0.0), axis=1)
    rr = tl.program_id(0) * R + tl.arange(0, R)
    tl.store(y + rr, acc, mask=rr < rows)


@triton.jit
def _k4_scale_min(base, s):
    """Q4_K/Q5_K 6-bit scale and min (float32) of sub-blocks s (a tensor) of the blocks at base."""
    lo4 = s < 4
    a = _u8(base, 4 + s % 4)   # scale bytes 0..3 (sub-blocks 0..3, top bits of 4..7)
    b = _u8(base, 8 + s % 4)   # min bytes 0..3 (likewise)
    c = _u8(base, 12 + s % 4)  # bytes 8..11: low nibble scale, high nibble min of sub-blocks 4..7
    sc = tl.where(lo4, a & 63, (c & 15) | ((a >> 6) << 4))
    mn = tl.where(lo4, b & 63, (c >> 4) | ((b >> 6) << 4))
    return sc.to(tl.float32), mn.to(tl.float32)


@triton.jit
def _mv_q4_k(w, x, y, rows, nsb, row_bytes, R: tl.constexpr):
    """Q4_K: per 144-byte super-block d, dmin, 12 bytes of scales/mins, 128 bytes of nibbles:
    byte c*32 + i holds element c*64 + i (low nibble, sub-block 2c) and c*64 + 32 + i (high, 2c+1)."""
    r = tl.minimum(tl.program_id(0) * R + tl.arange(0, R), rows - 1).to(tl.int64)
    c4 = tl.arange(0, 4)
    i = tl.arange(0, 32)
    acc = tl.zeros((R,), dtype=tl.float32)
    for sb in range(0, nsb):
        base = w + r * row_bytes + sb * 144                                               # (R,)
        qb = _u8(base[:, None, None], 16 + c4[None, :, None] * 32 + i[None, None, :])     # (R, 4, 32)
        xo = sb * 256 + c4[:, None] * 64 + i[None, :]
        xl = tl.load(x + xo)
        xh = tl.load(x + xo + 32)
        dlo = tl.sum((qb & 15).to(tl.float32) * xl[None, :, :], axis=2)                   # (R, 4)
        dhi = tl.sum((qb >> 4).to(tl.float32) * xh[None, :, :], axis=2)
        sc_e, mn_e = _k4_scale_min(base[:, None], 2 * c4[None, :])
        sc_o, mn_o = _k4_scale_min(base[:, None], 2 * c4[None, :] + 1)
        sums = tl.sum(sc_e * dlo + sc_o * dhi, axis=1)
        mins = tl.sum(mn_e * tl.sum(xl, axis=1)[None, :] + mn_o * tl.sum(xh, axis=1)[None, :], axis=1)
        acc += _f16(base, 0) * sums - _f16(base, 2) * mins
    rr = tl.program_id(0) * R + tl.arange(0, R)
    tl.store(y + rr, acc, mask=rr < rows)


@triton.jit
def _mv_q6_k(w, x, y, rows, nsb, row_bytes, R: tl.constexpr):
    """Q6_K: per 210-byte super-block ql[128], qh[64], 16 int8 scales, d. Element 16 g + i of
    group g (one scale each): half h = g // 8, quarter q = (g % 8) // 2, position p = (g % 2) 16 + i;
    low bits in ql[64 h + 32 (q % 2) + p] >> 4 (q // 2), high in qh[32 h + p] >> 2 q."""
    r = tl.minimum(tl.program_id(0) * R + tl.arange(0, R), rows - 1).to(tl.int64)
    g = tl.arange(0, 16)
    i16 = tl.arange(0, 16)
    h = g // 8
    qq = (g % 8) // 2
    p = (g % 2)[:, None] * 16 + i16[None, :]                                               # (16, 16)
    lo_at = (h * 64 + (qq % 2) * 32)[:, None] + p
    hi_at = 128 + (h * 32)[:, None] + p
    lo_sh = (4 * (qq // 2))[:, None]
    hi_sh = (2 * qq)[:, None]
    acc = tl.zeros((R,), dtype=tl.float32)
    for sb in range(0, nsb):
        base = w + r * row_bytes + sb * 210
        e = base[:, None, None]
        lo = (_u8(e, lo_at[None, :, :]) >> lo_sh[None, :, :]) & 15
        hi = (_u8(e, hi_at[None, :, :]) >> hi_sh[None, :, :]) & 3
        q = ((lo | (hi << 4)) - 32).to(tl.float32)                                          # (R, 16, 16)
        xv = tl.load(x + sb * 256 + g[:, None] * 16 + i16[None, :])
        dot = tl.sum(q * xv[None, :, :], axis=2)                                            # (R, 16)
        sc = tl.load(base[:, None] + 192 + g[None, :]).to(tl.int8, bitcast=True).to(tl.float32)
        acc += _f16(base, 208) * tl.sum(sc * dot, axis=1)
    rr = tl.program_id(0) * R + tl.arange(0, R)
    tl.store(y + rr, acc, mask=rr < rows)


# type name -> (kernel, rows per program, blocks per iteration or None for one super-block)
STRUCTURED = {"Q8_0": (_mv_b32, 4, 8), "Q5_0": (_mv_b32, 4, 8), "Q4_K": (_mv_q4_k, 4, None),
              "Q6_K": (_mv_q6_k, 4, None)}


@triton.jit
def _dequant(w, out, rows, cols, row_bytes, KIND: tl.constexpr, BS: tl.constexpr, TS: tl.constexpr,
             TILE: tl.constexpr, R: tl.constexpr):
    """Program (i, j): rows i*R.. and columns j*TILE.. decoded into out (rows, cols)."""
    r = tl.program_id(0) * R + tl.arange(0, R)
    k = tl.program_id(1) * TILE + tl.arange(0, TILE)
    keep = (r < rows)[:, None] & (k < cols)[None, :]
    rr = tl.minimum(r, rows - 1).to(tl.int64)
    kk = tl.where(k < cols, k, 0)
    blk = w + rr[:, None] * row_bytes + (kk // BS * TS)[None, :]
    v = _decode(blk, (kk % BS)[None, :] + 0 * rr[:, None].to(tl.int32), KIND)
    tl.store(out + rr[:, None] * cols + kk[None, :], v.to(out.dtype.element_ty), mask=keep)


def supported(name: str) -> bool:
    return name in KINDS


def matvec(name: str, w, x, cols: int):
    """y (1, rows) float32 = x (1, cols) W^T for W uint8 (rows, row_bytes) of type name, on
    w's device (CUDA, or CPU under TRITON_INTERPRET=1)."""
    import torch

    kind, bs, ts, tile = KINDS[name]
    rows = w.shape[0]
    y = torch.empty((1, rows), dtype=torch.float32, device=w.device)
    if name in STRUCTURED:
        kernel, r, nb = STRUCTURED[name]
        x = x.reshape(-1).contiguous()
        if nb is None:
            kernel[(triton.cdiv(rows, r),)](w, x, y, rows, cols // bs, w.shape[1], R=r)
        else:
            kernel[(triton.cdiv(rows, r),)](w, x, y, rows, cols // bs, w.shape[1], KIND=kind, TS=ts, R=r, NB=nb)
        return y
    _matvec[(triton.cdiv(rows, ROWS),)](w, x.reshape(-1).contiguous(), y, rows, cols, w.shape[1], KIND=kind, BS=bs, TS=ts,
                                        TILE=tile, R=ROWS)
    return y


def dequantize(name: str, w, cols: int, dtype):
    """W uint8 (rows, row_bytes) of type name -> dtype (rows, cols), one launch (prompt tiles)."""
    import torch

    kind, bs, ts, tile = KINDS[name]
    rows = w.shape[0]
    out = torch.empty((rows, cols), dtype=dtype, device=w.device)
    _dequant[(triton.cdiv(rows, 8), triton.cdiv(cols, tile))](w, out, rows, cols, w.shape[1], KIND=kind, BS=bs,
                                                             TS=ts, TILE=tile, R=8)
    return out
