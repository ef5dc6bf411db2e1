#!/usr/bin/env python3
"""Fuzz the checkpoint sources of `ggq convert` (ggq/convert/sources.py): a .gguf file, and a
Hugging Face folder / .safetensors file with its config.json and tokenizer files. Each input
is opened with open_source(), its config turned into metadata, and every tensor's info, raw
bytes (GGUF) and float values read. The only acceptable failure is a one-line GGQError naming
the file; anything else (another exception, a hang, a large allocation) is a bug.

Two targets, two engines each:

    # coverage-guided, with atheris; libFuzzer flags pass through
    python tools/fuzz_sources.py gguf --atheris CORPUS_DIR [SEED_DIR ...] -runs=100000 -rss_limit_mb=2048
    python tools/fuzz_sources.py safetensors --atheris CORPUS_DIR [SEED_DIR ...] -runs=100000

    # plain mutation fuzzer (no extra dependency): N inputs from the seeds, deterministic
    python tools/fuzz_sources.py gguf --plain N [--seed S] [--seconds T] [--crashes DIR]

    # (re)write the seed files: tiny valid GGUF files and HF bundles
    python tools/fuzz_sources.py seeds

A GGUF input is the file itself. A safetensors input is a bundle of files (format below)
written into a fresh folder: model.safetensors, config.json, tokenizer.json,
tokenizer_config.json, or a sharded model (model.safetensors.index.json + two shards); the
bundle's mode byte says whether the folder or the model.safetensors file is opened.

    bundle = b"GQB1" + mode (1 byte: 0 folder, 1 file) + parts
    part   = file id (1 byte, index into BUNDLE_FILES) + length (u32 LE) + bytes
    (parsed leniently: a short last part takes what is left, an unknown id is skipped)

Both engines mutate with structure: GGUF key/value and tensor-info fields (counts, lengths,
types, dimensions, offsets, whole values replaced by values of other types), the JSON of
config.json / tokenizer files / index / safetensors headers (values replaced, keys dropped or
added, nesting too deep to parse), header lengths, parts dropped or duplicated; plus plain
byte edits. Seeds: tests/fuzz/gguf_corpus/ and tests/fuzz/safetensors_corpus/ (every file
there is also replayed by tests/test_fuzz_sources.py).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
CORPUS = {"gguf": ROOT / "tests" / "fuzz" / "gguf_corpus",
          "safetensors": ROOT / "tests" / "fuzz" / "safetensors_corpus"}
MAX_INPUT = 1 << 20            # inputs above 1 MiB are cut: bigger files only cost time
MAX_READ = 16 << 20            # float bytes read per input (get()), beyond which tensors are skipped
BUNDLE_MAGIC = b"GQB1"
BUNDLE_FILES = ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json",
                "model.safetensors.index.json", "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors")


def seeds(kind: str) -> list[bytes]:
    d = CORPUS[kind]
    return [p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()] if d.is_dir() else []


# --------------------------------------------------------------------------- bundles

def pack_bundle(files: dict[str, bytes], mode: int = 0) -> bytes:
    out = bytearray(BUNDLE_MAGIC + bytes([mode]))
    for name, data in files.items():
        out += bytes([BUNDLE_FILES.index(name)]) + struct.pack("<I", len(data)) + data
    return bytes(out)


def unpack_bundle(data: bytes) -> tuple[int, list[tuple[int, bytes]]]:
    """(mode, [(file id, bytes)]), leniently: anything parses to something."""
    if not data.startswith(BUNDLE_MAGIC):
        return 0, [(0, data)]  # a bare safetensors file
    mode = data[4] & 1 if len(data) > 4 else 0
    parts, pos = [], 5
    while pos < len(data):
        fid = data[pos]
        n = struct.unpack_from("<I", data, pos + 1)[0] if pos + 5 <= len(data) else 0
        body = data[pos + 5:pos + 5 + n]
        parts.append((fid, body))
        pos += 5 + n
    return mode, parts


def repack(mode: int, parts: list[tuple[int, bytes]]) -> bytes:
    out = bytearray(BUNDLE_MAGIC + bytes([mode & 1]))
    for fid, body in parts:
        out += bytes([fid & 0xFF]) + struct.pack("<I", len(body)) + body
    return bytes(out)


# --------------------------------------------------------------------------- targets

class _Base:
    suffix = ""

    def __init__(self, workdir: str | None = None):
        d = workdir or ("/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None)
        self._dir = tempfile.TemporaryDirectory(prefix="ggq-fuzz-src-", dir=d)
        import numpy as np  # noqa: F401  (imported once, outside the timed loop)
        from ggq.convert.sources import open_source
        from ggq.errors import GGQError
        self.open_source, self.GGQError = open_source, GGQError

    def close(self):
        self._dir.cleanup()

    def _check_error(self, e: Exception, names: tuple[str, ...]) -> None:
        msg = str(e)
        assert "\n" not in msg and "\r" not in msg, f"multi-line error: {msg!r}"
        assert msg.split(": ", 1)[0] in names, f"error does not start with the file's name: {msg[:300]!r}"

    def _read(self, path: str, names: tuple[str, ...]) -> None:
        import numpy as np

        try:
            src = self.open_source(path)
        except self.GGQError as e:
            self._check_error(e, names)
            return
        with src:
            cfg = src.config
            md = cfg.to_metadata()
            assert all(isinstance(k, str) for k, _, _ in md)
            cfg.summary()
            cfg.defaulted()
            assert src.tokenizer_json is None or isinstance(src.tokenizer_json, str)
            assert isinstance(src.bos_token_id, int) and isinstance(src.eos_token_id, int)
            budget = MAX_READ
            for name in src.tensor_names():
                t = src.tensor_info(name)
                assert isinstance(t.shape, tuple) and all(isinstance(d, int) for d in t.shape)
                try:
                    if src.kind == "gguf":
                        qt, raw = src.get_raw(name)
                        assert raw.dtype == np.uint8 and raw.size == t.nbytes
                    n = 4 * int(np.prod(t.shape, dtype=object))
                    if n > budget:
                        continue
                    budget -= n
                    with np.errstate(all="ignore"):
                        x = src.get(name)
                    assert x.shape == tuple(t.shape) and x.dtype == np.float32, (x.shape, x.dtype)
                except self.GGQError as e:
                    self._check_error(e, names)


class GGUFTarget(_Base):
    """Writes each input to input.gguf and reads it as a GGUF source."""

    def __init__(self, workdir: str | None = None):
        super().__init__(workdir)
        self.path = os.path.join(self._dir.name, "input.gguf")

    def run_one(self, data: bytes) -> None:
        with open(self.path, "wb") as f:
            f.write(data)
        self._read(self.path, ("input.gguf",))


class SafetensorsTarget(_Base):
    """Writes each bundle's files into a fresh folder `m` and opens the folder (or the
    model.safetensors file) as a safetensors source."""

    def run_one(self, data: bytes) -> None:
        folder = os.path.join(self._dir.name, "m")
        if os.path.isdir(folder):
            shutil.rmtree(folder)
        os.mkdir(folder)
        mode, parts = unpack_bundle(data)
        for fid, body in parts:
            if fid < len(BUNDLE_FILES):
                with open(os.path.join(folder, BUNDLE_FILES[fid]), "wb") as f:
                    f.write(body)
        path = os.path.join(folder, "model.safetensors") if mode == 1 else folder
        # an error names a file of the bundle, the folder, or the path given
        self._read(path, BUNDLE_FILES + ("m", folder, path))


TARGETS = {"gguf": GGUFTarget, "safetensors": SafetensorsTarget}


# --------------------------------------------------------------------------- mutations

INTERESTING = [0, 1, 2, 3, 4, 7, 8, 9, 12, 13, 16, 31, 32, 33, 63, 64, 255, 256, 257, 4096, 65535, 65536,
               (1 << 24) + 1, (1 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 32, 1 << 40, (1 << 62) + 1,
               (1 << 63) - 1, 1 << 63, (1 << 64) - 1]


def byte_mutate(rnd: random.Random, data: bytes, pool: list[bytes], max_size: int = MAX_INPUT) -> bytes:
    """A few random edits: bit flips, byte sets, interesting integers, block insert / delete /
    duplicate, truncation, splicing with another input."""
    b = bytearray(data)
    for _ in range(rnd.choice((1, 1, 2, 3, 4))):
        op, n = rnd.randrange(9), len(b)
        if op == 0 and n:
            b[rnd.randrange(n)] ^= 1 << rnd.randrange(8)
        elif op == 1 and n:
            b[rnd.randrange(n)] = rnd.choice((0, 1, 0x7F, 0x80, 0xFF, 0x22, 0x5B, 0x7B, rnd.randrange(256)))
        elif op == 2 and n >= 8:
            fmt = rnd.choice(("<B", "<H", "<I", "<Q"))
            v = rnd.choice(INTERESTING) % (1 << (8 * struct.calcsize(fmt)))
            pos = rnd.randrange(n - struct.calcsize(fmt) + 1)
            struct.pack_into(fmt, b, pos, v)
        elif op == 3 and n:
            i = rnd.randrange(n)
            del b[i:i + rnd.choice((1, 2, 4, 8, rnd.randrange(1, 64)))]
        elif op == 4:
            i = rnd.randrange(n + 1)
            b[i:i] = bytes(rnd.randrange(256) for _ in range(rnd.choice((1, 2, 4, 8))))
        elif op == 5 and n:
            i = rnd.randrange(n)
            b[i:i] = b[i:min(n, i + rnd.randrange(1, 64))]
        elif op == 6 and n:
            del b[rnd.randrange(n):]
        elif op == 7 and pool:
            other = rnd.choice(pool)
            if other:
                i, j = rnd.randrange(n + 1), rnd.randrange(len(other))
                b = b[:i] + other[j:j + rnd.randrange(1, 256)] + b[i:]
        elif op == 8 and n:
            i = rnd.randrange(n)
            b[i:i + 2] = rnd.choice((b"\xc0\xaf", b"\xed\xa0\x80", b"\xff", b"\0", b"\xf4\x90\x80\x80"))
    return bytes(b[:max_size])


# ---- GGUF structure

_GSCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<B", 10: "<Q", 11: "<q", 12: "<d"}
GGUF_WORDS = ["llama", "gemma3", "gpt2", "llama3", "linear", "none", "yarn", "smollm", "default", "",
              "a b", "\u2581", "<0x41>", "x" * 300, "\xff"]
GGUF_KEYS = ["general.architecture", "general.alignment", "general.name", "general.file_type",
             "llama.block_count", "llama.embedding_length", "llama.feed_forward_length",
             "llama.attention.head_count", "llama.attention.head_count_kv", "llama.attention.key_length",
             "llama.attention.layer_norm_rms_epsilon", "llama.rope.freq_base", "llama.rope.scaling.type",
             "llama.rope.scaling.factor", "llama.context_length", "llama.vocab_size",
             "llama.rope.dimension_count", "llama.attention.value_length", "llama.expert_count",
             "gemma3.attention.sliding_window_pattern", "gemma3.attention.sliding_window",
             "gemma3.final_logit_softcapping", "gemma3.attention.query_pre_attn_scalar",
             "gemma3.rope.freq_base_swa", "ggq.rope.scaling.type", "ggq.rope.scaling.factor",
             "tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.scores",
             "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id",
             "tokenizer.ggml.eos_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.ggml.pre",
             "tokenizer.ggml.add_space_prefix", "tokenizer.huggingface.json", "tokenizer.chat_template"]


def _gstr(s: str | bytes) -> bytes:
    b = s.encode("utf-8", "surrogatepass") if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def gguf_fields(data: bytes) -> dict:
    """Lenient walk of a GGUF file: positions of its integer fields and spans of its key/value
    pairs and tensor infos (as far as the file parses)."""
    ints, kvs, tinfos = [], [], []
    out = {"ints": ints, "kvs": kvs, "tinfos": tinfos, "kv_end": None, "ti_end": None}
    n = len(data)
    try:
        if n < 24:
            return out
        ints += [(4, "<I"), (8, "<Q"), (16, "<Q")]
        n_t, n_kv = struct.unpack_from("<QQ", data, 8)
        pos = 24
        for _ in range(min(n_kv, 10000)):
            start = pos
            ints.append((pos, "<Q"))
            klen = struct.unpack_from("<Q", data, pos)[0]
            pos += 8 + klen
            ints.append((pos, "<I"))
            vt = struct.unpack_from("<I", data, pos)[0]
            pos += 4
            vstart = pos
            if vt in _GSCALAR:
                pos += struct.calcsize(_GSCALAR[vt])
            elif vt == 8:
                ints.append((pos, "<Q"))
                pos += 8 + struct.unpack_from("<Q", data, pos)[0]
            elif vt == 9:
                ints += [(pos, "<I"), (pos + 4, "<Q")]
                it, cnt = struct.unpack_from("<IQ", data, pos)
                pos += 12
                if it == 8:
                    for _ in range(min(cnt, 100000)):
                        if len(ints) < 5000:
                            ints.append((pos, "<Q"))
                        pos += 8 + struct.unpack_from("<Q", data, pos)[0]
                elif it in _GSCALAR:
                    pos += cnt * struct.calcsize(_GSCALAR[it])
                else:
                    break
            else:
                break
            if pos > n:
                break
            kvs.append((start, vstart - 4, pos))
        else:
            out["kv_end"] = pos
            for _ in range(min(n_t, 10000)):
                start = pos
                ints.append((pos, "<Q"))
                pos += 8 + struct.unpack_from("<Q", data, pos)[0]
                ints.append((pos, "<I"))
                nd = struct.unpack_from("<I", data, pos)[0]
                pos += 4
                if nd > 8:
                    break
                ints += [(pos + 8 * i, "<Q") for i in range(nd)]
                pos += 8 * nd
                ints += [(pos, "<I"), (pos + 4, "<Q")]
                pos += 12
                if pos > n:
                    break
                tinfos.append((start, pos))
            else:
                out["ti_end"] = pos
    except (struct.error, OverflowError):
        pass
    return out


def _random_gguf_value(rnd: random.Random) -> bytes:
    """type (u32) + payload of a random value."""
    k = rnd.randrange(8)
    if k == 0:
        vt = rnd.choice(list(_GSCALAR))
        fmt = _GSCALAR[vt]
        if fmt in ("<f", "<d"):
            v = rnd.choice([0.0, -1.0, 1e-6, 0.5, 1.0, 1e30, float("inf"), float("nan"), 10000.0])
        else:
            v = rnd.choice(INTERESTING) % (1 << (8 * struct.calcsize(fmt)))
            if fmt[1].islower():
                v -= (1 << (8 * struct.calcsize(fmt))) if v >= 1 << (8 * struct.calcsize(fmt) - 1) else 0
        return struct.pack("<I", vt) + struct.pack(fmt, v)
    if k == 1:
        return struct.pack("<I", 8) + _gstr(rnd.choice(GGUF_WORDS).encode("utf-8", "surrogatepass")
                                            if rnd.random() < 0.9 else b"\xff\xfe")
    if k == 2:  # array of strings
        items = [rnd.choice(GGUF_WORDS) for _ in range(rnd.choice((0, 1, 2, 5, 16)))]
        return struct.pack("<IIQ", 9, 8, len(items)) + b"".join(_gstr(s) for s in items)
    if k == 3:  # array of numbers / bools
        vt = rnd.choice(list(_GSCALAR))
        fmt = _GSCALAR[vt]
        cnt = rnd.choice((0, 1, 2, 3, 6, 16, 18))
        vals = [(0.0 if fmt in ("<f", "<d") else rnd.randrange(2)) for _ in range(cnt)]
        return struct.pack("<IIQ", 9, vt, cnt) + b"".join(struct.pack(fmt, v) for v in vals)
    if k == 4:  # count that lies
        return struct.pack("<IIQ", 9, rnd.choice((0, 4, 8, 9, 13)), rnd.choice(INTERESTING))
    if k == 5:
        return struct.pack("<I", rnd.choice((9, 13, 255, 1 << 31))) + b"\0" * rnd.choice((0, 4, 12))
    if k == 6:
        return struct.pack("<IQ", 8, rnd.choice(INTERESTING))
    return struct.pack("<I", 7) + bytes([rnd.choice((0, 1, 2, 255))])


def gguf_mutate(rnd: random.Random, data: bytes, pool: list[bytes], max_size: int = MAX_INPUT) -> bytes:
    if rnd.random() < 0.25:
        return byte_mutate(rnd, data, pool, max_size)
    f = gguf_fields(data)
    # edits of the header keep the data section where the (aligned) data offset will point
    end = f["ti_end"] if f["ti_end"] is not None and f["ti_end"] <= len(data) else len(data)
    b, tail = bytearray(data[:end]), data[-(-end // 32) * 32:] if end < len(data) else b""
    op = rnd.randrange(7)
    if op == 0 and f["ints"]:  # an interesting integer in a count / length / type / dim / offset
        pos, fmt = rnd.choice(f["ints"])
        size = struct.calcsize(fmt)
        if pos + size <= len(b):
            v = rnd.choice(INTERESTING)
            if rnd.random() < 0.5:
                old = struct.unpack_from(fmt, b, pos)[0]
                v = old + rnd.choice((-2, -1, 1, 2, 32, -32, 256))
            struct.pack_into(fmt, b, pos, v % (1 << (8 * size)))
    elif op in (1, 2) and f["kvs"]:  # replace a value with one of another type
        start, tpos, end = rnd.choice(f["kvs"])
        b[tpos:end] = _random_gguf_value(rnd)
    elif op == 3 and f["kvs"] and len(b) >= 24:  # drop or duplicate a key/value pair
        start, tpos, end = rnd.choice(f["kvs"])
        n_kv = struct.unpack_from("<Q", b, 16)[0]
        if rnd.random() < 0.5:
            del b[start:end]
            struct.pack_into("<Q", b, 16, (n_kv - 1) % (1 << 64))
        else:
            b[end:end] = b[start:end]
            struct.pack_into("<Q", b, 16, (n_kv + 1) % (1 << 64))
    elif op == 4 and f["kv_end"] is not None and len(b) >= 24:  # add a key/value pair
        pos = f["kv_end"]
        kv = _gstr(rnd.choice(GGUF_KEYS)) + _random_gguf_value(rnd)
        b[pos:pos] = kv
        n_kv = struct.unpack_from("<Q", b, 16)[0]
        struct.pack_into("<Q", b, 16, (n_kv + 1) % (1 << 64))
    elif op == 5 and f["tinfos"]:  # tensor type / dims of a tensor info
        start, end = rnd.choice(f["tinfos"])
        pos = end - 12
        struct.pack_into("<I", b, pos, rnd.choice((0, 1, 2, 3, 6, 7, 8, 10, 11, 12, 13, 14, 15, 16, 24, 28, 30,
                                                   34, 39, 40, 41, 99)))
    elif op == 6 and f["kvs"]:  # rename a key
        start, tpos, end = rnd.choice(f["kvs"])
        b[start:tpos] = _gstr(rnd.choice(GGUF_KEYS))
    else:
        return byte_mutate(rnd, data, pool, max_size)
    if tail or end < len(data):
        b += bytes(-len(b) % 32) + tail
    if rnd.random() < 0.2:
        return byte_mutate(rnd, bytes(b), pool, max_size)
    return bytes(b[:max_size])


# ---- JSON / bundle structure

JSON_VALUES = [None, True, False, 0, -1, 1, 2, 3, 6, 32, 2 ** 31 - 1, 2 ** 31, 2 ** 40, 2 ** 63, 2 ** 64,
               10 ** 30, 0.5, -0.0, 1e-6, 1e308, 1.5, "", "x", "llama", "gemma3", "silu", "linear",
               "llama3", "yarn", "default", "F32", "F16", "BF16", "F64", "I8", "U8",
               "sliding_attention", "full_attention", "LlamaForCausalLM", "Gemma3ForCausalLM",
               "MistralForCausalLM", [], {}, [0], [1, 2], [0, 0], [[]], {"a": 1}, ["LlamaForCausalLM"],
               [2 ** 40, 2 ** 40], ["F32"], {"rope_type": "linear", "factor": 2.0}, {"type": "Sequence"}]
JSON_KEYS = ["num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
             "num_key_value_heads", "head_dim", "vocab_size", "max_position_embeddings", "rms_norm_eps",
             "rope_theta", "rope_scaling", "rope_parameters", "tie_word_embeddings", "architectures",
             "model_type", "sliding_window", "layer_types", "sliding_window_pattern", "text_config",
             "query_pre_attn_scalar", "final_logit_softcapping", "rope_local_base_freq", "hidden_act",
             "hidden_activation", "attention_bias", "quantization_config", "weight_map", "dtype", "shape",
             "data_offsets", "__metadata__", "bos_token", "eos_token", "chat_template", "add_bos_token",
             "model", "added_tokens", "pre_tokenizer", "vocab", "merges", "unknown_field",
             "lm_head.weight", "model.norm.weight", "model.layers.0.input_layernorm.weight",
             "model.layers.07.mlp.up_proj.weight", "model.layers." + "9" * 5000 + ".x",
             "model.layers.0.rotary_emb.inv_freq"]
_DEEP = "\u0000DEEP\u0000"


def _paths(obj, path=(), out=None, depth=0):
    out = [] if out is None else out
    out.append(path)
    if depth < 6:
        if isinstance(obj, dict):
            for k in list(obj)[:200]:
                _paths(obj[k], path + (k,), out, depth + 1)
        elif isinstance(obj, list):
            for i in range(min(len(obj), 50)):
                _paths(obj[i], path + (i,), out, depth + 1)
    return out


def json_mutate(rnd: random.Random, text: bytes) -> bytes | None:
    """A JSON-level edit of a JSON text, or None when it does not parse."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return None
    paths = _paths(obj)
    path = rnd.choice(paths)
    parent, key = None, None
    node = obj
    for k in path:
        parent, key, node = node, k, node[k]
    op = rnd.randrange(6)
    new = rnd.choice(JSON_VALUES)
    if op == 5:
        new = _DEEP
    if op in (0, 1, 5):  # replace a value
        if parent is None:
            obj = new
        else:
            parent[key] = new
    elif op == 2 and parent is not None:  # delete
        del parent[key]
    elif op == 3 and isinstance(node, dict):  # add a key
        node[rnd.choice(JSON_KEYS)] = new
    elif op == 3 and isinstance(node, list):
        node.append(new if rnd.random() < 0.5 or not node else node[-1])
    elif op == 4 and isinstance(node, (int, float)) and not isinstance(node, bool) and parent is not None:
        parent[key] = node + rnd.choice((-1, 1, 2, 256)) if rnd.random() < 0.7 else node * rnd.choice((2, 0.5, -1))
    out = json.dumps(obj, ensure_ascii=rnd.random() < 0.5)
    if _DEEP in out or json.dumps(_DEEP) in out:
        depth = rnd.choice((100, 2000, 100000))
        out = out.replace(json.dumps(_DEEP), "[" * depth + "]" * depth)
    return out.encode("utf-8", "surrogatepass")


def st_header_mutate(rnd: random.Random, body: bytes) -> bytes:
    """Edit a safetensors file: its JSON header (re-encoded, length fixed) or its length field."""
    if len(body) >= 8:
        n = struct.unpack_from("<Q", body, 0)[0]
        if n <= len(body) - 8 and rnd.random() < 0.8:
            new = json_mutate(rnd, body[8:8 + n])
            if new is not None:
                return struct.pack("<Q", len(new)) + new + body[8 + n:]
        b = bytearray(body)
        struct.pack_into("<Q", b, 0, rnd.choice(INTERESTING + [n + 1, n - 1, len(body) - 8, len(body)])
                         % (1 << 64))
        return bytes(b)
    return body


def bundle_mutate(rnd: random.Random, data: bytes, pool: list[bytes], max_size: int = MAX_INPUT) -> bytes:
    mode, parts = unpack_bundle(data)
    if not parts or rnd.random() < 0.1:
        return byte_mutate(rnd, data, pool, max_size)
    op = rnd.randrange(10)
    i = rnd.randrange(len(parts))
    fid, body = parts[i]
    name = BUNDLE_FILES[fid] if fid < len(BUNDLE_FILES) else ""
    if op == 0:
        mode ^= 1
    elif op == 1 and len(parts) > 1:
        del parts[i]
    elif op == 2:
        parts.append((rnd.randrange(len(BUNDLE_FILES)), body))
    elif op in (3, 4, 5, 6) and name.endswith(".safetensors"):
        parts[i] = (fid, st_header_mutate(rnd, body))
    elif op in (3, 4, 5, 6) and name.endswith(".json"):
        new = json_mutate(rnd, body)
        parts[i] = (fid, new if new is not None else byte_mutate(rnd, body, [], max_size))
    else:
        parts[i] = (fid, byte_mutate(rnd, body, [p for _, p in parts], max_size))
    return repack(mode, parts)[:max_size]


MUTATORS = {"gguf": gguf_mutate, "safetensors": bundle_mutate}


# --------------------------------------------------------------------------- engines

def plain(kind: str, n: int, seed: int = 0, seconds: float | None = None, crash_dir: str | None = None,
          log=print) -> dict:
    """The plain mutation fuzzer: n inputs (or until `seconds` pass). Returns counts and the
    crashes as (input, repr(exception))."""
    import traceback

    pool = seeds(kind)
    mutate = MUTATORS[kind]
    rnd = random.Random(seed)
    tgt = TARGETS[kind]()
    crashes, t0, done = [], time.monotonic(), 0
    try:
        for s in list(pool):  # the seeds themselves first
            try:
                tgt.run_one(s)
            except Exception as e:  # noqa: BLE001
                crashes.append((s, "".join(traceback.format_exception_only(e)).strip()))
            done += 1
        while done < n and (seconds is None or time.monotonic() - t0 < seconds):
            data = mutate(rnd, rnd.choice(pool), pool)
            try:
                tgt.run_one(data)
            except Exception as e:  # noqa: BLE001
                crashes.append((data, "".join(traceback.format_exception_only(e)).strip()[:500]))
                if crash_dir:
                    os.makedirs(crash_dir, exist_ok=True)
                    Path(crash_dir, f"crash-{kind}-{zlib.crc32(data):08x}").write_bytes(data)
            else:
                if rnd.random() < 0.05 and len(pool) < 2000:
                    pool.append(data)  # keep some survivors: mutations of mutations
            done += 1
            if done % 5000 == 0:
                log(f"{kind}: {done} inputs, {len(crashes)} crashes, {time.monotonic() - t0:.0f} s")
    finally:
        tgt.close()
    return {"inputs": done, "crashes": crashes, "seconds": time.monotonic() - t0}


def run_atheris(kind: str, argv: list[str]) -> None:
    import atheris

    # Instrument the sources, config reading, GGUF helpers and gguf-py's reader; Numba kernels
    # (ggq.quants) and the Rust tokenizers cannot be instrumented and are imported first.
    import ggq.errors  # noqa: F401
    import ggq.quants  # noqa: F401
    import numpy  # noqa: F401
    import tokenizers  # noqa: F401
    names = ("ggq.convert", "ggq.gguf_io", "gguf")
    for m in [m for m in sys.modules if any(m == x or m.startswith(x + ".") for x in names)]:
        del sys.modules[m]
    with atheris.instrument_imports(include=list(names)):
        import gguf  # noqa: F401
        import ggq.convert.sources  # noqa: F401
        import ggq.convert.tokenizer_gguf  # noqa: F401
        import ggq.gguf_io  # noqa: F401
    tgt = TARGETS[kind]()
    pool = seeds(kind)
    mutate = MUTATORS[kind]
    rnd = random.Random(0)

    def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
        rnd.seed(seed)
        if rnd.random() < 0.3:
            return bytes(atheris.Mutate(data, max_size))[:max_size]
        return mutate(rnd, data, pool, max_size)

    # the target's name and "--atheris" stay in the command line libFuzzer re-runs for -merge / -fork
    # (as a "--" flag: libFuzzer would take a bare word for a corpus directory)
    atheris.Setup([sys.argv[0], f"--kind={kind}", "--atheris"] + argv, tgt.run_one,
                  custom_mutator=custom_mutator)
    atheris.Fuzz()


# --------------------------------------------------------------------------- seeds

def _gpt2_vocab():
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "a", "b", "c", "d", "e", "\u0120", "\u0120a",
              "ab", "cd", "\u0120ab", "1", "2", "!"]
    return tokens, ["a b", "c d", "\u0120 a", "\u0120a b"]


def _spm_vocab():
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "\n\n", "<0x41>", "<0x0A>",
              "\u2581", "a", "b", "\u2581a", "ab", "\u2581ab", "c", "\u2581c"]
    scores = [0.0, 0.0, 0.0, 0.0, -1000.0, -1000.0, 0.0, 0.0, -1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0, -8.0]
    types = [3, 3, 3, 2, 3, 4, 6, 6, 1, 1, 1, 1, 1, 1, 1, 1]
    return tokens, scores, types


def _write_gguf(path: Path, arch: str, kv: dict, tensors: dict, tokenizer: str, extra_kv: dict | None = None):
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("seed")
    for k, v in kv.items():
        key = f"{arch}.{k}"
        if isinstance(v, bool):
            w.add_bool(key, v)
        elif isinstance(v, int):
            w.add_uint32(key, v)
        elif isinstance(v, float):
            w.add_float32(key, v)
        elif isinstance(v, str):
            w.add_string(key, v)
        else:
            w.add_array(key, v)
    if tokenizer == "gpt2":
        tokens, merges = _gpt2_vocab()
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("smollm")
        w.add_token_list(tokens)
        w.add_token_types([3 if i < 3 else 1 for i in range(len(tokens))])
        w.add_token_merges(merges)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_add_bos_token(False)
        w.add_chat_template("{{ messages }}")
    else:
        tokens, scores, types = _spm_vocab()
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(2)
        w.add_eos_token_id(1)
        w.add_unk_token_id(3)
        w.add_pad_token_id(0)
        w.add_add_bos_token(True)
        w.add_add_space_prefix(False)
    for k, v in (extra_kv or {}).items():
        if isinstance(v, str):
            w.add_string(k, v)
        elif isinstance(v, float):
            w.add_float32(k, v)
        else:
            w.add_uint32(k, v)
    for name, (qtype, arr) in tensors.items():
        if qtype in ("F32", "F16"):
            w.add_tensor(name, arr.astype(np.float32 if qtype == "F32" else np.float16))
        else:
            from ggq.quants import get_type
            raw = get_type(qtype).quantize(np.ascontiguousarray(arr.reshape(-1, arr.shape[-1]), np.float32))
            w.add_tensor(name, raw, raw_dtype=gguf.GGMLQuantizationType[qtype])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _model_tensors(rng, arch, h, ffn, heads, kv_heads, hd, vocab, layers, tied, types):
    """ggq-named tensors with their types; types: {suffix: qtype} for the matrices."""
    shapes = {"token_embd.weight": (vocab, h), "output_norm.weight": (h,)}
    if not tied:
        shapes["output.weight"] = (vocab, h)
    for i in range(layers):
        p = f"blk.{i}."
        shapes.update({p + "attn_norm.weight": (h,), p + "attn_q.weight": (heads * hd, h),
                       p + "attn_k.weight": (kv_heads * hd, h), p + "attn_v.weight": (kv_heads * hd, h),
                       p + "attn_output.weight": (h, heads * hd), p + "ffn_norm.weight": (h,),
                       p + "ffn_gate.weight": (ffn, h), p + "ffn_up.weight": (ffn, h),
                       p + "ffn_down.weight": (h, ffn)})
        if arch == "gemma3":
            shapes.update({p + "attn_q_norm.weight": (hd,), p + "attn_k_norm.weight": (hd,),
                           p + "post_attention_norm.weight": (h,), p + "post_ffw_norm.weight": (h,)})
    out = {}
    for name, shape in shapes.items():
        kind = name.split(".")[-2]
        qtype = "F32" if len(shape) == 1 else types.get(kind, "F16")
        out[name] = (qtype, (rng.standard_normal(shape) * 0.5).astype("float32"))
    return out


def make_gguf_seeds(d: Path) -> None:
    import numpy as np

    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = {"block_count": 1, "context_length": 64, "embedding_length": 32, "feed_forward_length": 32,
            "attention.head_count": 2, "attention.head_count_kv": 1, "attention.layer_norm_rms_epsilon": 1e-5,
            "rope.freq_base": 10000.0, "vocab_size": 16}
    t = _model_tensors(rng, "llama", 32, 32, 2, 1, 16, 16, 1, True,
                       {"token_embd": "Q8_0", "attn_q": "Q4_0", "attn_k": "Q4_1", "attn_v": "Q5_0",
                        "attn_output": "Q5_1", "ffn_gate": "Q8_0", "ffn_up": "F16", "ffn_down": "F32"})
    _write_gguf(d / "seed-llama-gpt2", "llama", base, t, "gpt2")
    # llama3 rope scaling as ggq's export writes it (ggq.rope.scaling.* + rope_freqs.weight)
    t3 = dict(t)
    t3["rope_freqs.weight"] = ("F32", np.ones(8, np.float32))
    _write_gguf(d / "seed-llama3-rope", "llama", {**base, "rope.scaling.type": "none"}, t3, "gpt2",
                {"ggq.rope.scaling.type": "llama3", "ggq.rope.scaling.factor": 8.0,
                 "ggq.rope.scaling.low_freq_factor": 1.0, "ggq.rope.scaling.high_freq_factor": 4.0,
                 "ggq.rope.scaling.original_context_length": 8192})
    # k-quants: 256 columns, untied output, linear rope scaling
    kq = {**base, "embedding_length": 256, "feed_forward_length": 16, "attention.key_length": 16,
          "rope.scaling.type": "linear", "rope.scaling.factor": 2.0}
    tk = _model_tensors(rng, "llama", 256, 16, 2, 1, 16, 16, 1, False,
                        {"token_embd": "Q4_K", "output": "Q6_K", "attn_q": "Q4_K", "attn_k": "Q6_K",
                         "attn_v": "Q5_K", "attn_output": "F16", "ffn_gate": "Q2_K", "ffn_up": "Q3_K",
                         "ffn_down": "F16"})
    _write_gguf(d / "seed-llama-kquants", "llama", kq, tk, "gpt2")
    # gemma3 with a SentencePiece vocabulary
    g = {**base, "feed_forward_length": 64, "attention.key_length": 16, "attention.value_length": 16,
         "rope.freq_base": 1000000.0, "rope.freq_base_swa": 10000.0, "attention.sliding_window": 8,
         "attention.sliding_window_pattern": [True, False], "block_count": 2,
         "attention.query_pre_attn_scalar": 16.0, "final_logit_softcapping": 30.0}
    tg = _model_tensors(rng, "gemma3", 32, 64, 2, 1, 16, 16, 2, True,
                        {"token_embd": "Q8_0", "attn_q": "Q8_0", "attn_k": "Q4_0", "attn_v": "Q8_0",
                         "attn_output": "Q4_1", "ffn_gate": "Q5_0", "ffn_up": "Q5_1", "ffn_down": "Q8_0"})
    _write_gguf(d / "seed-gemma3-spm", "gemma3", g, tg, "spm")


def _st_bytes(tensors: dict, dtype: str) -> bytes:
    import numpy as np

    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for k, a in tensors.items():
        if dtype == "BF16":
            raw = (a.astype(np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
        else:
            raw = a.astype("<f4" if dtype == "F32" else "<f2").tobytes()
        header[k] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    return struct.pack("<Q", len(hb)) + hb + b"".join(blobs)


def _hf_tensors(rng, arch, h, ffn, heads, kv_heads, hd, vocab, layers, tied):
    from ggq.convert.sources import ggq_to_hf_name
    t = _model_tensors(rng, arch, h, ffn, heads, kv_heads, hd, vocab, layers, tied, {})
    return {ggq_to_hf_name(n, arch): a for n, (_, a) in t.items()}


def _tokenizer_files(specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>")) -> dict[str, bytes]:
    tokens, merges = _gpt2_vocab()
    tok = {"version": "1.0", "truncation": None, "padding": None,
           "added_tokens": [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                             "normalized": False, "special": True} for i, s in enumerate(specials)],
           "normalizer": None,
           "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
               {"type": "Digits", "individual_digits": True},
               {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]},
           "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                              "use_regex": True},
           "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
           "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                     "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                     "ignore_merges": False, "vocab": {t: i for i, t in enumerate(tokens)}, "merges": merges}}
    tc = {"add_bos_token": False, "bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"},
          "chat_template": [{"name": "default", "template": "{{ messages }}"}]}
    return {"tokenizer.json": json.dumps(tok).encode(), "tokenizer_config.json": json.dumps(tc).encode()}


def make_safetensors_seeds(d: Path) -> None:
    import numpy as np

    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    llama_cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32,
                 "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                 "num_key_value_heads": 1, "head_dim": 16, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
                 "rope_scaling": None, "max_position_embeddings": 64, "vocab_size": 16,
                 "tie_word_embeddings": True, "bos_token_id": 0, "eos_token_id": 2, "hidden_act": "silu",
                 "torch_dtype": "float32"}
    tok = _tokenizer_files()
    t = _hf_tensors(rng, "llama", 32, 32, 2, 1, 16, 16, 1, True)
    t["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(8, np.float32)
    (d / "seed-llama-f32-folder").write_bytes(pack_bundle(
        {"model.safetensors": _st_bytes(t, "F32"), "config.json": json.dumps(llama_cfg).encode(), **tok}, 0))
    # mistral, llama3 rope scaling (4.x rope_scaling), F16, opened as a file
    mcfg = {**llama_cfg, "architectures": ["MistralForCausalLM"], "model_type": "mistral",
            "sliding_window": None, "torch_dtype": "float16",
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 32}}
    (d / "seed-mistral-f16-file").write_bytes(pack_bundle(
        {"model.safetensors": _st_bytes(t, "F16"), "config.json": json.dumps(mcfg).encode(),
         "tokenizer.json": tok["tokenizer.json"]}, 1))
    # sharded, untied lm_head, 5.x rope_parameters, BF16
    t2 = _hf_tensors(rng, "llama", 32, 32, 2, 1, 16, 16, 2, False)
    scfg = {**llama_cfg, "num_hidden_layers": 2, "tie_word_embeddings": False, "dtype": "bfloat16",
            "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}}
    del scfg["rope_scaling"], scfg["torch_dtype"]
    names = list(t2)
    a, b = names[:len(names) // 2], names[len(names) // 2:]
    index = {"metadata": {"total_size": 0},
             "weight_map": {**{k: "model-00001-of-00002.safetensors" for k in a},
                            **{k: "model-00002-of-00002.safetensors" for k in b}}}
    (d / "seed-llama-sharded-bf16").write_bytes(pack_bundle(
        {"model.safetensors.index.json": json.dumps(index).encode(),
         "model-00001-of-00002.safetensors": _st_bytes({k: t2[k] for k in a}, "BF16"),
         "model-00002-of-00002.safetensors": _st_bytes({k: t2[k] for k in b}, "BF16"),
         "config.json": json.dumps(scfg).encode(), **tok}, 0))
    # gemma3 text, 5.x rope_parameters per layer type, layer_types
    gcfg = {"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "hidden_size": 32,
            "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "num_key_value_heads": 1, "head_dim": 16, "rms_norm_eps": 1e-6, "max_position_embeddings": 64,
            "vocab_size": 16, "tie_word_embeddings": True, "hidden_activation": "gelu_pytorch_tanh",
            "query_pre_attn_scalar": 16, "sliding_window": 8, "final_logit_softcapping": None,
            "attn_logit_softcapping": None, "layer_types": ["sliding_attention", "full_attention"],
            "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
            "_sliding_window_pattern": 2}
    tg = _hf_tensors(rng, "gemma3", 32, 64, 2, 1, 16, 16, 2, True)
    (d / "seed-gemma3-f32-folder").write_bytes(pack_bundle(
        {"model.safetensors": _st_bytes(tg, "F32"), "config.json": json.dumps(gcfg).encode(), **tok}, 0))


# --------------------------------------------------------------------------- main

def main() -> None:
    args = sys.argv[1:]
    if args and args[0].startswith("--kind="):  # the form run_atheris hands to libFuzzer
        args[0] = args[0][len("--kind="):]
    if args and args[0] == "seeds":
        make_gguf_seeds(CORPUS["gguf"])
        make_safetensors_seeds(CORPUS["safetensors"])
        for k in CORPUS:
            tgt = TARGETS[k]()
            for s in seeds(k):
                tgt.run_one(s)
            tgt.close()
        return
    if len(args) >= 2 and args[0] in TARGETS and args[1] == "--atheris":
        run_atheris(args[0], args[2:])
        return
    if len(args) >= 2 and args[0] in TARGETS and args[1] == "--plain":
        import argparse
        ap = argparse.ArgumentParser()
        ap.add_argument("kind", choices=list(TARGETS))
        ap.add_argument("--plain", type=int, required=True)
        ap.add_argument("--seed", type=int, default=0)
        ap.add_argument("--seconds", type=float)
        ap.add_argument("--crashes", default="fuzz-crashes")
        a = ap.parse_args(args)
        res = plain(a.kind, a.plain, a.seed, a.seconds, a.crashes)
        print(f"{a.kind}: {res['inputs']} inputs in {res['seconds']:.0f} s, {len(res['crashes'])} crashes")
        seen = set()
        for data, err in res["crashes"]:
            if err not in seen:
                seen.add(err)
                print(f"  {len(data)} bytes: {err}")
            if len(seen) >= 30:
                break
        sys.exit(1 if res["crashes"] else 0)
    print(__doc__)
    sys.exit(2)


if __name__ == "__main__":
    main()
