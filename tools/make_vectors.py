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
          fix_crc: bool = True, entries: list[bytes] | None = None, data: bytes | None = None,
          counts: tuple[int, int] | None = None) -> bytes:
    """tensors: (name, type_id, shape, data_bytes). Layout per spec: each tensor at the next
    aligned offset in table order. entries/data/counts override the computed parts so that
    invalid files can be made whose header checksum is still right."""
    offsets, off = [], 0
    for _, _, _, b in tensors:
        off = align_up(off, alignment)
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
    table_end = HEADER.size + len(mbytes) + len(tbytes)
    data_offset = align_up(table_end, alignment)
    n_meta, n_tensors = counts if counts else (len(meta), len(entries))

    def header(crc):
        return HEADER.pack(MAGIC, major, 0, alignment, n_meta, n_tensors, len(mbytes),
                           len(tbytes), data_offset, len(data), crc, 0)

    pre = mbytes + tbytes + b"\0" * (data_offset - table_end)
    crc = zlib.crc32(header(0) + pre) if fix_crc else 0
    return header(crc) + pre + data


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


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for old in list(out.glob("*.ggq")) + list(out.glob("*.npy")):
        old.unlink()
    rng = np.random.default_rng(20240601)
    manifest: dict = {"format_version": [1, 0], "files": {}}

    def add_valid(fname, meta_spec, tensor_specs, alignment=64, desc=""):
        meta = [enc_kv(*m) for m in meta_spec]
        tensors, tinfo = [], {}
        for tname, qname, shape, raw in tensor_specs:
            tid = GGMLQuantizationType[qname].value if qname in GGMLQuantizationType.__members__ else int(qname)
            tensors.append((tname, tid, shape, raw.tobytes()))
            entry = {"type": qname, "type_id": tid, "shape": list(shape), "nbytes": int(raw.nbytes),
                     "crc32": zlib.crc32(raw.tobytes())}
            if isinstance(qname, str) and qname in GGMLQuantizationType.__members__:
                rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
                exp = gguf_dequantize(raw.reshape(rows, -1), GGMLQuantizationType[qname])
                exp = np.asarray(exp, dtype=np.float32).reshape(shape)
                npy = f"{Path(fname).stem}.{tname}.npy"
                np.save(out / npy, exp)
                entry["expected"] = npy
            tinfo[tname] = entry
        (out / fname).write_bytes(build(meta, tensors, alignment))
        md = {}
        for m in meta_spec:
            key, vt, v = m[0], m[1], m[2]
            tname = f"array[{VT_NAME[m[3]]}]" if vt == ARRAY else VT_NAME[vt]
            if vt == F32:
                v = float(np.float32(v))
            elif vt == ARRAY and m[3] == F32:
                v = [float(np.float32(x)) for x in v]
            md[key] = {"type": tname, "value": v}
        manifest["files"][fname] = {"valid": True, "description": desc, "alignment": alignment,
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
    ], desc="metadata of every value type; F32 (1-D, 2-D, 3-D), F16, BF16 tensors")
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

    # -- invalid files: each must be rejected for the stated reason -------------------
    base_meta = [enc_kv("general.architecture", STRING, "llama")]
    a = np.arange(16, dtype="<f4").tobytes()
    b = np.arange(16, 32, dtype="<f4").tobytes()
    good = [("a", 0, (16,), a), ("b", 0, (16,), b)]
    valid_base = build(base_meta, good)

    def add_bad(fname, data, stage, match, desc):
        (out / fname).write_bytes(data)
        manifest["files"][fname] = {"valid": False, "stage": stage, "match": match, "description": desc}

    add_bad("bad_magic.ggq", b"GGUF" + valid_base[4:], "open", "magic",
            "first 8 bytes are not the .ggq magic")
    add_bad("bad_version.ggq", build(base_meta, good, major=2), "open", "version",
            "version_major 2 (unknown major version)")
    add_bad("truncated.ggq", valid_base[:-10], "open", "truncated",
            "last 10 bytes of the data section cut off")
    add_bad("truncated_header.ggq", valid_base[:40], "open", "truncated",
            "file shorter than the 64-byte header")
    corrupt = bytearray(valid_base)
    corrupt[HEADER.size + 30] ^= 0x01  # inside the metadata string "llama"
    add_bad("bad_header_crc.ggq", bytes(corrupt), "open", "checksum",
            "one metadata byte flipped, header_crc32 not updated")
    corrupt = bytearray(valid_base)
    corrupt[-1] ^= 0x80
    add_bad("bad_tensor_crc.ggq", bytes(corrupt), "verify", "b",
            "structurally valid; one byte of tensor 'b' flipped: verify must report 'b'")
    ov = [enc_entry("a", 0, (16,), 0, 64, zlib.crc32(a)), enc_entry("b", 0, (16,), 0, 64, zlib.crc32(a))]
    add_bad("overlapping.ggq", build(base_meta, good, entries=ov, data=a), "open", "overlap",
            "tensors 'a' and 'b' both at offset 0 (checksums valid)")
    ma = [enc_entry("a", 0, (16,), 32, 64, zlib.crc32(a))]
    add_bad("misaligned.ggq", build(base_meta, good, entries=ma, data=a + a), "open", "alignment",
            "tensor offset 32 in a file with alignment 64")
    oob = [enc_entry("a", 0, (16,), 64, 64, zlib.crc32(a))]
    add_bad("out_of_bounds.ggq", build(base_meta, good, entries=oob, data=a), "open", "outside",
            "tensor bytes [64, 128) past the 64-byte data section")
    add_bad("absurd_count.ggq", build(base_meta, good, counts=(1, 2**31)), "open", "tensor count",
            "tensor_count 2^31, beyond the limit")
    lm = [enc_entry("a", 8, (16, 32), 0, 64, zlib.crc32(a))]
    add_bad("length_mismatch.ggq", build(base_meta, good, entries=lm, data=a), "open", "disagrees",
            "Q8_0 tensor of shape (16, 32) (544 bytes) stating a byte length of 64")
    dup = [enc_entry("a", 0, (16,), 0, 64, zlib.crc32(a)), enc_entry("a", 0, (16,), 64, 64, zlib.crc32(b))]
    add_bad("duplicate_name.ggq", build(base_meta, good, entries=dup, data=a + b), "open", "duplicate",
            "two tensors named 'a'")
    add_bad("duplicate_key.ggq", build(base_meta * 2, good), "open", "duplicate",
            "metadata key general.architecture twice")
    dims = [enc_entry("a", 0, (1, 1, 1, 1, 16), 0, 64, zlib.crc32(a))]
    add_bad("too_many_dims.ggq", build(base_meta, good, entries=dims, data=a), "open", "dimensions",
            "a tensor with 5 dimensions (limit 4)")
    zd = [enc_entry("a", 0, (0, 16), 0, 0, 0)]
    add_bad("zero_dim.ggq", build(base_meta, good, entries=zd, data=b""), "open", "dimension 0",
            "a tensor with a zero dimension")
    bu = [enc_entry(b"\xff\xfe", 0, (16,), 0, 64, zlib.crc32(a))]
    add_bad("bad_utf8.ggq", build(base_meta, good, entries=bu, data=a), "open", "UTF-8",
            "a tensor name that is not valid UTF-8")
    longname = [enc_entry("x" * 300, 0, (16,), 0, 64, zlib.crc32(a))]
    add_bad("name_too_long.ggq", build(base_meta, good, entries=longname, data=a), "open", "name length",
            "a 300-byte tensor name (limit 256)")
    huge = enc_str("general.architecture") + bytes([STRING]) + struct.pack("<I", 0x7FFFFFFF) + b"llama"
    add_bad("huge_string.ggq", build([huge], good), "open", "string length",
            "a metadata string claiming 2 GiB in a tiny file")

    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    lines = ["# .ggq conformance vectors", "",
             "Generated by `python tools/make_vectors.py` (independent of ggq.format: struct + zlib;",
             "expected values from `gguf.quants.dequantize`). `manifest.json` holds the same facts",
             "for machines: per valid file its metadata (type, value) and tensors (type, shape, byte",
             "length, CRC-32, expected .npy); per invalid file the stage that must fail (`open`: the",
             "reader refuses the file; `verify`: the file opens but checksum verification fails).",
             "Expected arrays are float32 .npy of the tensor's shape (`<file stem>.<tensor>.npy`).", "",
             "## Valid files", ""]
    for f, m in manifest["files"].items():
        if m["valid"]:
            lines.append(f"- `{f}`: {m['description']}.")
    lines += ["", "## Invalid files (a reader must reject each)", ""]
    for f, m in manifest["files"].items():
        if not m["valid"]:
            lines.append(f"- `{f}` ({m['stage']}): {m['description']}.")
    (out / "README.md").write_text("\n".join(lines) + "\n")
    total = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {len(list(out.iterdir()))} files, {total} bytes, to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "spec" / "vectors")
