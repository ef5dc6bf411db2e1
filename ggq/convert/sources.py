"""Checkpoint sources for `ggq convert`: a .safetensors file, a Hugging Face folder (single or
sharded), or a .gguf file. Every source answers in ggq's conventions (DESIGN.md): GGUF-style
tensor names, numpy (rows, cols) shapes, HF row order for attn_q / attn_k.

    src = open_source(path)
    src.config                 ModelConfig (llama hyperparameters)
    src.tokenizer_json         str | None     whole HF tokenizer.json
    src.chat_template          str | None
    src.bos_token_id, src.eos_token_id, src.add_bos_token, src.ggml_pre
    src.tensor_names()         list[str]
    src.tensor_info(name)      SourceTensor(name, shape, dtype, nbytes)
    src.get(name)              float32 ndarray, HF row order
    src.get_raw(name)          (QuantType, uint8 (rows, row_bytes)), GGUF sources only
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConvertError, FormatError, TokenizerError
from .config import SUPPORTED_ARCHITECTURES, ModelConfig
from .permute import gguf_to_hf_rows, heads_for

# Largest JSON header we accept in a safetensors file (real ones are a few hundred KB).
MAX_ST_HEADER = 100 * 1024 * 1024
# Largest tokenizer/config side file we read.
MAX_SIDE_FILE = 256 * 1024 * 1024


# ---------------------------------------------------------------------------------------------
# names
# ---------------------------------------------------------------------------------------------

_HF_LAYER_COMMON = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
# Gemma 3 has a norm after attention and one around the FFN: its post_attention_layernorm is not
# llama's pre-FFN norm.
_HF_LAYER = {
    "llama": {**_HF_LAYER_COMMON, "post_attention_layernorm.weight": "ffn_norm.weight"},
    "gemma3": {**_HF_LAYER_COMMON,
               "post_attention_layernorm.weight": "post_attention_norm.weight",
               "pre_feedforward_layernorm.weight": "ffn_norm.weight",
               "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
               "self_attn.q_norm.weight": "attn_q_norm.weight",
               "self_attn.k_norm.weight": "attn_k_norm.weight"},
}
_HF_TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
_GGQ_LAYER = {a: {v: k for k, v in m.items()} for a, m in _HF_LAYER.items()}
_GGQ_TOP = {v: k for k, v in _HF_TOP.items()}
# layer numbers: ASCII digits, no leading zeros, at most 9 of them (\\d would take any Unicode
# digit, and int() refuses numbers of more than 4300 digits)
_LAYER_RE = re.compile(r"^model\.layers\.(0|[1-9][0-9]{0,8})\.(.+)$", re.ASCII)
_BLK_RE = re.compile(r"^blk\.(0|[1-9][0-9]{0,8})\.(.+)$", re.ASCII)


def hf_to_ggq_name(name: str, arch: str = "llama") -> str | None:
    """'model.layers.3.self_attn.q_proj.weight' -> 'blk.3.attn_q.weight'; None if unknown."""
    if name in _HF_TOP:
        return _HF_TOP[name]
    m = _LAYER_RE.match(name)
    if m and m.group(2) in _HF_LAYER[arch]:
        return f"blk.{int(m.group(1))}.{_HF_LAYER[arch][m.group(2)]}"
    return None


def ggq_to_hf_name(name: str, arch: str = "llama") -> str:
    if name in _GGQ_TOP:
        return _GGQ_TOP[name]
    m = _BLK_RE.match(name)
    if m and m.group(2) in _GGQ_LAYER[arch]:
        return f"model.layers.{int(m.group(1))}.{_GGQ_LAYER[arch][m.group(2)]}"
    raise ConvertError(f"no Hugging Face name for tensor {name!r}")


def rows_permuted(arch: str) -> bool:
    """llama.cpp's GGUF interleaves the rotary pairs of attn_q/attn_k rows for llama only;
    Gemma 3 uses NEOX rope, whose row order is Hugging Face's."""
    return arch == "llama"


# ---------------------------------------------------------------------------------------------
# common source interface
# ---------------------------------------------------------------------------------------------

@dataclass
class SourceTensor:
    name: str                    # ggq name
    shape: tuple[int, ...]       # numpy order
    dtype: str                   # "F32" / "F16" / "BF16" / a GGML type name ("Q4_1")
    nbytes: int                  # bytes in the source
    key: str = ""                # name in the source file
    file: str = ""               # which file holds it
    extra: dict = field(default_factory=dict)


class Source:
    kind = "?"
    path: Path
    config: ModelConfig
    tokenizer_json: str | None = None
    chat_template: str | None = None
    bos_token_id: int = -1
    eos_token_id: int = -1
    add_bos_token: bool = False
    ggml_pre: str | None = None
    tokenizer_metadata: list = []     # extra (key, value, vtype) tokenizer entries for the .ggq
    general_metadata: list = []       # descriptive general.* (key, value, vtype) kept from a GGUF
    _tensors: dict[str, SourceTensor]

    def tensor_names(self) -> list[str]:
        return list(self._tensors)

    def tensor_info(self, name: str) -> SourceTensor:
        try:
            return self._tensors[name]
        except KeyError:
            raise ConvertError(f"{self.path.name}: no tensor {name!r}") from None

    def get(self, name: str) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def get_raw(self, name: str):
        raise ConvertError(f"{self.path.name}: raw quantized data only exists in GGUF sources")

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _check_tensors(self) -> None:
        """All expected tensors present with the config's shapes, nothing unexpected."""
        where = self.path.name
        # every layer has at least 9 tensors: a layer count the file cannot hold is refused before
        # the expected names are listed (a config may claim 2**31 - 1 layers)
        if self.config.block_count > len(self._tensors):
            raise ConvertError(f"{where}: the config says {self.config.block_count} layers but the file "
                               f"holds only {len(self._tensors)} tensors")
        want = self.config.expected_shapes()
        for name, shape in want.items():
            if name not in self._tensors:
                raise ConvertError(f"{where}: tensor {name!r} is missing")
            if tuple(self._tensors[name].shape) != shape:
                raise ConvertError(f"{where}: tensor {name!r} has shape {tuple(self._tensors[name].shape)}, "
                                   f"config says {shape}")
        extra = [n for n in self._tensors if n not in want]
        if extra:
            raise ConvertError(f"{where}: unexpected tensor {extra[0]!r} for a {self.config.arch} model")
        # keep a canonical order: embeddings, layers, output (as llama.cpp lays them out)
        self._tensors = {n: self._tensors[n] for n in want}

    def _tokenizer_ids(self, tok_cfg: dict) -> None:
        """bos/eos ids and add_bos from tokenizer_config.json + tokenizer.json."""
        vocab: dict[str, int] = {}
        if self.tokenizer_json:
            try:
                tj = json.loads(self.tokenizer_json)
                vocab = dict(tj.get("model", {}).get("vocab") or {})
                for t in tj.get("added_tokens") or []:
                    vocab[t["content"]] = int(t["id"])
            except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
                raise ConvertError(f"{self.path.name}: tokenizer.json is malformed ({_one_line(e)})") from None
            self.ggml_pre = detect_ggml_pre(tj)

        def tok_id(v):
            if isinstance(v, dict):
                v = v.get("content")
            i = vocab.get(v, -1) if isinstance(v, str) else -1
            return i if isinstance(i, int) and not isinstance(i, bool) else -1

        self.bos_token_id = tok_id(tok_cfg.get("bos_token"))
        self.eos_token_id = tok_id(tok_cfg.get("eos_token"))
        def cfg_id(k):
            v = self._hf_cfg.get(k)
            return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 31 else -1

        if self.eos_token_id < 0:
            self.eos_token_id = cfg_id("eos_token_id")
        if self.bos_token_id < 0:
            self.bos_token_id = cfg_id("bos_token_id")
        # HF decides BOS in the tokenizer's post-processor; tokenizer_config states it too.
        if "add_bos_token" in tok_cfg:
            self.add_bos_token = bool(tok_cfg["add_bos_token"])
        else:
            self.add_bos_token = '"TemplateProcessing"' in (self.tokenizer_json or "") and \
                self.bos_token_id >= 0
        ct = tok_cfg.get("chat_template")
        if isinstance(ct, list):  # named templates: take the default one
            ct = next((t.get("template") for t in ct if isinstance(t, dict) and t.get("name") == "default"),
                      None)
        self.chat_template = ct if isinstance(ct, str) else None


def detect_ggml_pre(tj: dict) -> str | None:
    """llama.cpp's pre-tokenizer name for an HF tokenizer.json, where we recognise it."""
    pt = tj.get("pre_tokenizer") if isinstance(tj, dict) else None
    if not isinstance(pt, dict):
        return None
    if pt.get("type") == "ByteLevel" and pt.get("use_regex", True):
        return "gpt2"
    if pt.get("type") == "Sequence":
        seq = pt.get("pretokenizers")
        if isinstance(seq, list) and len(seq) == 2 and all(isinstance(x, dict) for x in seq) \
                and seq[0].get("type") == "Digits" and seq[0].get("individual_digits") \
                and seq[1].get("type") == "ByteLevel" and seq[1].get("use_regex", True):
            return "smollm"
    return None


def _one_line(e: BaseException, limit: int = 200) -> str:
    s = " ".join(str(e).split()) or type(e).__name__
    return s if len(s) <= limit else s[:limit - 3] + "..."


def _read_side(path: Path, what: str) -> str | None:
    if not path.is_file():
        return None
    if path.stat().st_size > MAX_SIDE_FILE:
        raise ConvertError(f"{path.name}: {what} is implausibly large ({path.stat().st_size} bytes)")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConvertError(f"{path.name}: cannot read {what} ({e})") from None


def _read_json(path: Path, what: str) -> dict | None:
    text = _read_side(path, what)
    if text is None:
        return None
    try:
        d = json.loads(text)
    except (ValueError, RecursionError) as e:  # RecursionError: nested too deeply
        raise ConvertError(f"{path.name}: {what} is not valid JSON ({_one_line(e)})") from None
    if not isinstance(d, dict):
        raise ConvertError(f"{path.name}: {what} is not a JSON object")
    return d


# ---------------------------------------------------------------------------------------------
# safetensors
# ---------------------------------------------------------------------------------------------

_ST_DTYPES = {"F32": (np.dtype("<f4"), 4), "F16": (np.dtype("<f2"), 2), "BF16": (None, 2)}
_ST_ALL_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
                  "U8": 1, "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}


def _short(v, limit: int = 80) -> str:
    s = repr(v)
    return s if len(s) <= limit else s[:limit - 3] + "..."


def read_safetensors_header(path: Path) -> tuple[int, dict]:
    """Validate a safetensors file's header against the file itself, before anything is read
    from its data: returns (data_start, {key: {"dtype", "shape", "data_offsets"}}).
    Raises FormatError naming the file on any inconsistency."""
    name = path.name
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise FormatError(f"{name}: truncated safetensors file ({size} bytes)")
            n = int.from_bytes(head, "little")
            if n > size - 8:
                raise FormatError(f"{name}: safetensors header length {n} exceeds the file size {size}")
            if n > MAX_ST_HEADER:
                raise FormatError(f"{name}: safetensors header length {n} is implausibly large")
            raw = fh.read(n)
    except OSError as e:
        raise FormatError(f"{name}: cannot read ({e.strerror or e})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise FormatError(f"{name}: safetensors header is not valid JSON ({_one_line(e)})") from None
    if not isinstance(header, dict):
        raise FormatError(f"{name}: safetensors header is not a JSON object")
    data_start = 8 + n
    data_len = size - data_start
    entries = {}
    spans = []
    for key, e in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(e, dict) or not {"dtype", "shape", "data_offsets"} <= set(e):
            raise FormatError(f"{name}: tensor {key!r}: header entry lacks dtype/shape/data_offsets")
        dt, shape, offs = e["dtype"], e["shape"], e["data_offsets"]
        if not isinstance(dt, str) or dt not in _ST_ALL_DTYPES:
            raise FormatError(f"{name}: tensor {key!r}: unknown dtype {_short(dt)}")
        if not (isinstance(shape, list) and len(shape) <= 8
                and all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 1 << 40 for s in shape)):
            raise FormatError(f"{name}: tensor {key!r}: bad shape {_short(shape)}")
        if not (isinstance(offs, list) and len(offs) == 2
                and all(isinstance(o, int) and not isinstance(o, bool) for o in offs)):
            raise FormatError(f"{name}: tensor {key!r}: bad data_offsets {_short(offs)}")
        b, end = offs
        if not 0 <= b <= end:
            raise FormatError(f"{name}: tensor {key!r}: bad data_offsets {offs}")
        if end > data_len:
            raise FormatError(f"{name}: tensor {key!r}: data_offsets {offs} run past the end of the "
                              f"file ({data_len} data bytes)")
        want = math.prod(shape) * _ST_ALL_DTYPES[dt]
        if end - b != want:
            raise FormatError(f"{name}: tensor {key!r}: {end - b} bytes for {dt} shape {shape} "
                              f"(expected {want})")
        entries[key] = {"dtype": dt, "shape": tuple(shape), "data_offsets": (b, end)}
        spans.append((b, end, key))
    spans.sort()
    for (b0, e0, k0), (b1, e1, k1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise FormatError(f"{name}: tensors {k0!r} and {k1!r} overlap in the data section")
    return data_start, entries


class SafetensorsSource(Source):
    """A single .safetensors file, or an HF folder (single file or sharded with an index)."""
    kind = "safetensors"

    def __init__(self, path: Path):
        path = Path(path)
        self.path = path
        folder = path if path.is_dir() else path.parent
        if path.is_dir():
            index = folder / "model.safetensors.index.json"
            if index.is_file():
                idx = _read_json(index, "safetensors index")
                wm = idx.get("weight_map")
                if not isinstance(wm, dict) or not wm:
                    raise ConvertError(f"{index.name}: no weight_map")
                files = []
                for f in wm.values():
                    if not isinstance(f, str) or "/" in f or "\\" in f or f.startswith("."):
                        raise ConvertError(f"{index.name}: bad shard name {f!r}")
                    if f not in files:
                        files.append(f)
                files = [folder / f for f in files]
                for f in files:
                    if not f.is_file():
                        raise ConvertError(f"{index.name}: shard {f.name} is missing")
            else:
                files = sorted(folder.glob("*.safetensors"))
                if not files:
                    raise ConvertError(f"{path}: no .safetensors files in this folder")
                if len(files) > 1 and (folder / "model.safetensors") in files:
                    files = [folder / "model.safetensors"]
                elif len(files) > 1:
                    raise ConvertError(f"{path}: several .safetensors files but no model.safetensors.index.json")
        else:
            files = [path]

        headers = [(f, *read_safetensors_header(f)) for f in files]  # weights file checked first
        cfg = _read_json(folder / "config.json", "config.json")
        if cfg is None:
            raise ConvertError(f"{path.name}: no config.json next to the weights (in {folder})")
        self._hf_cfg = cfg
        self.config = ModelConfig.from_hf(cfg, "config.json")
        self.tokenizer_json = _read_side(folder / "tokenizer.json", "tokenizer.json")
        tok_cfg = _read_json(folder / "tokenizer_config.json", "tokenizer_config.json") or {}
        self._tokenizer_ids(tok_cfg)
        if not self.config.name:
            self.config.name = folder.name

        self._files = files
        tensors: dict[str, SourceTensor] = {}
        lm_head = None
        for f, data_start, entries in headers:
            for key, e in entries.items():
                if key.endswith("rotary_emb.inv_freq"):
                    continue  # recomputed from rope_theta
                g = hf_to_ggq_name(key, self.config.arch)
                if g is None:
                    raise ConvertError(f"{f.name}: unexpected tensor {key!r} for a {self.config.arch} model")
                if e["dtype"] not in _ST_DTYPES:
                    raise ConvertError(f"{f.name}: tensor {key!r} has dtype {e['dtype']} "
                                       "(supported: F32, F16, BF16)")
                if g in tensors:
                    raise ConvertError(f"{f.name}: tensor {key!r} appears twice")
                st = SourceTensor(g, e["shape"], e["dtype"], e["data_offsets"][1] - e["data_offsets"][0],
                                  key=key, file=str(f),
                                  extra={"span": (data_start + e["data_offsets"][0], data_start + e["data_offsets"][1])})
                if g == "output.weight":
                    lm_head = st
                tensors[g] = st
        # tied checkpoints sometimes still ship a copy of lm_head, which is then unused; an untied
        # model without one has no output matrix at all (transformers would initialise it at random).
        if lm_head is None and not self.config.tie_word_embeddings:
            raise ConvertError(f"{path.name}: lm_head.weight is missing but config.json says "
                               "tie_word_embeddings is false")
        if lm_head is not None and self.config.tie_word_embeddings:
            del tensors["output.weight"]
        self._tensors = tensors
        self._check_tensors()

    def get(self, name: str) -> np.ndarray:
        """Read one tensor with a plain positioned read of its validated byte range. (Not
        safe_open: it memory-maps the whole file, so every tensor read stays resident and the
        process's peak memory grows to the checkpoint size.)"""
        t = self.tensor_info(name)
        start, end = t.extra["span"]
        buf = np.empty(end - start, dtype=np.uint8)
        try:
            with open(t.file, "rb") as fh:
                fh.seek(start)
                n = fh.readinto(memoryview(buf))
        except OSError as e:
            raise FormatError(f"{Path(t.file).name}: cannot read tensor {t.key!r} ({e.strerror or e})") from None
        if n != buf.size:
            raise FormatError(f"{Path(t.file).name}: tensor {t.key!r} is truncated (file changed while reading?)")
        if t.dtype == "BF16":  # bfloat16 is the top half of a float32
            out = (buf.view("<u2").astype(np.uint32) << np.uint32(16)).view(np.float32)
        elif t.dtype == "F16":
            out = buf.view("<f2").astype(np.float32)
        else:
            out = buf.view("<f4").astype(np.float32, copy=False)
        if self.config.arch == "gemma3" and name.endswith("norm.weight"):
            # Gemma's RMSNorm scales by (1 + w); .ggq stores the folded weight, as llama.cpp's GGUF
            # does. Added in float32 like transformers (llama.cpp's converter adds in bf16).
            out = out + np.float32(1.0)
        return out.reshape(t.shape)


# ---------------------------------------------------------------------------------------------
# GGUF
# ---------------------------------------------------------------------------------------------

# Architecture keys llama.cpp reads for each architecture we run. Any other "<arch>.*" key may
# change the model (experts, partial rope, ...), so a file carrying one is refused.
_GGUF_COMMON = {"block_count", "context_length", "embedding_length", "feed_forward_length",
                "attention.head_count", "attention.head_count_kv", "attention.key_length",
                "attention.value_length", "attention.layer_norm_rms_epsilon", "rope.freq_base",
                "rope.dimension_count", "rope.scaling.type", "rope.scaling.factor", "vocab_size",
                "rope.scaling.finetuned", "rope.scaling.original_context_length", "tie_word_embeddings"}
GGUF_ARCH_KEYS = {
    "llama": _GGUF_COMMON | {"rope.scaling.low_freq_factor", "rope.scaling.high_freq_factor"},
    "gemma3": _GGUF_COMMON | {"attention.sliding_window", "attention.sliding_window_pattern",
                              "rope.freq_base_swa", "final_logit_softcapping",
                              "attention.query_pre_attn_scalar"},
}


def _gguf_int(md: dict, key: str, where: str) -> int | None:
    v = md.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConvertError(f"{where}: GGUF key {key} = {_short(v)} is not an integer")
    return v


def _check_gguf_arch_keys(md: dict, arch: str, where: str) -> None:
    for k, v in md.items():
        if k.startswith(arch + ".") and k[len(arch) + 1:] not in GGUF_ARCH_KEYS[arch]:
            raise ConvertError(f"{where}: GGUF key {k} = {_short(v)} is not supported (ggq cannot tell "
                               "how it changes the model)")
    hd = _gguf_int(md, f"{arch}.attention.key_length", where)
    emb, heads = _gguf_int(md, f"{arch}.embedding_length", where), _gguf_int(md, f"{arch}.attention.head_count", where)
    if hd is None and emb is not None and heads:
        hd = emb // heads
    for k in ("attention.value_length", "rope.dimension_count"):
        v = _gguf_int(md, f"{arch}.{k}", where)
        if v is not None and hd is not None and v != hd:
            raise ConvertError(f"{where}: {arch}.{k} = {v} differs from the head size {hd} "
                               "(not supported)")


# Descriptive general.* keys of a GGUF that a .ggq keeps (and `ggq export` writes back): who
# made the model and under which licence matters after conversion too.
GENERAL_KEYS = ("general.basename", "general.finetune", "general.size_label", "general.version",
                "general.organization", "general.author", "general.description", "general.license",
                "general.license.name", "general.license.link", "general.url", "general.repo_url",
                "general.quantized_by", "general.tags", "general.languages", "general.file_type")


# GGUF value types (gguf.GGUFValueType) the tokenizer fields may have
_GT_INT = {0, 1, 2, 3, 4, 5, 10, 11}      # u8 i8 u16 i16 u32 i32 u64 i64
_GT_NUM = _GT_INT | {6, 12}               # + f32 f64
_GT_BOOL, _GT_STR, _GT_ARR = 7, 8, 9
# tokenizer fields -> the value types ggq reads them as (arrays: ARRAY then the element type;
# an empty array has no element type)
_GGUF_TOKENIZER_TYPES = {
    "tokenizer.ggml.model": ("scalar", {_GT_STR}),
    "tokenizer.ggml.tokens": ("array", {_GT_STR}),
    "tokenizer.ggml.merges": ("array", {_GT_STR}),
    "tokenizer.ggml.scores": ("array", _GT_NUM),
    "tokenizer.ggml.token_type": ("array", _GT_INT),
    "tokenizer.ggml.bos_token_id": ("scalar", _GT_INT),
    "tokenizer.ggml.eos_token_id": ("scalar", _GT_INT),
    "tokenizer.ggml.unknown_token_id": ("scalar", _GT_INT),
    "tokenizer.ggml.padding_token_id": ("scalar", _GT_INT),
    "tokenizer.ggml.add_bos_token": ("scalar", _GT_INT | {_GT_BOOL}),
    "tokenizer.ggml.add_eos_token": ("scalar", _GT_INT | {_GT_BOOL}),
    "tokenizer.ggml.add_sep_token": ("scalar", _GT_INT | {_GT_BOOL}),
    "tokenizer.ggml.add_space_prefix": ("scalar", _GT_INT | {_GT_BOOL}),
}
# Rebuilding a SentencePiece vocabulary tries every split of every token (tokenizer_gguf.spm_merges):
# work grows with the sum of squared token lengths. Real vocabularies are far below this bound
# (Gemma 3's 262k tokens: about 2**24).
GGUF_MAX_SPLIT_WORK = 1 << 28


def _check_gguf_tokenizer_fields(r, where: str) -> None:
    """The tokenizer.ggml.* fields have the value types ggq reads them as, and the vocabulary
    can be rebuilt in bounded time; before tokenizer_gguf reads them."""
    for key, (kind, ok) in _GGUF_TOKENIZER_TYPES.items():
        f = r.fields.get(key)
        if f is None:
            continue
        ts = [int(t) for t in f.types]
        if kind == "scalar":
            good = len(ts) == 1 and ts[0] in ok
        else:
            good = ts == [_GT_ARR] or (len(ts) == 2 and ts[0] == _GT_ARR and ts[1] in ok)
        if not good:
            raise FormatError(f"{where}: {key} has GGUF value type "
                              f"{'/'.join(str(t) for t in ts)}, not the {kind} type ggq expects")
    f = r.fields.get("tokenizer.ggml.tokens")
    if f is not None:
        work = sum(int(f.parts[i].nbytes) ** 2 for i in f.data)
        if work > GGUF_MAX_SPLIT_WORK:
            raise FormatError(f"{where}: tokenizer.ggml.tokens holds implausibly long tokens "
                              f"(sum of squared lengths {work})")


def _rust_call(fn, *args):
    """Call into code that uses a Rust extension (tokenizers): a panic there surfaces as pyo3's
    PanicException, a BaseException that `except Exception` misses; it becomes _RustError."""
    try:
        return fn(*args)
    except Exception:
        raise
    except BaseException as e:  # noqa: BLE001
        if type(e).__name__ == "PanicException":
            raise _RustError(_one_line(e)) from None
        raise


class _RustError(Exception):
    pass


def _general_keys(md: dict, reader) -> list:
    out = []
    for k in GENERAL_KEYS:
        v = md.get(k)
        if isinstance(v, str):
            out.append((k, v, "string"))
        elif isinstance(v, list) and all(isinstance(x, str) for x in v) and v:
            out.append((k, v, "array[string]"))
        elif k == "general.file_type" and isinstance(v, int) and not isinstance(v, bool):
            out.append((k, v, "u32"))
    return out


class GGUFSource(Source):
    kind = "gguf"

    def __init__(self, path: Path):
        from ..gguf_io import open_gguf
        self.path = path = Path(path)
        # check_gguf() first: every count, length and offset against the file, then gguf-py's
        # reader (memory-mapped) on a file whose layout is sound
        self._r = r = open_gguf(path)
        md = {}
        for k, f in r.fields.items():
            if k.startswith("tokenizer.ggml.") and k in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                                                          "tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
                continue
            if k.startswith("GGUF."):
                continue
            try:
                md[k] = f.contents()
            except UnicodeDecodeError:
                raise FormatError(f"{path.name}: key {k!r} holds a string that is not valid UTF-8") from None
            except Exception as e:  # noqa: BLE001 - gguf-py on an odd field
                raise FormatError(f"{path.name}: key {k!r}: unreadable value ({_one_line(e)})") from None
        self._md = md
        arch = md.get("general.architecture")
        if not isinstance(arch, str) or arch not in GGUF_ARCH_KEYS:
            raise ConvertError(f"{path.name}: GGUF architecture {_short(arch)} is not supported "
                               f"(supported: {', '.join(GGUF_ARCH_KEYS)})")
        md = dict(md)
        md.setdefault("general.name", path.stem)
        _check_gguf_arch_keys(md, arch, path.name)
        stype = md.get(f"{arch}.rope.scaling.type")
        # llama3 scaling: llama.cpp stores only the rope_freqs tensor; ggq's GGUF export also
        # keeps the parameters under ggq.rope.scaling.*, which we need to rebuild the config.
        g3 = "ggq.rope.scaling."
        self._llama3 = arch == "llama" and md.get(g3 + "type") == "llama3"
        if self._llama3:
            stype = md["llama.rope.scaling.type"] = "llama3"
            for k in ("factor", "low_freq_factor", "high_freq_factor", "original_context_length"):
                if g3 + k in md:
                    md["llama.rope.scaling." + k] = md[g3 + k]
        elif stype not in (None, "none", "linear"):
            raise ConvertError(f"{path.name}: rope scaling {stype!r} is not supported in GGUF input")
        if stype == "linear":
            if f"{arch}.rope.scaling.factor" not in md:
                raise ConvertError(f"{path.name}: linear rope scaling without {arch}.rope.scaling.factor")
        tied = not any(t.name == "output.weight" for t in r.tensors)
        md[f"{arch}.tie_word_embeddings"] = tied
        if f"{arch}.vocab_size" not in md and "tokenizer.ggml.tokens" in r.fields:
            md[f"{arch}.vocab_size"] = len(r.fields["tokenizer.ggml.tokens"].data)
        self.config = ModelConfig.from_metadata(md, path.name)

        from .tokenizer_gguf import tokenizer_from_gguf
        _check_gguf_tokenizer_fields(r, path.name)
        try:
            tk = _rust_call(tokenizer_from_gguf, r, path.name)
        except _RustError as e:
            raise TokenizerError(f"{path.name}: the vocabulary cannot be rebuilt ({e})") from None
        self.tokenizer_json = tk.json
        hf_json = md.get("tokenizer.huggingface.json")  # standard GGUF key: the original file wins
        if isinstance(hf_json, str) and hf_json:
            try:
                from tokenizers import Tokenizer
                _rust_call(Tokenizer.from_str, hf_json)
                self.tokenizer_json = hf_json
            except Exception:  # noqa: BLE001 - includes _RustError
                pass  # unusable embedded copy: keep the one rebuilt from tokenizer.ggml.*
        self.bos_token_id, self.eos_token_id = tk.bos_token_id, tk.eos_token_id
        self.add_bos_token, self.ggml_pre = tk.add_bos_token, tk.pre
        self.tokenizer_metadata = list(getattr(tk, "metadata", None) or [])
        self.general_metadata = _general_keys(self._md, r)
        ct = md.get("tokenizer.chat_template")
        self.chat_template = ct if isinstance(ct, str) else None

        from ..quants import find_by_id
        tensors = {}
        self._rt = {}
        for t in r.tensors:
            if t.name == "rope_freqs.weight":
                if self._llama3:
                    continue  # recomputed from the llama3 parameters
                raise ConvertError(f"{path.name}: llama3 rope scaling (rope_freqs.weight) is not supported")
            shape = tuple(int(d) for d in reversed(t.shape.tolist()))
            if len(shape) > 2:
                raise ConvertError(f"{path.name}: tensor {t.name!r} has {len(shape)} dimensions")
            qt = find_by_id(int(t.tensor_type))
            if qt is None:
                raise ConvertError(f"{path.name}: tensor {t.name!r} has type {t.tensor_type.name}, "
                                   "which ggq does not support")
            if not qt.supports(shape[-1]) or qt.nbytes(shape) != int(t.n_bytes):
                raise FormatError(f"{path.name}: tensor {t.name!r}: {t.n_bytes} bytes for "
                                  f"{qt.name} shape {shape}")
            tensors[t.name] = SourceTensor(t.name, shape, qt.name, int(t.n_bytes), key=t.name)
            self._rt[t.name] = (t, qt)
        self._tensors = tensors
        self._check_tensors()

    def get_raw(self, name: str):
        """(QuantType, uint8 (rows, row_bytes)) in HF row order (whole rows un-permuted)."""
        st = self.tensor_info(name)
        t, qt = self._rt[name]
        rows = math.prod(st.shape[:-1]) if len(st.shape) > 1 else 1
        data = np.asarray(t.data).reshape(-1).view(np.uint8).reshape(rows, qt.row_bytes(st.shape[-1]))
        nh = heads_for(name, self.config.head_count, self.config.head_count_kv)
        if nh is not None and rows_permuted(self.config.arch):
            data = gguf_to_hf_rows(data, nh)
        return qt, data

    def get(self, name: str) -> np.ndarray:
        st = self.tensor_info(name)
        qt, raw = self.get_raw(name)
        return qt.dequantize(np.ascontiguousarray(raw), st.shape[-1]).reshape(st.shape)

    def metadata(self) -> dict:
        return dict(self._md)


# ---------------------------------------------------------------------------------------------

def open_source(path) -> Source:
    """Open a checkpoint: .safetensors file, HF folder, or .gguf file."""
    p = Path(path)
    if not p.exists():
        raise ConvertError(f"{p}: no such file or folder")
    if p.is_dir():
        return SafetensorsSource(p)
    try:
        with open(p, "rb") as fh:
            magic = fh.read(4)
    except OSError as e:
        raise ConvertError(f"{p.name}: cannot read ({e.strerror or e})") from None
    if magic == b"GGUF":
        return GGUFSource(p)
    if p.suffix == ".gguf":
        raise FormatError(f"{p.name}: not a GGUF file (bad magic {magic!r})")
    if p.suffix == ".safetensors":
        return SafetensorsSource(p)
    raise ConvertError(f"{p.name}: unknown input kind (expected a .safetensors file, a Hugging Face "
                       "folder or a .gguf file)")


__all__ = ["ModelConfig", "Source", "SourceTensor", "SafetensorsSource", "GGUFSource", "open_source",
           "hf_to_ggq_name", "ggq_to_hf_name", "read_safetensors_header", "SUPPORTED_ARCHITECTURES",
           "detect_ggml_pre"]
