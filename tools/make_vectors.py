#!/usr/bin/env python3
"""Generate the .ggq conformance vectors in spec/vectors/.

Deliberately independent of ggq.format: files are encoded here from spec/FORMAT.md with
struct + zlib only, and expected values come from gguf.quants.dequantize (the gguf package),
so the vectors check ggq's reader and writer rather than echo them.

    python tools/make_vectors.py [OUT_DIR]      (default: spec/vectors next to this script)

Deterministic: the same numpy/gguf versions produce the same bytes.
"""
from __future__ import annotations

import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

MAGIC = b"\x89GGQ\r\n\x1a\n"
HEADER = struct.Struct("<8sHHIIIQQQQII")

# value type codes (spec/FORMAT.md section 4)
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
SCALAR = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f",
          BOOL: "<B", U64: "<Q", I64: "<q", F64: "<d"}
VT_NAME = {U8: "u8", I8: "i8", U16: "u16", I16: "i16", U32: "u32", I32: "i32", F32: "f32",
           BOOL: "bool", STRING: "string", U64: "u64", I64: "i64", F64: "f64"}

# byte offsets of the fp16 scale fields inside one block, per type (GGML layouts)
FP16_FIELDS = {
    "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0],
    "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
    "IQ4_NL": [0], "IQ4_XS": [0],
}


def align_up(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def enc_str(s: str | bytes) -> bytes:
    b = s.encode("utf-8") if isinstance(s, str) else s
    return struct.pack("<I", len(b)) + b


def enc_value(vt: int, v) -> bytes:
    if vt == STRING:
        return enc_str(v)
    return struct.pack(SCALAR[vt], int(v) if vt == BOOL else v)


def enc_kv(key: str, vt: int, v, et: int | None = None) -> bytes:
    out = enc_str(key) + bytes([vt])
    if vt == ARRAY:
        out += bytes([et]) + struct.pack("<I", len(v)) + b"".join(enc_value(et, x) for x in v)
    else:
        out += enc_value(vt, v)
    return out


def enc_entry(name, type_id, shape, offset, nbytes, crc) -> bytes:
    return (enc_str(name) + struct.pack("<II", type_id, len(shape))
            + struct.pack(f"<{len(shape)}Q", *shape) + struct.pack("<QQI", offset, nbytes, crc))


def build(meta: list[bytes], tensors: list[tuple], alignment: int = 64, *, major: int = 1,
          minor: int = 0, flags: int = 0, fix_crc: bool = True, entries: list[bytes] | None = None,
          data: bytes | None = None, counts: tuple[int, int] | None = None,
          sizes: tuple[int, int] | None = None, data_offset: int | None = None,
          pre_pad: bytes | None = None, trailing: bytes = b"", layout_alignment: int | None = None) -> bytes:
    """tensors: (name, type_id, shape, data_bytes). Layout per spec: each tensor at the next
    aligned offset in table order. entries/data/counts/sizes/data_offset/pre_pad override the
    computed parts so that invalid files can be made whose header checksum is still right
    (fix_crc=False leaves it 0); trailing bytes go after the data section."""
    la = layout_alignment or alignment
    offsets, off = [], 0
    for _, _, _, b in tensors:
        off = align_up(off, la)
        offsets.append(off)
        off += len(b)
    if entries is None:
        entries = [enc_entry(n, t, s, o, len(b), zlib.crc32(b))
                   for (n, t, s, b), o in zip(tensors, offsets)]
    if data is None:
        buf = bytearray(off)
        for (_, _, _, b), o in zip(tensors, offsets):
            buf[o:o + len(b)] = b
        data = bytes(buf)
    mbytes, tbytes = b"".join(meta), b"".join(entries)
    msize, tsize = sizes if sizes else (len(mbytes), len(tbytes))
    table_end = HEADER.size + msize + tsize
    real_end = HEADER.size + len(mbytes) + len(tbytes)
    if data_offset is None:
        data_offset = align_up(table_end, la)
    n_meta, n_tensors = counts if counts else (len(meta), len(entries))

    def header(crc):
        return HEADER.pack(MAGIC, major, minor, alignment, n_meta, n_tensors, msize,
                           tsize, data_offset, len(data), crc, flags)

    pad = pre_pad if pre_pad is not None else b"\0" * max(0, data_offset - real_end)
    pre = mbytes + tbytes + pad
    crc = zlib.crc32(header(0) + pre[:max(0, data_offset - HEADER.size)]) if fix_crc else 0
    return header(crc) + pre + data + trailing


def layout(tensors: list[tuple], alignment: int = 64, offsets: list[int] | None = None,
           data_size: int | None = None, fill: int = 0) -> tuple[list[bytes], bytes, list[int]]:
    """Table entries and data section for tensors at the given offsets (default: the
    writer's layout); uncovered data bytes are `fill`."""
    if offsets is None:
        offsets, off = [], 0
        for _, _, _, b in tensors:
            off = align_up(off, alignment)
            offsets.append(off)
            off += len(b)
    end = max([o + len(b) for (_, _, _, b), o in zip(tensors, offsets)] + [0])
    buf = bytearray([fill]) * (data_size if data_size is not None else end)
    for (_, _, _, b), o in zip(tensors, offsets):
        buf[o:o + len(b)] = b
    entries = [enc_entry(n, t, s, o, len(b), zlib.crc32(b)) for (n, t, s, b), o in zip(tensors, offsets)]
    return entries, bytes(buf), offsets


def random_blocks(rng, qname: str, rows: int, cols: int) -> np.ndarray:
    """Random but valid blocks: random bytes with finite fp16 scales of modest size."""
    bs, ts = GGML_QUANT_SIZES[GGMLQuantizationType[qname]]
    nblk = rows * cols // bs
    blocks = rng.integers(0, 256, size=(nblk, ts), dtype=np.uint8)
    for pos in FP16_FIELDS[qname]:
        d = (rng.uniform(0.002, 0.05, nblk) * rng.choice([-1, 1], nblk)).astype("<f2")
        blocks[:, pos:pos + 2] = d.view(np.uint8).reshape(nblk, 2)
    return blocks.reshape(rows, cols // bs * ts)


def float_bytes(rng, qname: str, shape) -> np.ndarray:
    x = rng.standard_normal(shape).astype(np.float32)
    if qname == "F32":
        return x.view(np.uint8).reshape(-1)
    if qname == "F16":
        return x.astype("<f2").view(np.uint8).reshape(-1)
    # BF16: top 16 bits of float32 (truncation is fine: any bf16 bit pattern is valid data)
    return (x.view("<u4") >> 16).astype("<u2").view(np.uint8).reshape(-1)


def expected_values(raw: np.ndarray, qname: str, shape) -> np.ndarray:
    rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    with np.errstate(all="ignore"):  # inf/NaN scales: IEEE arithmetic, no warnings
        exp = gguf_dequantize(raw.reshape(rows, -1), GGMLQuantizationType[qname])
    return np.asarray(exp, dtype=np.float32).reshape(shape)


def f16_bits(bits) -> np.ndarray:
    return np.asarray(bits, dtype="<u2").view(np.uint8)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for old in list(out.glob("*.ggq")) + list(out.glob("*.npy")):
        old.unlink()
    rng = np.random.default_rng(20240601)
    manifest: dict = {"format_version": [1, 0], "files": {}}

    def add_valid(fname, meta_spec, tensor_specs, alignment=64, desc="", *, minor=0, flags=0,
                  offsets=None, data_size=None, fill=0, pre_pad=None):
        """tensor_specs: (name, type name or id string, shape, uint8 bytes). offsets: explicit
        data-section offsets (default: the writer's layout); fill: value of uncovered data
        bytes; pre_pad: the padding bytes before data_offset (default zeros)."""
        meta = [enc_kv(*m) for m in meta_spec]
        tensors, tinfo = [], {}
        for tname, qname, shape, raw in tensor_specs:
            known = qname in GGMLQuantizationType.__members__
            tid = GGMLQuantizationType[qname].value if known else int(qname)
            tensors.append((tname, tid, shape, raw.tobytes()))
            entry = {"type": qname if known else "unknown", "type_id": tid, "shape": list(shape)}
            tinfo[tname] = (entry, raw, known, qname, shape)
        entries, data, offs = layout(tensors, alignment, offsets, data_size, fill)
        for (tname, (entry, raw, known, qname, shape)), o in zip(list(tinfo.items()), offs):
            entry.update(offset=o, nbytes=int(raw.nbytes), crc32=zlib.crc32(raw.tobytes()))
            if known:
                npy = f"{Path(fname).stem}.{tname}.npy"
                np.save(out / npy, expected_values(raw, qname, shape))
                entry["expected"] = npy
            tinfo[tname] = entry
        if pre_pad is not None:
            table_end = HEADER.size + sum(map(len, meta)) + sum(map(len, entries))
            pre_pad = bytes(pre_pad[i % len(pre_pad)] for i in range(align_up(table_end, alignment) - table_end))
        blob = build(meta, tensors, alignment, minor=minor, flags=flags, entries=entries,
                     data=data, pre_pad=pre_pad)
        (out / fname).write_bytes(blob)
        md = {}
        for m in meta_spec:
            key, vt, v = m[0], m[1], m[2]
            tname = f"array[{VT_NAME[m[3]]}]" if vt == ARRAY else VT_NAME[vt]
            if vt == F32:
                v = float(np.float32(v))
            elif vt == ARRAY and m[3] == F32:
                v = [float(np.float32(x)) for x in v]
            elif vt == ARRAY and m[3] == F64:
                v = [float(x) for x in v]
            md[key] = {"type": tname, "value": v}
        # canonical: exactly what a writer must produce from this content (section 7 layout,
        # zero padding, version 1.0, flags 0), so a writer can be checked byte for byte
        canonical = minor == 0 and flags == 0 and offsets is None and fill == 0 and pre_pad is None
        manifest["files"][fname] = {"valid": True, "description": desc, "version": [1, minor],
                                    "flags": flags, "alignment": alignment, "canonical": canonical,
                                    "metadata": md, "tensors": tinfo}

    every_type_meta = [
        ("general.architecture", STRING, "llama"),
        ("test.u8", U8, 255), ("test.i8", I8, -128), ("test.u16", U16, 65535),
        ("test.i16", I16, -32768), ("test.u32", U32, 4294967295), ("test.i32", I32, -2147483648),
        ("test.u64", U64, 2**64 - 1), ("test.i64", I64, -(2**63)),
        ("test.f32", F32, 1e-5), ("test.f64", F64, 0.1), ("test.bool_true", BOOL, True),
        ("test.bool_false", BOOL, False), ("test.string_utf8", STRING, "héllo, 世界 \u2603"),
        ("test.string_empty", STRING, ""),
        ("test.array_u8", ARRAY, [0, 1, 255], U8), ("test.array_i32", ARRAY, [-1, 0, 7], I32),
        ("test.array_f32", ARRAY, [0.5, -2.25, 1e-3], F32), ("test.array_f64", ARRAY, [1.0, 2.5], F64),
        ("test.array_bool", ARRAY, [True, False, True], BOOL),
        ("test.array_string", ARRAY, ["<s>", "</s>", "▁hi", ""], STRING),
        ("test.array_empty", ARRAY, [], U32),
    ]
    add_valid("floats.ggq", every_type_meta, [
        ("t.F32", "F32", (3, 8), float_bytes(rng, "F32", (3, 8))),
        ("t.F32_1d", "F32", (8,), float_bytes(rng, "F32", (8,))),
        ("t.F32_3d", "F32", (2, 3, 4), float_bytes(rng, "F32", (2, 3, 4))),
        ("t.F16", "F16", (2, 16), float_bytes(rng, "F16", (2, 16))),
        ("t.BF16", "BF16", (2, 32), float_bytes(rng, "BF16", (2, 32))),
    ], desc="metadata of every value type; F32 (1-D, 2-D, 3-D), F16, BF16 tensors; declares "
            "architecture llama without the model keys (a valid container, section 13)")
    add_valid("legacy.ggq", [("general.architecture", STRING, "llama")], [
        (f"t.{q}", q, (2, 64), random_blocks(rng, q, 2, 64))
        for q in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
    ], desc="32-element block types Q4_0 Q4_1 Q5_0 Q5_1 Q8_0, random valid blocks, shape (2, 64)")
    add_valid("kquants.ggq", [("general.architecture", STRING, "llama")], [
        (f"t.{q}", q, (2, 256), random_blocks(rng, q, 2, 256))
        for q in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
    ], desc="k-quant types Q2_K..Q6_K, random valid super-blocks, shape (2, 256)")
    add_valid("unknown_type.ggq", [], [
        ("t.opaque", "9999", (3,), rng.integers(0, 256, 10, dtype=np.uint8)),
        ("t.F32", "F32", (4,), float_bytes(rng, "F32", (4,))),
    ], alignment=32, desc="a tensor of unknown type id 9999 (10 raw bytes, must still open) and "
                          "an F32 tensor; alignment 32")
    add_valid("empty.ggq", [], [], desc="no metadata and no tensors (64-byte header only)")

    # -- valid files for the corners of the spec (issue 11, point 12) ------------------
    one = [("general.architecture", STRING, "llama")]
    f32_16 = np.arange(16, dtype="<f4").view(np.uint8)
    add_valid("minor_version.ggq", one, [("a", "F32", (16,), f32_16)], minor=7,
              desc="version 1.7: a newer minor version must be accepted (section 11)")
    add_valid("flags.ggq", one, [("a", "F32", (16,), f32_16)], flags=0xFFFFFFFF,
              desc="flags 0xFFFFFFFF: readers of 1.x ignore flags (section 3)")
    add_valid("table_order.ggq", one, [
        ("first", "F32", (16,), float_bytes(rng, "F32", (16,))),
        ("second", "F16", (2, 32), float_bytes(rng, "F16", (2, 32))),
        ("third", "Q8_0", (1, 64), random_blocks(rng, "Q8_0", 1, 64)),
    ], offsets=[256, 128, 0], data_size=384,
        desc="tensors stored in reverse table order with a 64-byte gap and 64 bytes of padding "
             "at the end of the data section (section 7: any layout is accepted)")
    add_valid("zero_length.ggq", one, [
        ("a", "F32", (16,), f32_16),
        ("z.shared", "77", (4,), np.zeros(0, np.uint8)),
        ("z.end", "78", (1, 2, 3), np.zeros(0, np.uint8)),
        ("z.same", "77", (5,), np.zeros(0, np.uint8)),
    ], offsets=[0, 0, 64, 0],
        desc="unknown-type tensors of nbytes 0: two at offset 0 inside tensor 'a', one at "
             "offset = data_size (section 7: they overlap nothing)")
    add_valid("alignment_max.ggq", one, [
        ("a", "F32", (16,), f32_16),
        ("b", "F16", (8,), float_bytes(rng, "F16", (8,))),
    ], alignment=65536, desc="alignment 65536, the maximum (data_offset 65536, tensor 'b' at 65536)")
    int_arrays = [
        ("arr.u8", ARRAY, [0, 1, 127, 128, 255], U8),
        ("arr.i8", ARRAY, [-128, -1, 0, 1, 127], I8),
        ("arr.u16", ARRAY, [0, 1, 256, 65535], U16),
        ("arr.i16", ARRAY, [-32768, -1, 0, 32767], I16),
        ("arr.u32", ARRAY, [0, 1, 65536, 4294967295], U32),
        ("arr.i32", ARRAY, [-2147483648, -1, 0, 2147483647], I32),
        ("arr.u64", ARRAY, [0, 1, 2**32, 2**64 - 1], U64),
        ("arr.i64", ARRAY, [-(2**63), -1, 0, 2**63 - 1], I64),
        ("arr.f32", ARRAY, [0.0, -0.0, 1.0, -3.5, 3.4028234663852886e38, 1e-45, 1.1754943508222875e-38], F32),
        ("arr.f64", ARRAY, [0.0, -0.0, 0.1, -1e308, 5e-324, 2.2250738585072014e-308], F64),
        ("arr.bool", ARRAY, [False, True, True, False], BOOL),
        ("arr.string", ARRAY, ["", "a", "\u00e9", "\U0001F600", "x" * 300], STRING),
    ]
    empty_arrays = [(f"empty.{VT_NAME[et]}", ARRAY, [], et) for et in
                    (U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, U64, I64, F64)]
    add_valid("arrays.ggq", int_arrays + empty_arrays, [],
              desc="arrays of every element type with their extreme values, and an empty array "
                   "of every element type (the element type is kept)")
    add_valid("strings.ggq", [
        ("str.nul", STRING, "a\u0000b\u0000"),
        ("str.bom", STRING, "\ufeffbom first"),
        ("str.bom_only", STRING, "\ufeff"),
        ("str.astral", STRING, "\U0001F600\U00010348\U0010FFFF"),
        ("str.controls", STRING, "\t\r\n\x7f\u0085\u2028"),
        ("key.\u00e9", STRING, "NFC e-acute (U+00E9)"),
        ("key.e\u0301", STRING, "NFD e + combining acute (U+0065 U+0301), a different key"),
        ("key.\u212b", STRING, "ANGSTROM SIGN, not the same key as A-ring"),
        ("key.\u00c5", STRING, "A-ring"),
    ], [
        ("t.\u00e9", "F32", (4,), float_bytes(rng, "F32", (4,))),
        ("t.e\u0301", "F32", (4,), float_bytes(rng, "F32", (4,))),
        ("\u0442\u0435\u043d\u0437\u043e\u0440.\U0001F600", "F32", (4,), float_bytes(rng, "F32", (4,))),
    ], desc="string values with NUL, a leading BOM, 4-byte UTF-8 and control characters (kept "
            "verbatim); keys and tensor names that differ only by Unicode normalisation "
            "(distinct: byte comparison, section 1)")
    add_valid("padding.ggq", one, [
        ("a", "F32", (3,), float_bytes(rng, "F32", (3,))),
        ("b", "F32", (5,), float_bytes(rng, "F32", (5,))),
    ], fill=0xA5, pre_pad=b"\xff\x5a",
        desc="non-zero padding bytes before data_offset (covered by header_crc32, which "
             "matches) and between tensors (covered by nothing): readers accept them (section 7)")
    special16 = [0x0000, 0x8000, 0x0001, 0x8001, 0x03FF, 0x0200, 0x0400, 0x7BFF, 0xFBFF,
                 0x7C00, 0xFC00, 0x7E00, 0xFE00, 0x7C01, 0x7FFF, 0xFD55, 0x3C00, 0xBC00,
                 0x3555, 0x0010, 0x83FF, 0x4000, 0xC000, 0x7D00, 0x0002, 0x0100, 0x8200,
                 0x5BFF, 0x1000, 0x9001, 0x2E66, 0xAE66]
    bf16 = [0x0000, 0x8000, 0x0001, 0x8001, 0x007F, 0x0080, 0x7F7F, 0xFF7F, 0x7F80, 0xFF80,
            0x7FC0, 0xFFC0, 0x7F81, 0x7FFF, 0x3F80, 0xBF80]
    f32 = np.array([0.0, -0.0, 1e-45, -1e-45, 1.1754942e-38, 3.4028235e38, np.inf, -np.inf],
                   dtype="<f4").view("<u4").tolist() + [0x7FC00000, 0xFFC00000, 0x7F800001,
                                                        0x7FBFFFFF, 0xFFFFFFFF, 0x7FC12345,
                                                        0x00000002, 0x807FFFFF]
    add_valid("float_special.ggq", one, [
        ("t.F16", "F16", (2, 16), f16_bits(special16)),
        ("t.BF16", "BF16", (16,), f16_bits(bf16)),
        ("t.F32", "F32", (16,), np.asarray(f32, dtype="<u4").view(np.uint8)),
    ], desc="F16 / BF16 / F32 special values: ±0, subnormals (smallest, largest), largest "
            "finite, ±inf, quiet and signalling NaNs of both signs (decoded exactly; a NaN "
            "matches any NaN, section 10)")

    def special_blocks(qname, nblk, scale_bits):
        """Random blocks whose fp16 fields (in order of FP16_FIELDS, cycling) take the given
        special bit patterns."""
        b = random_blocks(rng, qname, 1, nblk * GGML_QUANT_SIZES[GGMLQuantizationType[qname]][0]).reshape(nblk, -1)
        k = 0
        for blk in range(nblk):
            for pos in FP16_FIELDS[qname]:
                h = scale_bits[k % len(scale_bits)]
                b[blk, pos:pos + 2] = f16_bits([h])
                k += 1
        return b.reshape(1, -1)

    scales = [0x7C00, 0xFC00, 0x7E00, 0x0001, 0x8000, 0x3C00, 0x0000, 0x7C00, 0x0200, 0xFE01]
    add_valid("quant_special.ggq", one, [
        (f"t.{q}", q, (1, 4 * GGML_QUANT_SIZES[GGMLQuantizationType[q]][0]),
         special_blocks(q, 4, scales[i:] + scales[:i]))
        for i, q in enumerate(("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"))
    ], desc="blocks whose fp16 scales / mins are ±inf, NaN, subnormal, ±0: decoded with IEEE "
            "float32 arithmetic (inf·0 = NaN), never rejected (section 10)")
    add_valid("multiblock.ggq", one, [
        (f"t.{q}", q, (2, 768), random_blocks(rng, q, 2, 768))
        for q in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
    ] + [
        ("t.Q4_0_3d", "Q4_0", (2, 2, 96), random_blocks(rng, "Q4_0", 4, 96).reshape(2, 2, -1)),
        ("t.Q8_0_4d", "Q8_0", (1, 2, 2, 64), random_blocks(rng, "Q8_0", 4, 64).reshape(1, 2, 2, -1)),
        ("t.Q5_1_1d", "Q5_1", (128,), random_blocks(rng, "Q5_1", 1, 128)),
    ], desc="three k-quant super-blocks per row (shape (2, 768)); 3-D, 4-D and 1-D tensors of "
            "32-element block types (rows = product of the leading dims)")

    # IQ4_NL / IQ4_XS (spec/QUANTS-IQ.md): a generator of their own, so adding them left every
    # earlier vector's bytes unchanged
    irng = np.random.default_rng(20250120)
    iq_scales = [0x7C00, 0xFC00, 0x7E00, 0x0001, 0x8000, 0x3C00, 0x0000, 0x0200]
    ispecial = {}
    for q, nblk in (("IQ4_NL", 8), ("IQ4_XS", 8)):
        bs = GGML_QUANT_SIZES[GGMLQuantizationType[q]][0]
        b = random_blocks(irng, q, 1, nblk * bs).reshape(nblk, -1)
        b[:, 0:2] = f16_bits(iq_scales[:nblk]).reshape(nblk, 2)
        ispecial[q] = b.reshape(1, -1)
    add_valid("iquants.ggq", one, [
        ("t.IQ4_NL", "IQ4_NL", (2, 64), random_blocks(irng, "IQ4_NL", 2, 64)),
        ("t.IQ4_XS", "IQ4_XS", (2, 512), random_blocks(irng, "IQ4_XS", 2, 512)),
        ("t.IQ4_NL_special", "IQ4_NL", (1, 256), ispecial["IQ4_NL"]),
        ("t.IQ4_XS_special", "IQ4_XS", (1, 2048), ispecial["IQ4_XS"]),
    ], desc="non-uniform 4-bit types IQ4_NL (shape (2, 64)) and IQ4_XS (shape (2, 512), two "
            "super-blocks per row), random valid blocks (every 6-bit sub-block scale and nibble "
            "value occurs); and one row of each whose fp16 d are ±inf, NaN, subnormal, ±0, 1.0 "
            "(IEEE float32 arithmetic, never rejected)")

    # -- invalid files: each breaks exactly one rule of section 9 ----------------------
    base_meta = [enc_kv("general.architecture", STRING, "llama")]
    a = np.arange(16, dtype="<f4").tobytes()
    b = np.arange(16, 32, dtype="<f4").tobytes()
    good = [("a", 0, (16,), a), ("b", 0, (16,), b)]
    valid_base = build(base_meta, good)

    def add_bad(fname, data, rule, desc, stage="open", report=None):
        (out / fname).write_bytes(data)
        e = {"valid": False, "description": desc, "rule": rule, "stage": stage}
        if report is not None:
            e["report"] = report
        manifest["files"][fname] = e

    def fix_crc(blob: bytes) -> bytes:
        b2 = bytearray(blob)
        doff = struct.unpack_from("<Q", b2, 40)[0]
        struct.pack_into("<I", b2, 56, 0)
        struct.pack_into("<I", b2, 56, zlib.crc32(bytes(b2[:doff])))
        return bytes(b2)

    def one_tensor(entry: bytes, data: bytes = a, meta=base_meta, **kw) -> bytes:
        return build(meta, good, entries=[entry], data=data, **kw)

    def meta_only(entries: list[bytes], count: int | None = None, **kw) -> bytes:
        return build(entries, [], counts=(len(entries) if count is None else count, 0), **kw)

    def kv_raw(key: bytes, vt: int, body: bytes) -> bytes:
        return enc_str(key) + bytes([vt]) + body

    # rule 1
    add_bad("bad_magic.ggq", fix_crc(b"GGUF" + valid_base[4:]), 1,
            "first 8 bytes are not the .ggq magic (header_crc32 recomputed)")
    add_bad("truncated_header.ggq", valid_base[:40], 1, "file shorter than the 64-byte header")
    # rule 2
    add_bad("bad_version.ggq", build(base_meta, good, major=2), 2,
            "version_major 2 (unknown major version)")
    # rule 3
    add_bad("bad_alignment.ggq", build(base_meta, good, alignment=48), 3,
            "alignment 48, not a power of two (file laid out consistently with 48)")
    add_bad("alignment_too_small.ggq", build(base_meta, good, alignment=16), 3,
            "alignment 16, a power of two below the minimum 32")
    # rule 4 (limits are checked before the bytes they announce, section 9)
    add_bad("absurd_count.ggq", build(base_meta, good, counts=(1, 2**31)), 4,
            "tensor_count 2^31, beyond the limit 1048576")
    add_bad("metadata_count_limit.ggq", build(base_meta, good, counts=(65537, 2)), 4,
            "metadata_count 65537, one above the limit")
    mlen, tlen = len(b"".join(base_meta)), len(b"".join(enc_entry(n, t, s_, 0, 64, 0) for n, t, s_, _ in good))
    add_bad("metadata_size_limit.ggq", build(base_meta, good, sizes=((256 << 20) + 1, tlen), pre_pad=b""), 4,
            "metadata_size 256 MiB + 1, above the limit (in a tiny file)")
    add_bad("table_size_limit.ggq", build(base_meta, good, sizes=(mlen, (256 << 20) + 1), pre_pad=b""), 4,
            "table_size 256 MiB + 1, above the limit (in a tiny file)")
    # rule 5
    add_bad("truncated.ggq", valid_base[:-10], 5, "last 10 bytes of the data section cut off")
    add_bad("trailing_bytes.ggq", valid_base + b"\0", 5,
            "one byte after the end of the data section (data_offset + data_size < file size)")
    table_end = HEADER.size + mlen + tlen
    add_bad("wrong_data_offset.ggq", build(base_meta, good, data_offset=align_up(table_end, 64) + 64), 5,
            "data_offset 64 bytes past the aligned table end (zero padding up to it, data_size "
            "and checksum consistent)")
    add_bad("sections_past_eof.ggq", build(base_meta, good, sizes=(mlen + 4096, tlen), pre_pad=b""), 5,
            "metadata_size 4096 bytes larger than the file holds (within the limit)")
    # rule 6
    corrupt = bytearray(valid_base)
    corrupt[HEADER.size + 30] ^= 0x01  # inside the metadata string "llama" -> "lmama"
    add_bad("bad_header_crc.ggq", bytes(corrupt), 6,
            "one metadata byte flipped ('llama' -> 'lmama'), header_crc32 not updated")
    # rule 7
    add_bad("metadata_leftover.ggq", build(base_meta + [b"\0"], good, counts=(1, 2)), 7,
            "one unused byte after the last metadata entry")
    add_bad("metadata_count_overrun.ggq", build(base_meta, good, counts=(2, 2)), 7,
            "metadata_count 2 but the section holds one entry: the next key length crosses its end")
    cut = kv_raw(b"k", STRING, struct.pack("<I", 10) + b"abcde")
    add_bad("metadata_overrun.ggq", meta_only([cut]), 7,
            "a string value of length 10 with only 5 bytes left in the metadata section")
    entries = [enc_entry(n, t, s_, o, len(d), zlib.crc32(d)) for (n, t, s_, d), o in zip(good, (0, 64))]
    add_bad("table_leftover.ggq", build(base_meta, good, entries=entries + [b"\0\0\0"], counts=(1, 2)), 7,
            "three unused bytes after the last tensor entry")
    add_bad("table_overrun.ggq", build(base_meta, good, entries=[entries[0], entries[1][:-4]]), 7,
            "the last tensor entry is cut off by the end of the table (no crc32 field)")
    # rule 8
    ov = [enc_entry("a", 0, (16,), 0, 64, zlib.crc32(a)), enc_entry("a", 0, (16,), 64, 64, zlib.crc32(b))]
    add_bad("duplicate_name.ggq", build(base_meta, good, entries=ov, data=a + b), 8, "two tensors named 'a'")
    add_bad("duplicate_key.ggq", build(base_meta * 2, good), 8, "metadata key general.architecture twice")
    add_bad("bad_utf8.ggq", one_tensor(enc_entry(b"\xff\xfe", 0, (16,), 0, 64, zlib.crc32(a))), 8,
            "a tensor name that is not valid UTF-8 (FF FE)")
    add_bad("name_too_long.ggq", one_tensor(enc_entry("x" * 257, 0, (16,), 0, 64, zlib.crc32(a))), 8,
            "a 257-byte tensor name (limit 256)")
    add_bad("empty_name.ggq", one_tensor(enc_entry(b"", 0, (16,), 0, 64, zlib.crc32(a))), 8,
            "a tensor name of length 0")
    add_bad("nul_in_name.ggq", one_tensor(enc_entry(b"a\0b", 0, (16,), 0, 64, zlib.crc32(a))), 8,
            "a tensor name containing U+0000")
    add_bad("surrogate_name.ggq", one_tensor(enc_entry(b"a\xed\xa0\x80", 0, (16,), 0, 64, zlib.crc32(a))), 8,
            "a tensor name with an encoded surrogate (ED A0 80)")
    add_bad("empty_key.ggq", meta_only([kv_raw(b"", U32, b"\0" * 4)]), 8, "a metadata key of length 0")
    add_bad("key_too_long.ggq", meta_only([kv_raw(b"k" * 257, U32, b"\0" * 4)]), 8,
            "a 257-byte metadata key (limit 256)")
    add_bad("nul_in_key.ggq", meta_only([kv_raw(b"general.\0name", U32, b"\0" * 4)]), 8,
            "a metadata key containing U+0000")
    add_bad("overlong_key.ggq", meta_only([kv_raw(b"k\xc0\xaf", U32, b"\0" * 4)]), 8,
            "a metadata key with an overlong UTF-8 form (C0 AF for '/')")
    add_bad("truncated_utf8_key.ggq", meta_only([kv_raw(b"k\xe2\x82", U32, b"\0" * 4)]), 8,
            "a metadata key ending in a truncated 3-byte UTF-8 sequence (E2 82)")
    add_bad("above_unicode_key.ggq", meta_only([kv_raw(b"k\xf4\x90\x80\x80", U32, b"\0" * 4)]), 8,
            "a metadata key encoding a code point above U+10FFFF (F4 90 80 80)")
    # rule 9
    add_bad("bad_bool.ggq", meta_only([kv_raw(b"k", BOOL, b"\x02")]), 9, "a bool value byte 2")
    add_bad("bad_bool_in_array.ggq", meta_only([kv_raw(b"k", ARRAY, bytes([BOOL]) + struct.pack("<I", 3) + b"\x01\x00\xff")]), 9,
            "a bool array whose third element is FF")
    add_bad("unknown_value_type.ggq", meta_only([kv_raw(b"k", 13, b"\0" * 8)]), 9, "value type code 13")
    add_bad("unknown_element_type.ggq", meta_only([kv_raw(b"k", ARRAY, bytes([13]) + struct.pack("<I", 1) + b"\0" * 8)]), 9,
            "an array of element type code 13")
    inner = bytes([U8]) + struct.pack("<I", 1) + b"\x07"
    add_bad("nested_array.ggq", meta_only([kv_raw(b"k", ARRAY, bytes([ARRAY]) + struct.pack("<I", 1) + inner)]), 9,
            "an array of arrays (element type 9) holding one array of one u8")
    add_bad("empty_nested_array.ggq", meta_only([kv_raw(b"k", ARRAY, bytes([ARRAY]) + struct.pack("<I", 0))]), 9,
            "an empty array of element type 9 (an empty array needs a valid element type)")
    add_bad("empty_array_bad_type.ggq", meta_only([kv_raw(b"k", ARRAY, bytes([200]) + struct.pack("<I", 0))]), 9,
            "an empty array of element type 200")
    add_bad("array_count_limit.ggq", meta_only([kv_raw(b"k", ARRAY, bytes([U8]) + struct.pack("<I", (1 << 24) + 1) + b"\0" * 8)]), 9,
            "an array count of 16777217, one above the limit (in a tiny file)")
    huge = kv_raw(b"general.architecture", STRING, struct.pack("<I", 0x7FFFFFFF) + b"llama")
    add_bad("huge_string.ggq", build([huge], good), 9, "a metadata string claiming 2 GiB in a tiny file")
    add_bad("string_limit_in_array.ggq", meta_only([kv_raw(b"k", ARRAY, bytes([STRING]) + struct.pack("<I", 2) + enc_str("ok")
                                                            + struct.pack("<I", (64 << 20) + 1) + b"abc")]), 9,
            "an array whose second string claims 64 MiB + 1 bytes (limit 64 MiB, in a tiny file)")
    add_bad("bad_utf8_value.ggq", meta_only([kv_raw(b"k", STRING, enc_str(b"ok\xc3\x28"))]), 9,
            "a string value that is not valid UTF-8 (C3 28)")
    add_bad("bad_utf8_in_array.ggq", meta_only([kv_raw(b"k", ARRAY, bytes([STRING]) + struct.pack("<I", 2) + enc_str("fine")
                                                        + enc_str(b"\xed\xbf\xbf"))]), 9,
            "a string array whose second element is an encoded surrogate (ED BF BF)")
    # rule 10 (unknown types where the shape would otherwise also break rule 11)
    add_bad("too_many_dims.ggq", one_tensor(enc_entry("a", 0, (1, 1, 1, 1, 16), 0, 64, zlib.crc32(a))), 10,
            "a tensor with 5 dimensions (limit 4)")
    add_bad("no_dims.ggq", one_tensor(enc_entry("a", 0, (), 0, 64, zlib.crc32(a))), 10, "a tensor with 0 dimensions")
    add_bad("zero_dim.ggq", build(base_meta, good, entries=[enc_entry("a", 0, (0, 16), 0, 0, 0)], data=b""), 10,
            "an F32 tensor of dims (0, 16) (nbytes 0)")
    add_bad("dim_too_large.ggq", build(base_meta, good, entries=[enc_entry("a", 77, ((1 << 40) + 1,), 0, 0, 0)], data=b""), 10,
            "a tensor (unknown type 77, nbytes 0) with a dimension of 2^40 + 1")
    add_bad("too_many_elements.ggq", build(base_meta, good, entries=[enc_entry("a", 77, ((1 << 24) + 1, 1 << 24), 0, 0, 0)], data=b""), 10,
            "a tensor (unknown type 77, nbytes 0) of dims (2^24 + 1, 2^24): more than 2^48 elements")
    # rule 11
    lm = enc_entry("a", 8, (16, 32), 0, 64, zlib.crc32(a))
    add_bad("length_mismatch.ggq", one_tensor(lm), 11,
            "Q8_0 tensor of shape (16, 32) (544 bytes) stating a byte length of 64")
    add_bad("row_not_multiple.ggq", one_tensor(enc_entry("a", 8, (2, 48), 0, 64, zlib.crc32(a))), 11,
            "Q8_0 tensor of shape (2, 48): cols not a multiple of 32")
    kq = rng.integers(0, 256, 144, dtype=np.uint8).tobytes()
    add_bad("row_not_multiple_k.ggq", build(base_meta, good, entries=[enc_entry("a", 12, (1, 128), 0, 144, zlib.crc32(kq))], data=kq), 11,
            "Q4_K tensor of shape (1, 128): cols not a multiple of 256")
    # rule 12
    add_bad("overlapping.ggq", build(base_meta, good, entries=[enc_entry("a", 0, (16,), 0, 64, zlib.crc32(a)),
                                                                enc_entry("b", 0, (16,), 0, 64, zlib.crc32(a))], data=a), 12,
            "tensors 'a' and 'b' both at offset 0 (checksums valid)")
    ab = a + b + a[:32]
    add_bad("partial_overlap.ggq", build(base_meta, good, alignment=32,
                                         entries=[enc_entry("a", 0, (16,), 0, 64, zlib.crc32(a)),
                                                  enc_entry("b", 0, (16,), 32, 64, zlib.crc32(ab[32:96]))], data=ab[:96]), 12,
            "alignment 32; tensor 'a' at [0, 64) and 'b' at [32, 96) share 32 bytes")
    add_bad("misaligned.ggq", one_tensor(enc_entry("a", 0, (16,), 32, 64, zlib.crc32(a)), data=a + a), 12,
            "tensor offset 32 in a file with alignment 64")
    add_bad("out_of_bounds.ggq", one_tensor(enc_entry("a", 0, (16,), 64, 64, zlib.crc32(a))), 12,
            "tensor bytes [64, 128) past the 64-byte data section")
    add_bad("offset_overflow.ggq", build(base_meta, good, entries=[enc_entry("a", 77, (16,), 2**64 - 64, 128, 0)], data=a), 12,
            "tensor (unknown type) at offset 2^64 - 64 with nbytes 128: offset + nbytes wraps a "
            "64-bit integer (must be computed without overflow)")
    add_bad("zero_length_past_end.ggq", build(base_meta, good, entries=[enc_entry("a", 0, (16,), 0, 64, zlib.crc32(a)),
                                                                         enc_entry("z", 77, (1,), 128, 0, 0)], data=a), 12,
            "an unknown-type tensor of nbytes 0 at offset 128 > data_size 64")
    add_bad("zero_length_misaligned.ggq", build(base_meta, good, entries=[enc_entry("a", 0, (16,), 0, 64, zlib.crc32(a)),
                                                                           enc_entry("z", 77, (1,), 32, 0, 0)], data=a), 12,
            "an unknown-type tensor of nbytes 0 at offset 32 in a file with alignment 64")
    # rule 13
    corrupt = bytearray(valid_base)
    corrupt[-1] ^= 0x80
    add_bad("bad_tensor_crc.ggq", bytes(corrupt), 13,
            "structurally valid; one byte of tensor 'b' flipped: verification must report 'b'",
            stage="verify", report=["b"])

    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    lines = ["# .ggq conformance vectors", "",
             "Generated by `python tools/make_vectors.py` (independent of ggq.format: struct + zlib;",
             "expected values from `gguf.quants.dequantize`). `manifest.json` holds the same facts",
             "for machines; its schema is in spec/FORMAT.md section 15. Expected arrays are float32",
             ".npy of the tensor's shape (`<file stem>.<tensor>.npy`), compared bit for bit except",
             "that a NaN matches any NaN (spec/FORMAT.md section 10).", "",
             "## Valid files (a reader must accept each and decode it exactly)", ""]
    for f, m in manifest["files"].items():
        if m["valid"]:
            lines.append(f"- `{f}`: {m['description']}.")
    lines += ["", "## Invalid files (each breaks exactly one rule of spec/FORMAT.md section 9)", "",
              "Stage `open`: the reader refuses to open the file; `verify`: the file may open, "
              "verification fails.", ""]
    for f, m in manifest["files"].items():
        if not m["valid"]:
            lines.append(f"- `{f}` (rule {m['rule']}, {m['stage']}): {m['description']}.")
    (out / "README.md").write_text("\n".join(lines) + "\n")
    total = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {len(list(out.iterdir()))} files, {total} bytes, to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "spec" / "vectors")
