"""Rebuild a Hugging Face tokenizer.json from a GGUF's tokenizer.ggml.* fields.

Only byte-level BPE vocabularies (tokenizer.ggml.model == "gpt2") are rebuilt; SentencePiece
("llama") vocabularies are refused with a clear error.

- vocab from tokenizer.ggml.tokens, merges from tokenizer.ggml.merges;
- control tokens (token_type 3) become special added tokens, user-defined ones (4) plain added
  tokens, so they are matched whole before BPE runs (as llama.cpp does);
- the pre-tokenizer follows tokenizer.ggml.pre: "smollm" = Sequence[Digits(individual_digits),
  ByteLevel(add_prefix_space=False, use_regex=True)]; "gpt2" and anything else = ByteLevel;
- BOS: tokenizer.ggml.add_bos_token decides when present; when absent no BOS is added, which is
  what the HF byte-level BPE models we support do (SmolLM2's HF tokenizer adds none, and its
  GGUF says add_bos_token = false). With a BOS the post-processor is a TemplateProcessing.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from ..errors import TokenizerError

TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6

_BYTELEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}


def pre_tokenizer_for(pre: str | None) -> dict:
    if pre == "smollm":
        return {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True}, dict(_BYTELEVEL)]}
    return dict(_BYTELEVEL)


@dataclass
class GGUFTokenizer:
    json: str
    bos_token_id: int
    eos_token_id: int
    add_bos_token: bool
    pre: str | None


def _strings(reader, key: str, where: str) -> list[str]:
    f = reader.fields.get(key)
    if f is None:
        raise TokenizerError(f"{where}: GGUF lacks {key}")
    try:
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
    except UnicodeDecodeError:
        raise TokenizerError(f"{where}: {key} holds invalid UTF-8") from None


def _scalar(reader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    try:
        return f.contents()
    except Exception:
        return default


def tokenizer_from_gguf(reader, where: str) -> GGUFTokenizer:
    model = _scalar(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise TokenizerError(f"{where}: tokenizer model {model!r} is not supported "
                             "(only byte-level BPE, tokenizer.ggml.model = gpt2)")
    tokens = _strings(reader, "tokenizer.ggml.tokens", where)
    merges = _strings(reader, "tokenizer.ggml.merges", where) if "tokenizer.ggml.merges" in reader.fields else []
    tt = reader.fields.get("tokenizer.ggml.token_type")
    types = [int(tt.parts[i][0]) for i in tt.data] if tt is not None else [TOKEN_NORMAL] * len(tokens)
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
        b = tokens[bos]
        post = {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": b, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {b: {"id": b, "ids": [bos], "tokens": [b]}}}
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
    text = json.dumps(tj, ensure_ascii=False)
    try:  # fail here, naming the file, rather than later in the runtime
        from tokenizers import Tokenizer
        Tokenizer.from_str(text)
    except Exception as e:
        raise TokenizerError(f"{where}: rebuilt tokenizer does not load ({e})") from None
    return GGUFTokenizer(text, bos, eos, add_bos, pre)
