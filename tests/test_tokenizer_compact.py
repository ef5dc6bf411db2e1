"""ggq.runtime.spm_tokenizer against the `tokenizers` library on the same tokenizer.json: hand-made
SentencePiece vocabularies (both normalizer and decoder forms that ggq.convert.tokenizer_gguf
writes), the cache file's life cycle, ggq's Tokenizer choosing it, and the real Gemma 3
vocabulary (every id decoded, evaluation text encoded)."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from tokenizers import Tokenizer as HF

from ggq.convert.tokenizer_gguf import spm_tokenizer_json
from ggq.runtime import spm_tokenizer as S
from ggq.runtime import tokenizer as T

# a vocabulary with everything the algorithms branch on: control and user-defined tokens
# (matched whole, longest first: "<t" and "<td>"), a space run, byte fallback, merges that go
# stale, equal-score merges, a token containing the byte-token pattern, multi-byte characters
BASE = [("<unk>", 2), ("<s>", 3), ("</s>", 3), ("<turn>", 3), ("<td>", 4), ("<t", 4), ("\n\n", 4), ("  ", 4)]
NORMAL = ["▁", "a", "b", "c", "h", "e", "l", "o", "w", "r", "d", "é", "中",
          "ll", "he", "llo", "hello", "▁w", "or", "▁wor", "ld", "▁world", "ab", "bc", "aa", "▁h",
          "▁▁", "▁a", "é中", "<0x4", "<0x41>x"]


def vocab():
    tokens, types, scores = [], [], []
    for t, ty in BASE:
        tokens.append(t), types.append(ty), scores.append(0.0)
    for b in range(256):
        tokens.append(f"<0x{b:02X}>"), types.append(6), scores.append(0.0)
    for k, t in enumerate(NORMAL):
        tokens.append(t), types.append(1), scores.append(-float(len(t) == 1) * 100 - k * (1 if k % 3 else -1))
    return tokens, scores, types


def spm_json(prefix: bool) -> str:
    tokens, scores, types = vocab()
    return spm_tokenizer_json(tokens, scores, types, bos=1, eos=2, unk=0, add_bos=True, add_space_prefix=prefix)


PIECES = ["a", "b", "c", "h", "e", "l", "o", "w", "r", "d", " ", " ", "é", "中", "\n", "x", "hello", " world",
          "<td>", "<turn>", "</s>", "<s>", "<t", "  ", "\n\n", "\t", "🦙", "ll", "<unk>", "d>", "<0x41>", "▁", "Z"]


def compact(js: str) -> S.SPMTokenizer:
    tj = json.loads(js)
    assert S.shape_problem(tj) is None
    return S.SPMTokenizer(*S.build_tables(tj))


@pytest.mark.parametrize("prefix", [False, True])
def test_same_as_tokenizers_on_a_handmade_vocabulary(prefix):
    js = spm_json(prefix)
    hf, tok = HF.from_str(js), compact(js)
    rng = random.Random(11 + prefix)
    for _ in range(600):
        text = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 16)))
        assert tok.encode(text) == hf.encode(text, add_special_tokens=False).ids, text
    n = hf.get_vocab_size(with_added_tokens=True)
    assert tok.get_vocab_size() == n
    for i in range(n + 3):
        assert tok.id_to_token(i) == hf.id_to_token(i)
        for skip in (False, True):
            assert tok.decode([i], skip_special_tokens=skip) == hf.decode([i], skip_special_tokens=skip), i
    for t in [hf.id_to_token(i) for i in range(n)] + ["", "zz", "<0x4", "▁▁▁", "<t"]:
        assert tok.token_to_id(t) == hf.token_to_id(t), t
    specials = {int(k) for k, v in hf.get_added_tokens_decoder().items() if v.special}
    assert tok.special_ids == specials and specials
    # byte runs: valid UTF-8 joins, invalid bytes become U+FFFD each (ByteFallback)
    bytes_ = [hf.token_to_id(f"<0x{b:02X}>") for b in (0xE4, 0xB8, 0xAD, 0xFF, 0x41, 0xC3)]
    for _ in range(600):
        ids = [rng.choice(bytes_ + [rng.randrange(n + 2)]) for _ in range(rng.randint(0, 10))]
        for skip in (False, True):
            assert tok.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip), ids


def test_shapes_it_leaves_to_tokenizers():
    tj = json.loads(spm_json(False))
    assert S.shape_problem(tj) is None
    for change in (lambda t: t.__setitem__("pre_tokenizer", {"type": "Metaspace"}),
                   lambda t: t["model"].__setitem__("byte_fallback", False),
                   lambda t: t["model"].__setitem__("dropout", 0.1),
                   lambda t: t["decoder"]["decoders"].pop(),
                   lambda t: t["added_tokens"][0].__setitem__("lstrip", True),
                   lambda t: t["added_tokens"][0].__setitem__("id", 5),
                   lambda t: t["model"]["vocab"].pop("<0x41>")):
        bad = json.loads(json.dumps(tj))
        change(bad)
        assert S.shape_problem(bad) is not None


def test_cache_file_life_cycle(tmp_path):
    js = spm_json(True).encode("utf-8")
    a = S.load_or_build(js, tmp_path)
    files = list((tmp_path / "tokenizers").glob("*.spm"))
    assert len(files) == 1 and files[0].stem == S.cache_key(js)
    b = S.load_or_build(js, tmp_path)  # from the file, mapped
    texts = ["hello world", "<turn>hello é中\n\n  ab", "🦙 x <td>"]
    assert [b.encode(t) for t in texts] == [a.encode(t) for t in texts] == \
        [HF.from_buffer(js).encode(t, add_special_tokens=False).ids for t in texts]
    # a damaged file is not used: rebuilt (replaced, not rewritten in place, as a, b map it)
    data = files[0].read_bytes()
    (tmp_path / "damaged").write_bytes(data[: len(data) // 2])
    (tmp_path / "damaged").replace(files[0])
    assert S.load(files[0]) is None
    c = S.load_or_build(js, tmp_path)
    assert [c.encode(t) for t in texts] == [a.encode(t) for t in texts]
    assert S.load(files[0]) is not None
    # no temp files left behind
    assert sorted(p.name for p in (tmp_path / "tokenizers").iterdir()) == [files[0].name]


def test_other_shapes_are_remembered_and_left_alone(tmp_path):
    tj = json.loads(spm_json(False))
    tj["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}
    js = json.dumps(tj).encode("utf-8")
    assert S.load_or_build(js, tmp_path) is None
    assert list((tmp_path / "tokenizers").glob("*.other"))
    assert S.load_or_build(js, tmp_path) is None
    assert S.load_or_build(b'{"decoder": "ByteFallback", broken', tmp_path) is None  # not JSON
    assert S.load_or_build(b'{"model": {}}', tmp_path) is None  # no marker: not even parsed


def test_ggq_tokenizer_uses_it_for_big_vocabularies(tmp_path, monkeypatch):
    monkeypatch.setenv("GGQ_CACHE", str(tmp_path))
    monkeypatch.setattr(T, "COMPACT_MIN_BYTES", 0)
    js = spm_json(False)
    md = {"tokenizer.huggingface.json": js, "tokenizer.bos_token_id": 1, "tokenizer.eos_token_id": 2,
          "tokenizer.add_bos_token": True}
    tok = T.Tokenizer(md)
    assert tok.compact
    monkeypatch.setenv("GGQ_COMPACT_TOKENIZER", "0")
    ref = T.Tokenizer(md)
    assert not ref.compact
    for t in ["hello world", "<turn>hello\n\nab</s>", "é 🦙"]:
        assert tok.encode(t) == ref.encode(t) and tok.encode(t)[0] == 1
        ids = tok.encode(t)
        assert tok.decode(ids) == ref.decode(ids)
        s1, s2 = tok.stream(), ref.stream()
        assert [s1.put(i) for i in ids] == [s2.put(i) for i in ids]
    assert tok.eog_ids == ref.eog_ids and tok.special_ids == ref.special_ids and tok.vocab_size == ref.vocab_size
    # below the threshold, or not of the shape: `tokenizers`
    monkeypatch.delenv("GGQ_COMPACT_TOKENIZER")
    monkeypatch.setattr(T, "COMPACT_MIN_BYTES", 1 << 30)
    assert not T.Tokenizer(md).compact


@pytest.mark.gemma3
def test_gemma3_every_id_and_evaluation_text(gemma3_gguf, tmp_path):
    """The real 262k vocabulary: each id decoded alone (with and without special tokens), random
    id runs, and text encoded, all equal to `tokenizers` on the file's own tokenizer.json."""
    import gguf

    from ggq.convert.tokenizer_gguf import tokenizer_from_gguf

    js = tokenizer_from_gguf(gguf.GGUFReader(str(gemma3_gguf)), gemma3_gguf.name).json.encode("utf-8")
    tok = S.load_or_build(js, tmp_path)
    assert tok is not None
    hf = HF.from_buffer(js)
    n = hf.get_vocab_size(with_added_tokens=True)
    assert tok.get_vocab_size() == n == 262144
    for i in range(n):
        assert tok.decode([i]) == hf.decode([i], skip_special_tokens=False), i
    specials = {int(k) for k, v in hf.get_added_tokens_decoder().items() if v.special}
    assert tok.special_ids == specials
    rng = random.Random(3)
    byte_ids = [hf.token_to_id(f"<0x{b:02X}>") for b in range(256)]
    for _ in range(2000):
        ids = [rng.choice([rng.randrange(n), rng.choice(byte_ids), rng.randrange(300)])
               for _ in range(rng.randint(1, 12))]
        for skip in (False, True):
            assert tok.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip), ids
    eval_text = Path(__file__).resolve().parents[2] / "shared" / "eval_dev.txt"
    text = eval_text.read_text(encoding="utf-8")[:40000] if eval_text.exists() else ""
    texts = [text[k:k + 400] for k in range(0, len(text), 997)] + [
        "The capital of France is", "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
        "émoji 🦙🦙 中文字符 mixed\t\ttabs   spaces\n\n\n", "<unused12><bos>x<eos>", "  leading", ""]
    for t in texts:
        assert tok.encode(t) == hf.encode(t, add_special_tokens=False).ids, t[:80]
