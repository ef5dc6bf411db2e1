"""GGUF interoperability: export a .ggq model as a llama.cpp-compatible GGUF v3 file.

Architectures: "llama" and "gemma3". Tensors are copied byte for byte (ggq's block layouts are
GGML's); for llama only, the rows of attn_q / attn_k are reordered into llama.cpp's interleaved
rotary order (gemma3 uses NeoX rotary in llama.cpp: its tensors go out as they are). Metadata
uses llama.cpp's key names.

The tokenizer is written in GGUF form from the tokenizer.json embedded in the .ggq:
- byte-level BPE ("gpt2"): tokens, token types, merges, special ids, pre-tokenizer name;
- SentencePiece ("llama"; a .ggq whose tokenizer.ggml.model is "llama", or whose tokenizer.json
  is a BPE with byte_fallback): tokens, scores, token types, add_space_prefix, special ids and
  flags. Scores and types come from the .ggq's tokenizer.ggml.scores / token_type arrays (a GGUF
  import keeps them, so the export reproduces the original exactly). Without them (a .ggq made
  from a Hugging Face folder) they are derived: llama.cpp's SPM merges the adjacent pair whose
  concatenation has the highest score, so a token made by a merge gets score -rank of the first
  merge in tokenizer.json that makes it, and llama.cpp then merges in the order of the HF BPE
  merges; tokens no merge makes (single characters) score below every merge, -(n_merges + id);
  byte tokens <0xXX> 0.0 and added tokens -1000.0 unless a merge makes them (their scores never
  decide anything: added tokens are split off before merging, bytes are the fallback).
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConvertError, FormatError, GGQError, TokenizerError

# llama.cpp token types (llama_token_type / gguf.TokenType)
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6

# convert preset -> general.file_type (llama_ftype)
_PRESET_FTYPE = {
    "f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9,
    "q2_k": 10, "q3_k_s": 11, "q3_k_m": 12, "q3_k_l": 13, "q4_k_s": 14, "q4_k_m": 15,
    "q5_k_s": 16, "q5_k_m": 17, "q6_k": 18, "iq4_nl": 25, "iq4_xs": 30, "bf16": 32,
}
# dominant tensor type -> general.file_type, when the preset does not say
_TYPE_FTYPE = {
    "F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9,
    "Q2_K": 10, "Q3_K": 12, "Q4_K": 15, "Q5_K": 17, "Q6_K": 18, "IQ4_NL": 25, "IQ4_XS": 30, "BF16": 32,
}

# ggq-only keys carrying llama3 rope scaling: llama.cpp reads llama3 scaling from the
# rope_freqs.weight tensor and would misread llama.rope.scaling.factor as linear scaling.
GGQ_LLAMA3_PREFIX = "ggq.rope.scaling."

SPM_SPACE = "\u2581"  # "▁"
# general.* keys that only describe the model: written to GGUF as they are when the .ggq has them
_GENERAL_PASSTHROUGH = ("general.basename", "general.finetune", "general.size_label", "general.version",
                        "general.organization", "general.author", "general.description", "general.license",
                        "general.license.name", "general.license.link", "general.url", "general.repo_url",
                        "general.quantized_by", "general.tags", "general.languages")
ARCHITECTURES = ("llama", "gemma3")


# --------------------------------------------------------------------------- tokenizer

def guess_pre_tokenizer(tok: dict) -> str | None:
    """llama.cpp pre-tokenizer name for the common byte-level layouts we can recognise."""
    pre = tok.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [(p.get("type"), p.get("individual_digits"), p.get("use_regex", True)) for p in parts]
    if kinds == [("Digits", True, True), ("ByteLevel", None, True)]:
        return "smollm"
    if kinds == [("ByteLevel", None, True)]:
        return "gpt-2"
    return None


def tokenizer_fields(tok_json: "str | dict", n_vocab: int | None = None, *, where: str = "model") -> dict:
    """GGUF tokenizer arrays from a Hugging Face tokenizer.json (byte-level BPE only).

    Returns {"tokens": [str], "token_type": [int], "merges": ["a b"], "unk_id": int|None}.
    n_vocab pads the list with unused "[PAD{i}]" tokens when the embedding has more rows than
    the tokenizer has ids (as llama.cpp's converter does)."""
    tok = json.loads(tok_json) if isinstance(tok_json, str) else tok_json
    model = tok.get("model") or {}
    if model.get("type") != "BPE":
        raise TokenizerError(f"{where}: only BPE tokenizers can be exported to GGUF "
                             f"(found {model.get('type')!r})")
    vocab: dict[str, int] = dict(model.get("vocab") or {})
    added = tok.get("added_tokens") or []
    ids = list(vocab.values()) + [int(a["id"]) for a in added]
    size = max(ids) + 1 if ids else 0
    if n_vocab is not None:
        if size > n_vocab:
            raise TokenizerError(f"{where}: tokenizer has ids up to {size - 1} but the model has "
                                 f"only {n_vocab} embedding rows")
        size = n_vocab
    tokens: list[str | None] = [None] * size
    types = [TOKEN_NORMAL] * size
    for s, i in vocab.items():
        tokens[i] = s
    for a in added:
        i = int(a["id"])
        tokens[i] = a["content"]
        types[i] = TOKEN_CONTROL if a.get("special", False) else TOKEN_USER_DEFINED
    for i, s in enumerate(tokens):
        if s is None:
            tokens[i] = f"[PAD{i}]"
            types[i] = TOKEN_UNUSED
    merges = []
    for m in model.get("merges") or []:
        merges.append(m if isinstance(m, str) else " ".join(m))
    unk = model.get("unk_token")
    unk_id = vocab.get(unk) if unk is not None else None
    return {"tokens": tokens, "token_type": types, "merges": merges, "unk_id": unk_id}


def is_spm_tokenizer(md: dict, tok: dict) -> bool:
    """A SentencePiece vocabulary: said so by the .ggq, or a BPE tokenizer.json with byte fallback."""
    if md.get("tokenizer.ggml.model") is not None:
        return md["tokenizer.ggml.model"] == "llama"
    model = tok.get("model") or {}
    return model.get("type") == "BPE" and bool(model.get("byte_fallback"))


def _spm_add_space_prefix(tok: dict) -> bool:
    """Whether a SentencePiece-style tokenizer.json prepends "▁" (Prepend normalizer or a
    Metaspace pre-tokenizer that prepends)."""
    def walk(node, kind):
        if not isinstance(node, dict):
            return []
        if node.get("type") == "Sequence":
            out = []
            for sub in node.get(kind) or []:
                out += walk(sub, kind)
            return out
        return [node]

    for n in walk(tok.get("normalizer"), "normalizers"):
        if n.get("type") == "Prepend" and n.get("prepend") == SPM_SPACE:
            return True
    for p in walk(tok.get("pre_tokenizer"), "pretokenizers"):
        if p.get("type") == "Metaspace":
            scheme = p.get("prepend_scheme")
            if scheme is None:
                return bool(p.get("add_prefix_space", True))
            return scheme != "never"
    return False


def spm_tokenizer_fields(md: dict, tok: dict, n_vocab: int | None = None, *, where: str = "model") -> dict:
    """GGUF SentencePiece arrays for a .ggq: {"tokens", "scores", "token_type", "add_space_prefix"
    (bool, or None to leave llama.cpp's default), "unk_id", "pad_id"} (module docstring)."""
    model = tok.get("model") or {}
    if model.get("type") != "BPE":
        raise TokenizerError(f"{where}: a SentencePiece vocabulary must be a BPE tokenizer.json "
                             f"(found {model.get('type')!r})")
    tokens = md.get("tokenizer.ggml.tokens")
    if tokens is not None:
        tokens = list(tokens)
        if n_vocab is not None and len(tokens) > n_vocab:
            raise TokenizerError(f"{where}: {len(tokens)} tokens but only {n_vocab} embedding rows")
        extra = 0 if n_vocab is None else n_vocab - len(tokens)
        tokens += [f"[PAD{len(tokens) + i}]" for i in range(extra)]
        derived_types = [TOKEN_UNUSED if i >= len(tokens) - extra else TOKEN_NORMAL for i in range(len(tokens))]
    else:
        derived = tokenizer_fields(tok, n_vocab, where=where)
        tokens, derived_types = derived["tokens"], derived["token_type"]
    for i, t in enumerate(tokens):
        if derived_types[i] == TOKEN_NORMAL and _is_byte_token(t):
            derived_types[i] = TOKEN_BYTE
    n = len(tokens)
    types = md.get("tokenizer.ggml.token_type")
    types = list(types) + [TOKEN_UNUSED] * (n - len(types)) if types is not None else derived_types
    scores = md.get("tokenizer.ggml.scores")
    if scores is not None:
        scores = [float(x) for x in scores] + [-1000.0] * (n - len(scores))
    else:
        scores = derive_spm_scores(tokens, types, model.get("merges") or [])
    if not len(types) == len(scores) == n:
        raise TokenizerError(f"{where}: {n} tokens but {len(scores)} scores and {len(types)} token types")
    if "tokenizer.ggml.add_space_prefix" in md:
        asp = bool(md["tokenizer.ggml.add_space_prefix"])
    elif md.get("tokenizer.ggml.scores") is not None:
        asp = None  # imported from a GGUF that left it out: keep llama.cpp's default there too
    else:
        asp = _spm_add_space_prefix(tok)
    vocab = model.get("vocab") or {}
    unk = md.get("tokenizer.unknown_token_id")
    if unk is None and model.get("unk_token") is not None:
        unk = vocab.get(model["unk_token"])
    pad = md.get("tokenizer.padding_token_id")
    if pad is None and isinstance(tok.get("padding"), dict):
        pad = tok["padding"].get("pad_id")
    return {"tokens": tokens, "scores": scores, "token_type": types, "add_space_prefix": asp,
            "unk_id": None if unk is None or int(unk) < 0 else int(unk),
            "pad_id": None if pad is None or int(pad) < 0 else int(pad)}


def _is_byte_token(t: str) -> bool:
    return len(t) == 6 and t.startswith("<0x") and t.endswith(">") and \
        all(c in "0123456789ABCDEF" for c in t[3:5])


def derive_spm_scores(tokens: list[str], types: list[int], merges: list) -> list[float]:
    """SentencePiece scores that make llama.cpp's SPM merge in the order of the BPE merges
    (module docstring)."""
    first: dict[str, int] = {}
    for rank, m in enumerate(merges):
        left, right = m.split(" ", 1) if isinstance(m, str) else m
        first.setdefault(left + right, rank)
    base = len(merges)
    out = []
    for i, t in enumerate(tokens):
        if t in first:
            out.append(-float(first[t]))
        elif types[i] == TOKEN_BYTE:
            out.append(0.0)
        elif types[i] != TOKEN_NORMAL:
            out.append(-1000.0)
        else:
            out.append(-float(base + i))
    return out


# --------------------------------------------------------------------------- rope

def llama3_rope_factors(head_dim: int, base: float, factor: float, low: float, high: float,
                        orig_ctx: int) -> np.ndarray:
    """rope_freqs.weight as llama.cpp's converter computes it for rope_type llama3."""
    freqs = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    low_wl, high_wl = orig_ctx / low, orig_ctx / high
    out = []
    for f in freqs:
        wl = 2 * math.pi / f
        if wl < high_wl:
            out.append(1.0)
        elif wl > low_wl:
            out.append(factor)
        else:
            smooth = (orig_ctx / wl - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


# --------------------------------------------------------------------------- export

def _need(md: dict, key: str, where: str):
    if key not in md:
        raise FormatError(f"{where}: metadata key {key!r} is missing")
    return md[key]


def file_type_for(md: dict, tensors: dict) -> int | None:
    if md.get("general.file_type") is not None:  # carried over from an imported GGUF
        return int(md["general.file_type"])
    preset = str(md.get("general.preset") or "").lower()
    if preset in _PRESET_FTYPE:
        return _PRESET_FTYPE[preset]
    # otherwise the type holding most weight elements among the 2-D tensors
    counts: dict[str, int] = {}
    for info in tensors.values():
        if len(info.shape) == 2 and info.qtype is not None:
            counts[info.qtype.name] = counts.get(info.qtype.name, 0) + int(np.prod(info.shape))
    if not counts:
        return None
    return _TYPE_FTYPE.get(max(counts, key=counts.get))


def export_gguf(ggq_path, gguf_path, force: bool = False) -> Path:
    """Write `ggq_path` (.ggq) as a GGUF v3 file at `gguf_path`; returns the output path.

    Atomic: written to a temporary file in the output's folder and renamed into place;
    an existing output is refused unless force=True."""
    import gguf

    from .convert.permute import heads_for, hf_to_gguf_rows
    from .format import GGQReader

    src = Path(ggq_path)
    out = Path(gguf_path)
    if out.exists() and not force:
        raise ConvertError(f"{out}: already exists (use --force to overwrite)")
    if out.resolve() == src.resolve():
        raise ConvertError(f"{out}: output would overwrite the input")
    if not out.parent.is_dir():
        raise ConvertError(f"{out}: folder {out.parent} does not exist")

    with GGQReader(src) as f:
        md = f.metadata
        where = str(src)
        arch = str(_need(md, "general.architecture", where))
        if arch not in ARCHITECTURES:
            raise ConvertError(f"{where}: architecture {arch!r} cannot be exported "
                               f"(supported: {', '.join(ARCHITECTURES)})")
        a = arch + "."
        n_head = int(_need(md, a + "attention.head_count", where))
        n_head_kv = int(md.get(a + "attention.head_count_kv", n_head))
        n_embd = int(_need(md, a + "embedding_length", where))
        n_layer = int(_need(md, a + "block_count", where))
        head_dim = int(md.get(a + "attention.key_length") or n_embd // n_head)
        if arch == "gemma3":
            _check_gemma3_attention_scale(md, n_layer, n_embd, n_head, head_dim, where)
        if "token_embd.weight" not in f.tensors:
            raise FormatError(f"{where}: tensor 'token_embd.weight' is missing")
        n_vocab = int(f.tensors["token_embd.weight"].shape[0])
        tok_json = md.get("tokenizer.huggingface.json")
        if not tok_json:
            raise TokenizerError(f"{where}: no embedded tokenizer (tokenizer.huggingface.json)")
        try:
            tok = json.loads(tok_json)
        except ValueError as e:
            raise TokenizerError(f"{where}: embedded tokenizer.json is not valid JSON: {e}") from None
        spm = is_spm_tokenizer(md, tok)
        tf = spm_tokenizer_fields(md, tok, n_vocab, where=where) if spm else tokenizer_fields(tok, n_vocab, where=where)

        fd, tmp_name = tempfile.mkstemp(prefix=out.name + ".tmp-", dir=out.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        w = None
        try:
            w = gguf.GGUFWriter(tmp, arch)
            # general.architecture is added by the writer itself
            w.add_name(str(md.get("general.name") or src.stem))
            w.add_type("model")
            for k in _GENERAL_PASSTHROUGH:  # descriptive keys a GGUF import may have kept
                v = md.get(k)
                if isinstance(v, str):
                    w.add_string(k, v)
                elif isinstance(v, list) and v and all(isinstance(x, str) for x in v):
                    w.add_array(k, v)
            w.add_quantization_version(gguf.GGML_QUANT_VERSION)
            ftype = file_type_for(md, f.tensors)
            if ftype is not None:
                w.add_file_type(ftype)

            # hyperparameters, under llama.cpp's names
            w.add_block_count(n_layer)
            w.add_context_length(int(md.get(a + "context_length", 2048)))
            w.add_embedding_length(n_embd)
            w.add_feed_forward_length(int(_need(md, a + "feed_forward_length", where)))
            w.add_head_count(n_head)
            w.add_head_count_kv(n_head_kv)
            if arch == "gemma3" or head_dim != n_embd // n_head:
                w.add_key_length(head_dim)
                w.add_value_length(head_dim)
            if arch == "llama":
                w.add_rope_dimension_count(head_dim)
            w.add_layer_norm_rms_eps(float(_need(md, a + "attention.layer_norm_rms_epsilon", where)))
            freq_base = float(md.get(a + "rope.freq_base", 10000.0))
            w.add_rope_freq_base(freq_base)
            if arch == "llama":
                w.add_vocab_size(n_vocab)
            else:
                _write_gemma3_keys(w, md, where)

            scaling = str(md.get(a + "rope.scaling.type") or "none")
            rope_freqs = None
            if scaling == "linear":
                w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
                w.add_rope_scaling_factor(float(_need(md, a + "rope.scaling.factor", where)))
            elif scaling == "llama3" and arch == "llama":
                p = {k: md.get("llama.rope.scaling." + k) for k in
                     ("factor", "low_freq_factor", "high_freq_factor", "original_context_length")}
                p = {"factor": float(p["factor"] or 8.0), "low_freq_factor": float(p["low_freq_factor"] or 1.0),
                     "high_freq_factor": float(p["high_freq_factor"] or 4.0),
                     "original_context_length": int(p["original_context_length"] or 8192)}
                rope_freqs = llama3_rope_factors(head_dim, freq_base, p["factor"], p["low_freq_factor"],
                                                 p["high_freq_factor"], p["original_context_length"])
                w.add_string(GGQ_LLAMA3_PREFIX + "type", "llama3")
                w.add_float32(GGQ_LLAMA3_PREFIX + "factor", p["factor"])
                w.add_float32(GGQ_LLAMA3_PREFIX + "low_freq_factor", p["low_freq_factor"])
                w.add_float32(GGQ_LLAMA3_PREFIX + "high_freq_factor", p["high_freq_factor"])
                w.add_uint32(GGQ_LLAMA3_PREFIX + "original_context_length", p["original_context_length"])
            elif scaling != "none":
                raise ConvertError(f"{where}: rope scaling {scaling!r} cannot be exported for {arch}")

            # tokenizer
            if spm:
                _write_spm_tokenizer(w, md, tf)
            else:
                _write_gpt2_tokenizer(w, md, tok, tf)
            if md.get("tokenizer.chat_template"):
                w.add_chat_template(str(md["tokenizer.chat_template"]))

            # tensors: raw bytes; llama's attn_q/attn_k rows reordered (gemma3: NeoX rope, as is)
            for name, info in f.tensors.items():
                qt = info.qtype
                if qt is None:
                    raise ConvertError(f"{where}: tensor {name!r} has type id {info.type_id} "
                                       f"that ggq cannot export")
                raw = f.raw(name)
                heads = heads_for(name, n_head, n_head_kv) if arch == "llama" else None
                if heads is not None:
                    raw = hf_to_gguf_rows(raw, heads)
                raw = np.ascontiguousarray(raw, dtype=np.uint8)
                raw = raw.reshape(-1) if len(info.shape) == 1 else raw.reshape(-1, raw.shape[-1])
                # uint8 + raw_dtype: the writer derives the element shape from the byte shape
                w.add_tensor(name, raw, raw_dtype=gguf.GGMLQuantizationType(qt.ggml_id))
                got = tuple(int(s) for s in w.tensors[-1][name].shape)
                if got != tuple(int(s) for s in info.shape):
                    raise ConvertError(f"{where}: tensor {name!r} shape {tuple(info.shape)} "
                                       f"became {got} in GGUF")
            if rope_freqs is not None and "rope_freqs.weight" not in f.tensors:
                w.add_tensor("rope_freqs.weight", rope_freqs)

            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
            w.close()
            w = None
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, out)
        except BaseException:
            if w is not None:
                try:
                    w.close()
                except Exception:
                    pass
            tmp.unlink(missing_ok=True)
            raise
    return out


def _check_gemma3_attention_scale(md: dict, n_layer: int, n_embd: int, n_head: int, head_dim: int,
                                  where: str) -> None:
    """llama.cpp has no key for Gemma 3's query scale: it uses 1/sqrt(head_dim), or
    1/sqrt(embedding_length / head_count) for a 62-layer (27B) model. A model whose
    query_pre_attn_scalar says otherwise would run wrong there: refuse it."""
    q = md.get("gemma3.attention.query_pre_attn_scalar")
    if q is None:
        return
    want = n_embd // n_head if n_layer == 62 else head_dim
    if not math.isclose(float(q), float(want), rel_tol=1e-6):
        rule = "embedding_length / head_count for 62 layers" if n_layer == 62 else "head_dim"
        raise ConvertError(f"{where}: query_pre_attn_scalar {float(q):g} differs from the {want} "
                           f"llama.cpp assumes ({rule}); the GGUF would compute attention wrong")


def _write_gemma3_keys(w, md: dict, where: str) -> None:
    a = "gemma3."
    if md.get(a + "attention.sliding_window") is not None:
        w.add_sliding_window(int(md[a + "attention.sliding_window"]))
    p = md.get(a + "attention.sliding_window_pattern")
    if p is not None:
        if isinstance(p, (list, tuple)):
            w.add_sliding_window_pattern([bool(x) for x in p])
        else:
            w.add_sliding_window_pattern(int(p))
    if md.get(a + "rope.freq_base_swa") is not None:
        w.add_rope_freq_base_swa(float(md[a + "rope.freq_base_swa"]))
    cap = md.get(a + "final_logit_softcapping")
    if cap:
        w.add_final_logit_softcapping(float(cap))


def _write_gpt2_tokenizer(w, md: dict, tok: dict, tf: dict) -> None:
    w.add_tokenizer_model("gpt2")
    pre = md.get("tokenizer.ggml.pre") or guess_pre_tokenizer(tok) or "default"
    pre = {"gpt2": "gpt-2"}.get(pre, pre)  # llama.cpp spells GPT-2's pre-tokenizer "gpt-2"
    w.add_tokenizer_pre(str(pre))
    w.add_token_list(tf["tokens"])
    w.add_token_types(tf["token_type"])
    w.add_token_merges(tf["merges"])
    _write_special_ids(w, md, tf["unk_id"], _pad_from(md, tok))


def _pad_from(md: dict, tok: dict):
    pad = md.get("tokenizer.padding_token_id")
    if pad is None and isinstance(tok.get("padding"), dict):
        pad = tok["padding"].get("pad_id")
    return pad


def _write_special_ids(w, md: dict, unk_default, pad) -> None:
    bos = int(md.get("tokenizer.bos_token_id", -1))
    eos = int(md.get("tokenizer.eos_token_id", -1))
    if bos >= 0:
        w.add_bos_token_id(bos)
    if eos >= 0:
        w.add_eos_token_id(eos)
    unk = md.get("tokenizer.unknown_token_id", unk_default)
    if unk is not None and int(unk) >= 0:
        w.add_unk_token_id(int(unk))
    if pad is not None and int(pad) >= 0:
        w.add_pad_token_id(int(pad))
    w.add_add_bos_token(bool(md.get("tokenizer.add_bos_token", False)))


def _write_spm_tokenizer(w, md: dict, tf: dict) -> None:
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre(str(md.get("tokenizer.ggml.pre") or "default"))
    w.add_token_list(tf["tokens"])
    w.add_token_scores(tf["scores"])
    w.add_token_types(tf["token_type"])
    _write_special_ids(w, md, tf["unk_id"], tf["pad_id"])
    if "tokenizer.ggml.add_sep_token" in md:
        w.add_add_sep_token(bool(md["tokenizer.ggml.add_sep_token"]))
    if "tokenizer.ggml.add_eos_token" in md:
        w.add_add_eos_token(bool(md["tokenizer.ggml.add_eos_token"]))
    if tf["add_space_prefix"] is not None:
        w.add_add_space_prefix(bool(tf["add_space_prefix"]))


# --------------------------------------------------------------------------- reading helpers

# gguf-py's GGUFReader trusts every count, length and offset in the file: an array count past
# the end of the file makes it loop (and allocate) without end, a string length past the end
# gives IndexErrors, and so on. check_gguf() walks the same structure first, with each of them
# checked against the bytes that are left, so that GGUFReader only ever sees a file whose
# layout is sound. Limits (far above any real model; a real vocabulary has < 300k tokens):
GGUF_MAX_KV = 1 << 16          # key/value pairs
GGUF_MAX_TENSORS = 1 << 20     # tensor infos
GGUF_MAX_ARRAY = 1 << 22       # elements of one array value
GGUF_MAX_DIMS = 4              # as llama.cpp's GGML_MAX_DIMS
GGUF_MAX_ELEMENTS = 1 << 50    # elements of one tensor
_GGUF_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # type -> size
_GGUF_STRING, _GGUF_ARRAY = 8, 9
_GGUF_RESERVED = ("GGUF.version", "GGUF.tensor_count", "GGUF.kv_count")  # gguf-py's own fields


class _GGUFWalk:
    def __init__(self, mm, size: int, name: str):
        import struct
        self.mm, self.size, self.name, self.pos, self._unpack = mm, size, name, 0, struct.unpack_from

    def bad(self, msg: str):
        raise FormatError(f"{self.name}: bad GGUF file: {msg}")

    def need(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            self.bad(f"{what} at offset {self.pos} ({n} bytes) runs past the end of the file "
                     f"({self.size} bytes)")

    def num(self, fmt: str, nbytes: int, what: str) -> int:
        self.need(nbytes, what)
        v = self._unpack(fmt, self.mm, self.pos)[0]
        self.pos += nbytes
        return v

    def string(self, what: str) -> bytes:
        n = self.num("<Q", 8, what + " length")
        self.need(n, what)
        b = self.mm[self.pos:self.pos + n]
        self.pos += n
        return b

    def text(self, what: str) -> str:
        b = self.string(what)
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            self.bad(f"{what} at offset {self.pos - len(b)} is not valid UTF-8")

    def value(self, vtype: int, key: str) -> None:
        if vtype in _GGUF_SCALAR:
            self.need(_GGUF_SCALAR[vtype], f"value of {key!r}")
            self.pos += _GGUF_SCALAR[vtype]
        elif vtype == _GGUF_STRING:
            self.string(f"value of {key!r}")
        elif vtype == _GGUF_ARRAY:
            itype = self.num("<I", 4, f"element type of {key!r}")
            n = self.num("<Q", 8, f"element count of {key!r}")
            if itype == _GGUF_ARRAY:
                self.bad(f"key {key!r}: arrays of arrays are not supported")
            if itype not in _GGUF_SCALAR and itype != _GGUF_STRING:
                self.bad(f"key {key!r}: unknown array element type {itype}")
            if n > GGUF_MAX_ARRAY:
                self.bad(f"key {key!r}: array of {n} elements (more than {GGUF_MAX_ARRAY})")
            if itype == _GGUF_STRING:
                self.need(8 * n, f"array {key!r} ({n} strings)")
                for _ in range(n):
                    self.string(f"element of {key!r}")
            else:
                self.need(n * _GGUF_SCALAR[itype], f"array {key!r} ({n} elements)")
                self.pos += n * _GGUF_SCALAR[itype]
        else:
            self.bad(f"key {key!r}: unknown value type {vtype}")


def check_gguf(path) -> dict:
    """Check a GGUF file's header, key/value section and tensor table against the file itself
    (every count, length, type, dimension and data range) without reading its data. Returns
    {"version", "alignment", "data_offset", "tensors": {name: (type, dims, offset, nbytes)}};
    raises FormatError "<file>: <problem>" (one line) on anything gguf-py or ggq cannot take."""
    import mmap

    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    name = Path(path).name
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size < 24:
                raise FormatError(f"{name}: bad GGUF file: truncated ({size} bytes)")
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise FormatError(f"{name}: cannot read ({e.strerror or e})") from None
    try:
        w = _GGUFWalk(mm, size, name)
        if mm[:4] != b"GGUF":
            raise FormatError(f"{name}: not a GGUF file (bad magic {bytes(mm[:4])!r})")
        w.pos = 4
        version = w.num("<I", 4, "version")
        if version & 0xFFFF == 0 and version:
            w.bad("big-endian GGUF files are not supported")
        if version not in (2, 3):
            w.bad(f"GGUF version {version} is not supported (2 and 3 are)")
        n_tensors = w.num("<Q", 8, "tensor count")
        n_kv = w.num("<Q", 8, "key/value count")
        if n_kv > GGUF_MAX_KV or 13 * n_kv > size - w.pos:
            w.bad(f"key/value count {n_kv} is implausible for a file of {size} bytes")
        if n_tensors > GGUF_MAX_TENSORS or 24 * n_tensors > size - w.pos:
            w.bad(f"tensor count {n_tensors} is implausible for a file of {size} bytes")
        keys: set[str] = set(_GGUF_RESERVED)
        alignment = 32
        for _ in range(n_kv):
            key = w.text("key")
            if key in keys:
                w.bad(f"duplicate key {key!r}")
            keys.add(key)
            vtype = w.num("<I", 4, f"value type of {key!r}")
            start = w.pos
            w.value(vtype, key)
            if key == "general.alignment":
                if vtype != 4:
                    w.bad("general.alignment is not a u32")
                alignment = w._unpack("<I", mm, start)[0]
                if alignment == 0 or alignment & (alignment - 1):
                    w.bad(f"general.alignment {alignment} is not a power of two")
        infos = []
        names: set[str] = set()
        for _ in range(n_tensors):
            tname = w.text("tensor name")
            if tname in names:
                w.bad(f"duplicate tensor name {tname!r}")
            names.add(tname)
            n_dims = w.num("<I", 4, f"dimension count of tensor {tname!r}")
            if not 1 <= n_dims <= GGUF_MAX_DIMS:
                w.bad(f"tensor {tname!r}: {n_dims} dimensions (1 to {GGUF_MAX_DIMS} allowed)")
            dims = [w.num("<Q", 8, f"dimensions of tensor {tname!r}") for _ in range(n_dims)]
            n = math.prod(dims)
            if any(d >= 1 << 63 for d in dims) or n > GGUF_MAX_ELEMENTS:
                w.bad(f"tensor {tname!r}: dimensions {dims} are implausible")
            ttype = w.num("<I", 4, f"type of tensor {tname!r}")
            try:
                block, tsize = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
            except (ValueError, KeyError):
                w.bad(f"tensor {tname!r}: unknown GGML type {ttype}")
            if dims[0] % block:
                w.bad(f"tensor {tname!r}: {dims[0]} columns is not a multiple of the block size {block} "
                      f"of {GGMLQuantizationType(ttype).name}")
            offset = w.num("<Q", 8, f"data offset of tensor {tname!r}")
            infos.append((tname, ttype, dims, offset, n // block * tsize))
        data_offset = -(-w.pos // alignment) * alignment
        tensors = {}
        for tname, ttype, dims, offset, nbytes in infos:
            if offset % alignment:
                w.bad(f"tensor {tname!r}: data offset {offset} is not a multiple of the alignment {alignment}")
            if data_offset + offset + nbytes > size:
                w.bad(f"tensor {tname!r}: data [{data_offset + offset}, {data_offset + offset + nbytes}) "
                      f"runs past the end of the file ({size} bytes)")
            tensors[tname] = (ttype, dims, offset, nbytes)
        return {"version": version, "alignment": alignment, "data_offset": data_offset, "tensors": tensors}
    finally:
        mm.close()


def one_line(e: BaseException, limit: int = 200) -> str:
    """An exception as one short line (for messages built from third-party errors)."""
    s = " ".join(str(e).split()) or type(e).__name__
    return s if len(s) <= limit else s[:limit - 3] + "..."


def open_gguf(path):
    """gguf.GGUFReader on a file check_gguf() accepted (memory-mapped, nothing read up front);
    any error becomes a one-line FormatError naming the file."""
    import gguf

    check_gguf(path)
    try:
        return gguf.GGUFReader(str(path), "r")
    except Exception as e:  # noqa: BLE001 - gguf-py raises ValueError/KeyError/IndexError/...
        raise FormatError(f"{Path(path).name}: not a readable GGUF file ({one_line(e)})") from None


def gguf_metadata(path) -> dict[str, Any]:
    """All key/value pairs of a GGUF file as plain Python values (arrays as lists)."""
    r = open_gguf(path)
    out: dict[str, Any] = {}
    for k, fld in r.fields.items():
        if k.startswith("GGUF."):
            continue
        try:
            out[k] = fld.contents()
        except Exception as e:  # noqa: BLE001 - e.g. a string value that is not UTF-8
            raise FormatError(f"{Path(path).name}: key {k!r}: unreadable value ({one_line(e)})") from None
    return out
