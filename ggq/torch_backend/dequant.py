"""GGML blocks decoded with torch ops, on whatever device the bytes are (CPU or CUDA).

DEQUANT[name](blocks) -> float32 (n_blocks, block_size) for blocks, a uint8 tensor
(n_blocks, type_size) laid out exactly as GGML (spec/QUANTS-32.md, spec/QUANTS-K.md). Each
function does the float operations of gguf-py's numpy dequantizers in the same order, in
float32, one rounding per operation: the values are the same bits (tests/test_torch_backend.py
checks every type against gguf.quants.dequantize).

dequantize_rows(name, raw, cols) decodes a (rows, row_bytes) slice; block geometry comes from
the quant registry (ggq.quants), the one place it is written down.
"""
from __future__ import annotations

import torch

from ..errors import QuantError
from ..quants import get_type
from ..quants.iquants import KVALUES_IQ4NL

QK_K = 256
_CONSTANTS: dict = {}


def _constant(values, dtype, device) -> torch.Tensor:
    """A small constant tensor on device, made once: a host-to-device copy per call would cost a
    transfer each time and is not allowed while a CUDA graph is being captured."""
    key = (values, dtype, str(device))
    t = _CONSTANTS.get(key)
    if t is None:
        t = _CONSTANTS[key] = torch.tensor(values, dtype=dtype, device=device)
    return t


def _f16(b: torch.Tensor) -> torch.Tensor:
    """(n, 2) little-endian half floats -> float32 (n, 1)."""
    return b.contiguous().view(torch.float16).to(torch.float32)


def _bits(b: torch.Tensor, width: int, count: int) -> torch.Tensor:
    """Fields of `width` bits, lowest first, of each byte of b (n, m) -> (n, m, count) uint8."""
    shifts = torch.arange(0, width * count, width, dtype=torch.uint8, device=b.device)
    return (b.unsqueeze(-1) >> shifts) & ((1 << width) - 1)


def _nibbles(qs: torch.Tensor, half: int) -> torch.Tensor:
    """Bytes (n, k*half) whose low nibbles hold elements 0..half-1 of each group of 2*half and
    whose high nibbles hold the next half -> (n, k*2*half) uint8 in element order."""
    n = qs.shape[0]
    q = qs.reshape(n, -1, 1, half) >> _constant((0, 4), torch.uint8, qs.device).reshape(1, 1, 2, 1)
    return (q & 0x0F).reshape(n, -1)


def _q4_0(b):
    d = _f16(b[:, :2])
    q = _nibbles(b[:, 2:], 16).to(torch.int8) - 8
    return d * q.to(torch.float32)


def _q4_1(b):
    d, m = _f16(b[:, :2]), _f16(b[:, 2:4])
    return d * _nibbles(b[:, 4:], 16).to(torch.float32) + m


def _q5_high(qh: torch.Tensor) -> torch.Tensor:
    """4 bytes per block: bit i of the little-endian u32 is element i's fifth bit."""
    return _bits(qh, 1, 8).reshape(qh.shape[0], 32)


def _q5_0(b):
    d = _f16(b[:, :2])
    q = (_nibbles(b[:, 6:], 16) | (_q5_high(b[:, 2:6]) << 4)).to(torch.int8) - 16
    return d * q.to(torch.float32)


def _q5_1(b):
    d, m = _f16(b[:, :2]), _f16(b[:, 2:4])
    q = _nibbles(b[:, 8:], 16) | (_q5_high(b[:, 4:8]) << 4)
    return d * q.to(torch.float32) + m


def _q8_0(b):
    d = _f16(b[:, :2])
    return b[:, 2:].contiguous().view(torch.int8).to(torch.float32) * d


def _q2_k(b):
    n = b.shape[0]
    scales, qs = b[:, :16], b[:, 16:80]
    d, dmin = _f16(b[:, 80:82]), _f16(b[:, 82:84])
    dl = (d * (scales & 0x0F).to(torch.float32)).reshape(n, 16, 1)
    ml = (dmin * (scales >> 4).to(torch.float32)).reshape(n, 16, 1)
    # byte j of each 32-byte half holds elements j, j+32, j+64, j+96 of that half, 2 bits each
    q = _bits(qs.reshape(n, 2, 32), 2, 4).permute(0, 1, 3, 2).reshape(n, 16, 16).to(torch.float32)
    return (dl * q - ml).reshape(n, QK_K)


def _q3_k(b):
    n = b.shape[0]
    hmask, qs, sc, d = b[:, :32], b[:, 32:96], b[:, 96:108], _f16(b[:, 108:110])
    low = _bits(sc[:, :8], 4, 2).permute(0, 2, 1).reshape(n, 16)      # scale j: nibble j//8 of byte j%8
    high = _bits(sc[:, 8:], 2, 4).permute(0, 2, 1).reshape(n, 16)     # 2 bits j//4 of byte 8 + j%4
    scales = ((low | (high << 4)).to(torch.int8) - 32).to(torch.float32)
    dl = (d * scales).reshape(n, 16, 1)
    ql = _bits(qs.reshape(n, 2, 32), 2, 4).permute(0, 1, 3, 2).reshape(n, 16, 16)
    qh = _bits(hmask, 1, 8).permute(0, 2, 1).reshape(n, 16, 16) ^ 1  # a set bit means no -4
    q = (ql.to(torch.int8) - (qh << 2).to(torch.int8)).to(torch.float32)
    return (dl * q).reshape(n, QK_K)


def _scale_min_k4(s: torch.Tensor):
    """12 bytes of 6-bit scales and mins (Q4_K, Q5_K) -> (sc, m), each uint8 (n, 8)."""
    n = s.shape[0]
    s = s.reshape(n, 3, 4)
    d, m, md = s[:, 0], s[:, 1], s[:, 2]
    sc = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=-1)
    mn = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return sc, mn


def _q4_k(b):
    n = b.shape[0]
    d, dmin = _f16(b[:, :2]), _f16(b[:, 2:4])
    sc, m = _scale_min_k4(b[:, 4:16])
    dl = (d * sc.to(torch.float32)).reshape(n, 8, 1)
    ml = (dmin * m.to(torch.float32)).reshape(n, 8, 1)
    q = _nibbles(b[:, 16:], 32).reshape(n, 8, 32).to(torch.float32)
    return (dl * q - ml).reshape(n, QK_K)


def _q5_k(b):
    n = b.shape[0]
    d, dmin = _f16(b[:, :2]), _f16(b[:, 2:4])
    sc, m = _scale_min_k4(b[:, 4:16])
    dl = (d * sc.to(torch.float32)).reshape(n, 8, 1)
    ml = (dmin * m.to(torch.float32)).reshape(n, 8, 1)
    ql = _nibbles(b[:, 48:], 32).reshape(n, 8, 32)
    qh = _bits(b[:, 16:48], 1, 8).permute(0, 2, 1)  # bit j of byte i: element i of sub-block j
    q = (ql | (qh << 4)).to(torch.float32)
    return (dl * q - ml).reshape(n, QK_K)


def _q6_k(b):
    n = b.shape[0]
    ql, qh, sc, d = b[:, :128], b[:, 128:192], b[:, 192:208], _f16(b[:, 208:210])
    dl = (d * sc.contiguous().view(torch.int8).to(torch.float32)).reshape(n, 16, 1)
    lo = _nibbles(ql, 64).reshape(n, 2, 4, 32)                        # per 128-element half
    hi = _bits(qh.reshape(n, 2, 32), 2, 4).permute(0, 1, 3, 2)        # (n, 2, 4, 32)
    q = ((lo | (hi << 4)).to(torch.int8) - 32).reshape(n, 16, 16).to(torch.float32)
    return (dl * q).reshape(n, QK_K)


def _kvalues(q: torch.Tensor) -> torch.Tensor:
    """IQ4 codes (uint8) -> their table values, float32."""
    table = _constant(tuple(KVALUES_IQ4NL.tolist()), torch.float32, q.device)
    return table[q.long()]


def _iq4_nl(b):
    return _f16(b[:, :2]) * _kvalues(_nibbles(b[:, 2:], 16))


def _iq4_xs(b):
    n = b.shape[0]
    d = _f16(b[:, :2])
    low = _bits(b[:, 4:8], 4, 2).reshape(n, 8)                                  # sub-block j: nibble j%2 of byte j//2
    high = _bits(b[:, 2:4], 2, 4).reshape(n, 8)                                 # 2 bits 2j of the u16
    dl = (d * ((low | (high << 4)).to(torch.int8) - 32).to(torch.float32)).reshape(n, 8, 1)
    q = _kvalues(_nibbles(b[:, 8:], 16)).reshape(n, 8, 32)
    return (dl * q).reshape(n, QK_K)


DEQUANT = {"IQ4_NL": _iq4_nl, "IQ4_XS": _iq4_xs, "Q4_0": _q4_0, "Q4_1": _q4_1, "Q5_0": _q5_0, "Q5_1": _q5_1, "Q8_0": _q8_0,
           "Q2_K": _q2_k, "Q3_K": _q3_k, "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k}

FLOAT_VIEW = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def supported(name: str) -> bool:
    return name in DEQUANT or name in FLOAT_VIEW


def dequantize_rows(name: str, raw: torch.Tensor, cols: int, dtype=torch.float32) -> torch.Tensor:
    """raw: uint8 (rows, row_bytes) of type `name` -> dtype (rows, cols)."""
    rows = raw.shape[0]
    if name in FLOAT_VIEW:
        return raw.contiguous().view(FLOAT_VIEW[name]).reshape(rows, cols).to(dtype)
    qt = get_type(name)
    if cols % qt.block_size or raw.shape[1] != cols // qt.block_size * qt.type_size:
        raise QuantError(f"{name}: {tuple(raw.shape)} bytes do not hold rows of {cols} columns")
    blocks = raw.reshape(rows * (cols // qt.block_size), qt.type_size)
    return DEQUANT[name](blocks).reshape(rows, cols).to(dtype)
