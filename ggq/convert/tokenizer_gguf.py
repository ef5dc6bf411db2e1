"""Rebuild a Hugging Face tokenizer.json from a GGUF's tokenizer.ggml.* fields.

Two vocabulary kinds (tokenizer.ggml.model):

"gpt2" (byte-level BPE)
- vocab from tokenizer.ggml.tokens, merges from tokenizer.ggml.merges;
- control tokens (token_type 3) become special added tokens, user-defined ones (4) plain added
  tokens, so they are matched whole before BPE runs (as llama.cpp does);
- the pre-tokenizer follows tokenizer.ggml.pre: "smollm" = Sequence[Digits(individual_digits),
  ByteLevel(add_prefix_space=False, use_regex=True)]; "gpt2" and anything else = ByteLevel;
- BOS: tokenizer.ggml.add_bos_token decides when present; when absent no BOS is added, which is
  what the HF byte-level BPE models we support do (SmolLM2's HF tokenizer adds none, and its
  GGUF says add_bos_token = false). With a BOS the post-processor is a TemplateProcessing.

"llama" (SentencePiece, tokenized like llama.cpp's llm_tokenizer_spm; Gemma, Llama 2, TinyLlama)
  llama.cpp's algorithm: the text is split on control/user-defined/unknown tokens (matched whole
  on the raw text); each remaining piece gets " " prepended when add_space_prefix is on, every
  " " becomes "▁", and the piece is cut into UTF-8 characters; then, repeatedly, the adjacent
  pair whose concatenation is a vocabulary token with the highest score is merged (ties: the
  leftmost); characters that never form a token are emitted as byte tokens <0xXX>.
  The same thing in `tokenizers` terms:
- model BPE with byte_fallback; vocab = every token (a string listed twice keeps its LAST id,
  as llama.cpp's token_to_id map does); merges = every split of every token into two vocabulary
  tokens, ranked by the merged token's score, highest first (ties: lower id, then shorter left
  part), leaving out splits of a token with a raw space, which never reach BPE (spm_merges).
  A BPE merge fires on the lowest-ranked adjacent pair, leftmost first: the same order as
  llama.cpp's score queue, except that llama.cpp breaks a tie between equal-scored tokens by
  position and BPE by rank (Gemma's normal tokens all have distinct scores; the equal -1000
  scores are on control/user-defined tokens, which never reach the merge stage);
- normalizer Replace(" " -> "▁"), preceded by Prepend("▁") when add_space_prefix; `tokenizers`
  normalizes each piece between added tokens separately, which is exactly llama.cpp's "prefix a
  space to every text fragment that is first or follows a special token"; no pre-tokenizer;
- control (3) and unknown (2) tokens: special added tokens, user-defined (4): non-special added
  tokens, all with normalized=False (llama.cpp matches them on the raw text; Gemma's
  user-defined tokens include runs of raw spaces, tabs and newlines);
- decoder Replace("▁" -> " "), ByteFallback, Fuse, plus Strip(one leading " ") when
  add_space_prefix (llama.cpp's detokenizer drops that space too);
- defaults when keys are absent are llama.cpp's for SPM: add_space_prefix true, add_bos_token
  true, bos 1, eos 2, unk 0.
- `metadata` carries what GGUF export needs to write the tokenizer back exactly (scores, token
  types, flags, unk/pad ids; the token strings too when some string is listed twice).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..errors import TokenizerError

TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6

_BYTELEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
SPACE = "\u2581"  # "▁", SentencePiece's whitespace marker


def pre_tokenizer_for(pre: str | None) -> dict:
    if pre == "smollm":
        return {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True}, dict(_BYTELEVEL)]}
    return dict(_BYTELEVEL)


@dataclass
class GGUFTokenizer:
    json: str                 # the HF tokenizer.json text
    bos_token_id: int         # -1 if none
    eos_token_id: int         # -1 if none
    add_bos_token: bool
    pre: str | None           # llama.cpp pre-tokenizer name ("default" -> None)
    ggml_model: str = "gpt2"  # tokenizer.ggml.model: "gpt2" | "llama"
    # extra .ggq metadata entries (key, value, vtype) for the converter to write as they are
    # (empty for gpt2)
    metadata: list = field(default_factory=list)


def _strings(reader, key: str, where: str) -> list[str]:
    f = reader.fields.get(key)
    if f is None:
        raise TokenizerError(f"{where}: GGUF lacks {key}")
    try:
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
    except UnicodeDecodeError:
        raise TokenizerError(f"{where}: {key} holds invalid UTF-8") from None


def _numbers(reader, key: str, cast) -> list | None:
    f = reader.fields.get(key)
    if f is None:
        return None
    return [cast(f.parts[i][0]) for i in f.data]


def _scalar(reader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    try:
        return f.contents()
    except Exception:
        return default


def _check(text: str, where: str) -> str:
    try:  # fail here, naming the file, rather than later in the runtime
        from tokenizers import Tokenizer
        Tokenizer.from_str(text)
    except Exception as e:
        raise TokenizerError(f"{where}: rebuilt tokenizer does not load ({e})") from None
    return text


def _bos_post(bos_text: str, bos: int) -> dict:
    b = bos_text
    return {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": b, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {b: {"id": b, "ids": [bos], "tokens": [b]}}}


def tokenizer_from_gguf(reader, where: str) -> GGUFTokenizer:
    model = _scalar(reader, "tokenizer.ggml.model")
    if model == "llama":
        return _spm_from_gguf(reader, where)
    if model != "gpt2":
        raise TokenizerError(f"{where}: tokenizer model {model!r} is not supported "
                             "(only byte-level BPE \"gpt2\" and SentencePiece \"llama\")")
    tokens = _strings(reader, "tokenizer.ggml.tokens", where)
    merges = _strings(reader, "tokenizer.ggml.merges", where) if "tokenizer.ggml.merges" in reader.fields else []
    types = _numbers(reader, "tokenizer.ggml.token_type", int) or [TOKEN_NORMAL] * len(tokens)
    if len(types) != len(tokens):
        raise TokenizerError(f"{where}: {len(tokens)} tokens but {len(types)} token types")
    n = len(tokens)

    def tid(key):
        v = _scalar(reader, key)
        if v is None:
            return -1
        v = int(v)
        if not 0 <= v < n:
            raise TokenizerError(f"{where}: {key} = {v} is outside the vocabulary ({n} tokens)")
        return v

    bos, eos = tid("tokenizer.ggml.bos_token_id"), tid("tokenizer.ggml.eos_token_id")
    add_bos = bool(_scalar(reader, "tokenizer.ggml.add_bos_token", False)) and bos >= 0
    pre = _scalar(reader, "tokenizer.ggml.pre")
    pre = pre if isinstance(pre, str) else None
    pre = {"gpt-2": "gpt2", "default": None}.get(pre, pre)  # llama.cpp spells GPT-2's "gpt-2"

    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)  # a duplicate string keeps its first id, as HF would
    added = [{"id": i, "content": tokens[i], "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": types[i] != TOKEN_CONTROL, "special": types[i] == TOKEN_CONTROL}
             for i in range(n) if types[i] in (TOKEN_CONTROL, TOKEN_USER_DEFINED)]
    if add_bos:
        post = _bos_post(tokens[bos], bos)
    else:
        post = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
    tj = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": pre_tokenizer_for(pre),
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab, "merges": merges},
    }
    text = _check(json.dumps(tj, ensure_ascii=False), where)
    return GGUFTokenizer(text, bos, eos, add_bos, pre)


# --------------------------------------------------------------------------- SentencePiece

def spm_merges(tokens: list[str], scores: list[float]) -> list:
    """BPE merges equivalent to llama.cpp's SPM score queue: every split of every distinct token
    string into two vocabulary strings, highest merged-token score first (ties: lower id, then
    shorter left part). A string listed twice uses its last id, like llama.cpp's token_to_id.

    Written in `tokenizers`' one-string form "left right": it loads with about half the
    transient memory and 20% less time than the pair form (Gemma 3's 514k merges: 145 MB above
    the process instead of 324, 0.76 s instead of 0.92). A split with a raw space in either part
    is left out: the normalizer turns every space into "▁" before BPE runs (and llama.cpp
    escapes them the same way), so such a merge could never fire, and the one-string form
    cannot hold it. (Pairs after all if a merge starts with "#version", which `tokenizers` would
    skip as a merges.txt header.)"""
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab[t] = i
    found = []
    for t, i in vocab.items():
        if " " in t:
            continue  # every split of it has a space in one part
        for k in range(1, len(t)):
            if t[:k] in vocab and t[k:] in vocab:
                found.append((-scores[i], i, k))
    found.sort()
    merges = [f"{tokens[i][:k]} {tokens[i][k:]}" for _, i, k in found]
    if any(m.startswith("#version") for m in merges):  # `tokenizers` skips those as a header
        return [m.split(" ", 1) for m in merges]
    return merges


def spm_tokenizer_json(tokens: list[str], scores: list[float], types: list[int], *, bos: int, eos: int,
                       unk: int, add_bos: bool, add_space_prefix: bool) -> str:
    """HF tokenizer.json text that tokenizes like llama.cpp's SPM tokenizer (module docstring)."""
    n = len(tokens)
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab[t] = i  # last id wins, as in llama.cpp
    added = []
    for i in range(n):
        ty = types[i]
        if ty in (TOKEN_CONTROL, TOKEN_UNKNOWN, TOKEN_USER_DEFINED) and vocab.get(tokens[i]) == i:
            added.append({"id": i, "content": tokens[i], "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": ty != TOKEN_USER_DEFINED})
    replace = {"type": "Replace", "pattern": {"String": " "}, "content": SPACE}
    normalizer = ({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": SPACE}, replace]}
                  if add_space_prefix else replace)
    decoders = [{"type": "Replace", "pattern": {"String": SPACE}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"}]
    if add_space_prefix:
        decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    tj = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": None,
        "post_processor": _bos_post(tokens[bos], bos) if add_bos and bos >= 0 else None,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {"type": "BPE", "dropout": None,
                  "unk_token": tokens[unk] if 0 <= unk < n and vocab.get(tokens[unk]) == unk else None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": False,
                  "byte_fallback": True, "ignore_merges": False, "vocab": vocab,
                  "merges": spm_merges(tokens, scores)},
    }
    return json.dumps(tj, ensure_ascii=False)


def _spm_from_gguf(reader, where: str) -> GGUFTokenizer:
    tokens = _strings(reader, "tokenizer.ggml.tokens", where)
    n = len(tokens)
    scores = _numbers(reader, "tokenizer.ggml.scores", float)
    if scores is None:
        raise TokenizerError(f"{where}: SentencePiece vocabulary without tokenizer.ggml.scores")
    types = _numbers(reader, "tokenizer.ggml.token_type", int) or [TOKEN_NORMAL] * n
    if not len(scores) == len(types) == n:
        raise TokenizerError(f"{where}: {n} tokens but {len(scores)} scores and {len(types)} token types")

    def tid(key, default):
        v = _scalar(reader, key)
        present = v is not None
        v = default if v is None else int(v)
        if not 0 <= v < n:
            if present:
                raise TokenizerError(f"{where}: {key} = {v} is outside the vocabulary ({n} tokens)")
            v = -1  # llama.cpp disables a default id that is out of range
        return v, present

    # llama.cpp's SPM defaults when a key is absent
    (bos, _), (eos, _) = tid("tokenizer.ggml.bos_token_id", 1), tid("tokenizer.ggml.eos_token_id", 2)
    unk, unk_present = tid("tokenizer.ggml.unknown_token_id", 0)
    pad, pad_present = tid("tokenizer.ggml.padding_token_id", -1)
    flags = {k: _scalar(reader, "tokenizer.ggml." + k) for k in
             ("add_bos_token", "add_eos_token", "add_sep_token", "add_space_prefix")}
    add_bos = bool(True if flags["add_bos_token"] is None else flags["add_bos_token"]) and bos >= 0
    add_space_prefix = bool(True if flags["add_space_prefix"] is None else flags["add_space_prefix"])
    pre = _scalar(reader, "tokenizer.ggml.pre")
    pre = pre if isinstance(pre, str) else None
    pre = None if pre == "default" else pre

    text = _check(spm_tokenizer_json(tokens, scores, types, bos=bos, eos=eos, unk=unk, add_bos=add_bos,
                                     add_space_prefix=add_space_prefix), where)
    md: list[tuple] = [("tokenizer.ggml.model", "llama", "string"),
                       ("tokenizer.ggml.scores", scores, "array[f32]"),
                       ("tokenizer.ggml.token_type", types, "array[i32]")]
    if len(set(tokens)) != n:  # the tokenizer.json cannot list a string twice: keep the list
        md.append(("tokenizer.ggml.tokens", tokens, "array[string]"))
    for k, v in flags.items():
        if k != "add_bos_token" and v is not None:
            md.append(("tokenizer.ggml." + k, bool(v), "bool"))
    if unk_present and unk >= 0:
        md.append(("tokenizer.unknown_token_id", unk, "i32"))
    if pad_present and pad >= 0:
        md.append(("tokenizer.padding_token_id", pad, "i32"))
    return GGUFTokenizer(text, bos, eos, add_bos, pre, ggml_model="llama", metadata=md)
