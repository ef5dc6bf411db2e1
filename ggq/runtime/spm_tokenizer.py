"""SentencePiece-shaped BPE vocabularies (Gemma 3's, every GGUF "llama" vocabulary that
ggq.convert.tokenizer_gguf rebuilds) tokenized exactly as the `tokenizers` library does, from
compact arrays kept in a cache file instead of the library's object.

Why: for Gemma 3's 262k tokens and 515k merges, `tokenizers` holds ~100 MB for the whole run and
passes through ~320 MB more while it parses the JSON, beside a model whose weights are 264 MB
(see docs/bench.md, peak RSS). These arrays take ~15 MB on disk, are memory-mapped, and a run
touches only the pages of the tokens it meets.

The shape handled (anything else goes to `tokenizers`, see `shape_problem`):
- model BPE, byte_fallback, no dropout, no subword prefix or suffix, fuse_unk false,
  ignore_merges false; ids 0..V-1, each string once; merges name vocabulary strings whose
  concatenation is in the vocabulary;
- normalizer Replace(" " -> "\u2581"), optionally after Prepend("\u2581"); no pre-tokenizer;
- added tokens not normalized, no lstrip/rstrip/single_word, each equal to the vocabulary's
  string at its id;
- decoder Sequence[Replace("\u2581" -> " "), ByteFallback, Fuse], optionally then Strip(" ", 1, 0).

The algorithms are `tokenizers` 0.2x's (models/bpe/word.rs merge_all, model.rs merge_word,
added_vocabulary.rs, decoders/byte_fallback.rs), step for step, including the merge queue's
order (lowest rank, then leftmost) and its stale-entry check; tests compare both on the real
Gemma 3 vocabulary and on hand-made ones.

Cache file: a JSON header line (format, config, added tokens) then, 64-byte aligned, the arrays
(little-endian): `blob` (UTF-8 of every token), `offsets` (V+1, int64), `order` (ids sorted by
their UTF-8 bytes, int32), `merge_keys` (left << 32 | right, sorted, int64), `merge_rank` and
`merge_new` (int32). Named by a BLAKE2b digest of the tokenizer JSON's bytes, so a changed
vocabulary never meets an old file; written to a temp file and renamed.
"""
from __future__ import annotations

import heapq
import json
import mmap
from pathlib import Path

import numpy as np

FORMAT = 2
SPACE = "\u2581"
_ALIGN = 64
_ARRAYS = (("blob", np.uint8), ("offsets", np.int64), ("order", np.int32),
           ("merge_keys", np.int64), ("merge_rank", np.int32), ("merge_new", np.int32))


def might_apply(js: bytes) -> bool:
    """A cheap test on the raw JSON before parsing it (a parse of Gemma 3's costs ~0.5 s and
    ~200 MB, once): see ggq.runtime.tokenizer.COMPACT_MARKER."""
    from .tokenizer import COMPACT_MARKER

    return COMPACT_MARKER in js


def cache_key(js: bytes) -> str:
    import hashlib

    return hashlib.blake2b(js, digest_size=20).hexdigest()


def shape_problem(tj: dict) -> str | None:
    """None when the parsed tokenizer.json has the shape this module reproduces, else why not."""
    m = tj.get("model") or {}
    if m.get("type") != "BPE":
        return "model is not BPE"
    for k, want in (("dropout", None), ("continuing_subword_prefix", None), ("end_of_word_suffix", None),
                    ("fuse_unk", False), ("byte_fallback", True)):
        if m.get(k, want if k != "byte_fallback" else None) != want:
            return f"model.{k} = {m.get(k)!r}"
    if m.get("ignore_merges", False) is not False:
        return "model.ignore_merges"
    if tj.get("pre_tokenizer") is not None:
        return "a pre-tokenizer"
    replace = {"type": "Replace", "pattern": {"String": " "}, "content": SPACE}
    n = tj.get("normalizer")
    if n != replace and n != {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": SPACE}, replace]}:
        return "normalizer"
    d = tj.get("decoder") or {}
    base = [{"type": "Replace", "pattern": {"String": SPACE}, "content": " "}, {"type": "ByteFallback"},
            {"type": "Fuse"}]
    if d.get("type") != "Sequence" or d.get("decoders") not in (
            base, base + [{"type": "Strip", "content": " ", "start": 1, "stop": 0}]):
        return "decoder"
    vocab = m.get("vocab")
    if not isinstance(vocab, dict) or sorted(vocab.values()) != list(range(len(vocab))):
        return "vocabulary ids are not 0..V-1, each once"
    if any(f"<0x{b:02X}>" not in vocab for b in range(256)):
        return "byte-fallback tokens missing"
    unk = m.get("unk_token")
    if unk is not None and unk not in vocab:
        return "unk_token not in the vocabulary"
    for a in tj.get("added_tokens") or []:
        if a.get("normalized") or a.get("lstrip") or a.get("rstrip") or a.get("single_word"):
            return f"added token {a.get('content')!r} has flags"
        if not a.get("content") or vocab.get(a["content"]) != a.get("id"):
            return f"added token {a.get('content')!r} is not the vocabulary's string at its id"
    return None


def build_tables(tj: dict) -> tuple[dict, dict]:
    """(header, arrays) of a tokenizer.json of the handled shape (shape_problem(tj) is None).
    Takes tj's merges list out of it (freed as soon as the table is made)."""
    m = tj["model"]
    vocab: dict = m["vocab"]
    V = len(vocab)
    # merges as `tokenizers` builds them: rank = list index, a pair listed twice keeps its last rank
    merges = m.pop("merges")  # freed below, before the vocabulary's arrays: the first run's peak
    M = len(merges)
    keys = np.empty(M, dtype=np.int64)
    new = np.empty(M, dtype=np.int32)
    for rank, mg in enumerate(merges):
        a, b = mg if isinstance(mg, list) else mg.split(" ", 1)
        ia, ib, n = vocab.get(a), vocab.get(b), vocab.get(a + b)
        if ia is None or ib is None or n is None:
            raise ValueError(f"merge {a!r} {b!r}: a part or the result is not in the vocabulary")
        keys[rank] = (ia << 32) | ib
        new[rank] = n
    del merges
    # the last occurrence of each pair: the first in reversed order
    keys_sorted, first_rev = np.unique(keys[::-1], return_index=True)
    rank = (M - 1 - first_rev).astype(np.int32)
    tokens = [""] * V
    for t, i in vocab.items():
        tokens[i] = t
    enc = [t.encode("utf-8") for t in tokens]
    lens = np.fromiter((len(b) for b in enc), dtype=np.int64, count=V)
    offsets = np.zeros(V + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    blob = np.frombuffer(b"".join(enc), dtype=np.uint8)
    order = np.array(sorted(range(V), key=enc.__getitem__), dtype=np.int32)
    added = [[a["content"], int(a["id"]), bool(a.get("special"))] for a in tj.get("added_tokens") or []]
    header = {
        "format": FORMAT,
        "vocab_size": V,
        "unk": vocab.get(m.get("unk_token")) if m.get("unk_token") is not None else None,
        "prepend": tj["normalizer"].get("type") == "Sequence",
        "strip": len(tj["decoder"]["decoders"]) == 4,
        "added": added,
        "byte_ids": [vocab[f"<0x{b:02X}>"] for b in range(256)],
    }
    arrays = {"blob": blob, "offsets": offsets, "order": order, "merge_keys": keys_sorted,
              "merge_rank": rank, "merge_new": new[rank]}
    return header, arrays


def save(path: Path, header: dict, arrays: dict) -> None:
    """Write the cache file atomically (temp file beside it, then rename)."""
    from ..format.atomic import discard, publish, temp_beside

    head = dict(header, arrays={})
    pos = 0
    for name, dt in _ARRAYS:
        a = np.ascontiguousarray(arrays[name], dtype=dt)
        head["arrays"][name] = [pos, int(a.shape[0])]
        pos += -(-a.nbytes // _ALIGN) * _ALIGN
    line = json.dumps(head, ensure_ascii=False).encode("utf-8") + b"\n"
    start = -(-len(line) // _ALIGN) * _ALIGN
    path.parent.mkdir(parents=True, exist_ok=True)
    fh, tmp = temp_beside(path)
    try:
        fh.write(line + b"\0" * (start - len(line)))
        for name, dt in _ARRAYS:
            a = np.ascontiguousarray(arrays[name], dtype=dt)
            fh.write(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())
            fh.write(b"\0" * (-a.nbytes % _ALIGN))
        publish(fh, tmp, path)
    except BaseException:
        discard(fh, tmp)
        raise


def load(path: Path) -> "SPMTokenizer | None":
    """The tokenizer in a cache file, or None when the file is absent or unusable (any damage:
    it is then rebuilt)."""
    try:
        with open(path, "rb") as fh:
            line = fh.readline(1 << 24)
        head = json.loads(line)
        if head.get("format") != FORMAT:
            return None
        start = -(-len(line) // _ALIGN) * _ALIGN
        with open(path, "rb") as fh:
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        size = len(mm)
        arrays = {}
        for name, dt in _ARRAYS:
            off, n = head["arrays"][name]
            dt = np.dtype(dt).newbyteorder("<")
            if n < 0 or start + off + n * dt.itemsize > size:
                return None
            arrays[name] = np.frombuffer(mm, dtype=dt, count=n, offset=start + off)
        V = head["vocab_size"]
        if arrays["offsets"].shape[0] != V + 1 or arrays["order"].shape[0] != V:
            return None
        return SPMTokenizer(head, arrays, mm)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_or_build(js: bytes, cache_dir) -> "SPMTokenizer | None":
    """The compact tokenizer of this tokenizer JSON (from the cache, or built and cached), or
    None when its shape is not the one handled here (or it does not parse: `tokenizers` then
    says what is wrong)."""
    if not might_apply(js):
        return None
    path = Path(cache_dir) / "tokenizers" / f"{cache_key(js)}.spm" if cache_dir is not None else None
    if path is not None:
        if path.with_suffix(".other").exists():
            return None
        tok = load(path)
        if tok is not None:
            return tok
    try:
        tj = json.loads(js)
    except ValueError:
        return None
    problem = shape_problem(tj) if isinstance(tj, dict) else "not an object"
    if problem is None:
        try:
            header, arrays = build_tables(tj)
        except (ValueError, KeyError, TypeError) as e:
            problem = str(e)
    del tj
    if problem is not None:
        if path is not None:
            try:  # remembered, so the next run does not parse it again
                path.parent.mkdir(parents=True, exist_ok=True)
                path.with_suffix(".other").write_text(problem + "\n")
            except OSError:
                pass
        return None
    if path is not None:
        try:
            save(path, header, arrays)
            tok = load(path)  # mapped: the arrays built here are freed
            if tok is not None:
                return tok
        except OSError:
            pass  # an unwritable cache: the arrays in memory
    return SPMTokenizer(header, arrays)


class SPMTokenizer:
    """encode / decode / token_to_id / id_to_token with `tokenizers`' results (module docstring)."""

    def __init__(self, header: dict, arrays: dict, mapped: mmap.mmap | None = None):
        self._mapped = mapped  # the cache file's map the arrays view (None: arrays in memory)
        self.n = int(header["vocab_size"])
        self.unk = header.get("unk")
        self.prepend = bool(header.get("prepend"))
        self.strip = bool(header.get("strip"))
        self._blob = arrays["blob"]
        self._off = arrays["offsets"]
        self._order = arrays["order"]
        self._mkeys = arrays["merge_keys"]
        self._mrank = arrays["merge_rank"]
        self._mnew = arrays["merge_new"]
        self.added = {c: i for c, i, _ in header["added"]}
        self.special_ids = frozenset(i for _, i, s in header["added"] if s)
        # added tokens by first character, longest first: leftmost-longest matching
        first: dict = {}
        for c in sorted(self.added, key=len, reverse=True):
            first.setdefault(c[0], []).append(c)
        self._first = first
        self._byte_ids = [int(i) for i in header["byte_ids"]]
        self._pieces: dict = {}  # id -> (byte value or -1, text) after the decoder's Replace

    def release_pages(self) -> None:
        """Drop the cache file's pages from this process's resident set (they stay in the page
        cache; what is read again faults back in). A lookup's binary search touches a few pages
        and the kernel maps the 64 KiB around each, so an encode leaves most of the file mapped:
        Tokenizer calls this after its lookups and each encode."""
        if self._mapped is not None and hasattr(mmap, "MADV_DONTNEED"):
            try:
                self._mapped.madvise(mmap.MADV_DONTNEED)
            except (OSError, ValueError):
                pass

    # -- vocabulary ------------------------------------------------------------------------------
    def _bytes(self, i: int) -> bytes:
        return self._blob[self._off[i]:self._off[i + 1]].tobytes()

    def get_vocab_size(self, with_added_tokens: bool = True) -> int:
        return self.n  # every added token is a vocabulary string (shape_problem)

    def id_to_token(self, i: int):
        i = int(i)
        return self._bytes(i).decode("utf-8") if 0 <= i < self.n else None

    def token_to_id(self, text: str):
        i = self.added.get(text)
        if i is not None:
            return i
        key = text.encode("utf-8")
        lo, hi = 0, self.n
        while lo < hi:  # binary search over the ids sorted by their bytes
            mid = (lo + hi) // 2
            if self._bytes(int(self._order[mid])) < key:
                lo = mid + 1
            else:
                hi = mid
        if lo < self.n and self._bytes(int(self._order[lo])) == key:
            return int(self._order[lo])
        return None

    # -- encode ----------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        out: list[int] = []
        for piece, tid in self._split_added(text):
            if tid is not None:
                out.append(tid)
                continue
            if self.prepend:  # Prepend adds to a non-empty piece only
                piece = SPACE + piece
            out.extend(self._bpe(piece.replace(" ", SPACE)))
        return out

    def _split_added(self, text: str):
        """(piece, None) for text between added tokens, (content, id) for each added token:
        leftmost-longest matches on the raw text (AhoCorasick LeftmostLongest)."""
        first = self._first
        start = i = 0
        n = len(text)
        while i < n:
            cands = first.get(text[i])
            if cands is not None:
                for c in cands:
                    if text.startswith(c, i):
                        if i > start:
                            yield text[start:i], None
                        yield c, self.added[c]
                        i += len(c)
                        start = i
                        break
                else:
                    i += 1
            else:
                i += 1
        if start < n:
            yield text[start:], None

    def _merge(self, a: int, b: int):
        """(rank, new id) of the merge of the pair, or None."""
        k = (a << 32) | b
        j = int(np.searchsorted(self._mkeys, k))
        if j < self._mkeys.shape[0] and int(self._mkeys[j]) == k:
            return int(self._mrank[j]), int(self._mnew[j])
        return None

    def _bpe(self, word: str) -> list[int]:
        if not word:
            return []
        # merge_word: one symbol per character, or its UTF-8 bytes' fallback tokens, or unk
        c: list[int] = []
        ids: dict = {}
        for ch in word:
            t = ids.get(ch, -2)
            if t == -2:
                t = ids[ch] = self.token_to_id(ch)
            if t is not None:
                c.append(t)
            else:
                c.extend(self._byte_ids[b] for b in ch.encode("utf-8"))
        # merge_all: a queue of (rank, position, new id), stale entries skipped
        n = len(c)
        prev = list(range(-1, n - 1))
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        alive = [True] * n
        cache: dict = {}

        def merge(a, b):
            k = (a, b)
            r = cache.get(k, 0)
            if r == 0:
                r = cache[k] = self._merge(a, b)
            return r

        if n > 1:
            keys = (np.asarray(c[:-1], dtype=np.int64) << 32) | np.asarray(c[1:], dtype=np.int64)
            js = np.searchsorted(self._mkeys, keys)
            js = np.minimum(js, self._mkeys.shape[0] - 1)
            hit = self._mkeys[js] == keys
            queue = [(int(self._mrank[j]), p, int(self._mnew[j])) for p, j in enumerate(js) if hit[p]]
            heapq.heapify(queue)
        else:
            queue = []
        while queue:
            rank, pos, new = heapq.heappop(queue)
            if not alive[pos] or nxt[pos] == -1:
                continue
            right = nxt[pos]
            m = merge(c[pos], c[right])
            if m is None or m[1] != new:
                continue
            c[pos] = new
            alive[right] = False
            nxt[pos] = nxt[right]
            if nxt[pos] != -1:
                prev[nxt[pos]] = pos
            p = prev[pos]
            if p >= 0:
                m = merge(c[p], new)
                if m is not None:
                    heapq.heappush(queue, (m[0], p, m[1]))
            q = nxt[pos]
            if q != -1:
                m = merge(new, c[q])
                if m is not None:
                    heapq.heappush(queue, (m[0], pos, m[1]))
        return [c[i] for i in range(n) if alive[i]]

    # -- decode ----------------------------------------------------------------------------------
    def _piece(self, i: int):
        got = self._pieces.get(i)
        if got is None:
            text = self._bytes(i).decode("utf-8").replace(SPACE, " ")
            byte = -1
            if len(text.encode("utf-8")) == 6 and text.startswith("<0x") and text.endswith(">"):
                h = text[3:5]
                # Rust's u8::from_str_radix(h, 16): hex digits, an optional leading '+'
                if all(ch in "0123456789abcdefABCDEF" for ch in h.removeprefix("+")) and h not in ("+", "++"):
                    byte = int(h, 16)
            got = self._pieces[i] = (byte, text)
        return got

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        parts: list[str] = []
        pending = bytearray()
        skip = self.special_ids if skip_special_tokens else ()
        for i in ids:
            i = int(i)
            if i < 0:
                raise OverflowError("can't convert negative int to unsigned")
            if i >= self.n or i in skip:
                continue
            byte, text = self._piece(i)
            if byte >= 0:
                pending.append(byte)
                continue
            if pending:
                parts.append(_bytes_text(pending))
                pending = bytearray()
            parts.append(text)
        if pending:
            parts.append(_bytes_text(pending))
        out = "".join(parts)
        if self.strip and out.startswith(" "):
            out = out[1:]
        return out


def _bytes_text(b: bytearray) -> str:
    """ByteFallback: a run of byte tokens is its UTF-8 text, or U+FFFD per byte if invalid."""
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return "\ufffd" * len(b)
