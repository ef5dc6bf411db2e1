"""KL divergence of a model's next-token distributions from a reference's, as llama-perplexity
--kl-divergence computes it, in float64.

Protocol (llama-perplexity's, the same as `ggq perplexity`): the text is tokenized whole with no
special tokens, cut into non-overlapping windows of c tokens from token 0 (the remainder is
dropped), each evaluated alone from an empty cache with its first token replaced by BOS when the
model adds one. `half` (llama-perplexity's) scores the predictions of tokens c/2+1..c-1 of every
window, `full` tokens 1..c-1.

Per scored position: KLD = sum_v p_ref(v) (log p_ref(v) - log p(v)) with both log-softmaxes in
float64 (in float32, log-sum-exp over 49k logits is off by about 1e-5 nats, which swamps the
KLD of a good 8-bit file), whether the two top tokens agree, and each model's NLL of the true
next token. The summary is llama-perplexity's: mean KLD with its standard error, percentiles
(linear interpolation), same-top %, PPL of both and their ratio with its error.

A reference can be saved once (RefWriter: its float32 logits of the scored positions, which is
lossless, since the forward pass produces float32) and reused (RefReader) instead of a model.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UsageError
from ..format.atomic import discard, publish, temp_beside

PROTOCOLS = ("half", "full")
REF_MAGIC = b"GGQKLREF"
REF_VERSION = 1
REF_ALIGN = 64
ROWS = 32  # rows of logits converted to float64 at a time (49k vocab: 12.6 MB)


def first_scored(protocol: str, ctx: int) -> int:
    """Index of the first logits row scored in a window (it predicts token first + 1)."""
    if protocol == "half":
        return ctx // 2
    if protocol == "full":
        return 0
    raise UsageError(f"unknown protocol {protocol!r} (known: {', '.join(PROTOCOLS)})")


def text_windows(tokens: np.ndarray, ctx: int, bos: int | None, chunks: int | None = None) -> list[np.ndarray]:
    """The evaluation windows of a tokenized text (see the module docstring)."""
    if ctx < 4:
        raise UsageError(f"window size must be at least 4 tokens (got {ctx})")
    if chunks is not None and chunks < 1:
        raise UsageError(f"--chunks must be >= 1 (got {chunks})")
    n = len(tokens) // ctx
    if chunks is not None:
        n = min(n, chunks)
    out = []
    for w in range(n):
        win = np.array(tokens[w * ctx:(w + 1) * ctx], dtype=np.int64)
        if bos is not None:
            win[0] = bos
        out.append(win)
    return out


def log_softmax64(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def compare_logits(lq: np.ndarray, lref: np.ndarray, targets: np.ndarray):
    """Rows of logits (n, vocab) of the model and of the reference, and the true next tokens (n,):
    (kld, same_top, nll, nll_ref), float64 / bool arrays of n."""
    n = lq.shape[0]
    if lref.shape != lq.shape or targets.shape != (n,):
        raise UsageError(f"logits shapes differ: model {lq.shape}, reference {lref.shape}")
    kld = np.empty(n, np.float64)
    same = np.empty(n, bool)
    nll = np.empty(n, np.float64)
    nll_ref = np.empty(n, np.float64)
    for s in range(0, n, ROWS):
        e = min(n, s + ROWS)
        a = log_softmax64(lq[s:e])
        b = log_softmax64(lref[s:e])
        kld[s:e] = (np.exp(b) * (b - a)).sum(axis=1)
        same[s:e] = lq[s:e].argmax(axis=1) == lref[s:e].argmax(axis=1)
        r = np.arange(e - s)
        nll[s:e] = -a[r, targets[s:e]]
        nll_ref[s:e] = -b[r, targets[s:e]]
    return kld, same, nll, nll_ref


def _mean_err(x: np.ndarray) -> tuple[float, float]:
    """Mean and its standard error, as llama-perplexity's mean_and_uncertainty."""
    n = x.size
    m = float(x.mean())
    var = float((x * x).mean()) - m * m
    return m, (math.sqrt(var / (n - 1)) if var > 0 and n > 1 else 0.0)


@dataclass
class KLDResult:
    kld: list = field(default_factory=list)
    same: list = field(default_factory=list)
    nll: list = field(default_factory=list)
    nll_ref: list = field(default_factory=list)

    def add(self, kld, same, nll, nll_ref) -> None:
        self.kld.append(kld)
        self.same.append(same)
        self.nll.append(nll)
        self.nll_ref.append(nll_ref)

    @property
    def count(self) -> int:
        return int(sum(k.size for k in self.kld))

    def mean_kld(self) -> float:
        return float(np.concatenate(self.kld).mean())

    def summary(self) -> dict:
        k = np.concatenate(self.kld)
        s = np.concatenate(self.same).astype(np.float64)
        q = np.concatenate(self.nll)
        b = np.concatenate(self.nll_ref)
        n = k.size
        kl, kl_err = _mean_err(k)
        lq, lq_err = _mean_err(q)
        lb, lb_err = _mean_err(b)
        cov = (float((q * b).mean()) - lq * lb) / (n - 1) if n > 1 else 0.0
        ratio_err = math.sqrt(max(0.0, lq_err ** 2 + lb_err ** 2 - 2 * cov))
        top = float(s.mean())
        pct = {f"{p:g}": float(np.percentile(k, p)) for p in (99.9, 99, 95, 90, 50, 10, 5, 1)}
        return {"tokens": n, "kld_mean": kl, "kld_err": kl_err, "kld_max": float(k.max()),
                "kld_min": float(k.min()), "kld_median": pct["50"], "kld_percentiles": pct,
                "same_top": top, "same_top_err": math.sqrt(top * (1 - top) / (n - 1)) if n > 1 else 0.0,
                "ppl": math.exp(lq), "ppl_err": math.exp(lq) * lq_err,
                "ppl_ref": math.exp(lb), "ppl_ref_err": math.exp(lb) * lb_err,
                "ln_ppl_ratio": lq - lb, "ln_ppl_ratio_err": ratio_err,
                "ppl_ratio": math.exp(lq - lb), "ppl_ratio_err": math.exp(lq - lb) * ratio_err}

    def report(self) -> str:
        """llama-perplexity's statistics block."""
        d = self.summary()
        p = d["kld_percentiles"]
        lines = ["====== Perplexity statistics ======",
                 f"Mean PPL(Q)                   : {d['ppl']:10.6f} ± {d['ppl_err']:10.6f}",
                 f"Mean PPL(base)                : {d['ppl_ref']:10.6f} ± {d['ppl_ref_err']:10.6f}",
                 f"Mean ln(PPL(Q)/PPL(base))     : {d['ln_ppl_ratio']:10.6f} ± {d['ln_ppl_ratio_err']:10.6f}",
                 f"Mean PPL(Q)/PPL(base)         : {d['ppl_ratio']:10.6f} ± {d['ppl_ratio_err']:10.6f}",
                 "",
                 "====== KL divergence statistics ======",
                 f"Mean    KLD: {d['kld_mean']:10.6f} ± {d['kld_err']:10.6f}",
                 f"Maximum KLD: {d['kld_max']:10.6f}",
                 f"99.9%   KLD: {p['99.9']:10.6f}",
                 f"99.0%   KLD: {p['99']:10.6f}",
                 f"95.0%   KLD: {p['95']:10.6f}",
                 f"90.0%   KLD: {p['90']:10.6f}",
                 f"Median  KLD: {p['50']:10.6f}",
                 f"10.0%   KLD: {p['10']:10.6f}",
                 f" 5.0%   KLD: {p['5']:10.6f}",
                 f" 1.0%   KLD: {p['1']:10.6f}",
                 f"Minimum KLD: {d['kld_min']:10.6f}",
                 "",
                 f"Same top p: {100 * d['same_top']:6.3f} ± {100 * d['same_top_err']:5.3f} %",
                 f"({d['tokens']} scored tokens)"]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# saved reference logits
#
#   "GGQKLREF" | u32 version | u32 header bytes | header JSON (utf-8) | zero padding to 64
#   | int64 tokens (windows, ctx) | zero padding to 64 | float32 logits (windows, ctx - 1 - first, vocab)
#
# header: {"ctx", "first", "windows", "vocab", "bos" (int or null), "model" (its file name)}.
# The logits rows are the reference's float32 output for the scored positions, as computed.

def _pad(n: int) -> int:
    return (-n) % REF_ALIGN


@dataclass
class RefHeader:
    ctx: int
    first: int
    windows: int
    vocab: int
    bos: int | None
    model: str

    @property
    def rows(self) -> int:
        return self.ctx - 1 - self.first

    def layout(self, header_bytes: int) -> tuple[int, int, int]:
        """(tokens offset, logits offset, total file size)."""
        tok_off = 16 + header_bytes
        tok_off += _pad(tok_off)
        log_off = tok_off + 8 * self.windows * self.ctx
        log_off += _pad(log_off)
        return tok_off, log_off, log_off + 4 * self.windows * self.rows * self.vocab


class RefWriter:
    """Streams a reference's logits window by window into a temp file beside `path`, renamed
    into place by close(); abort() (or an exception in a with block) removes it."""

    def __init__(self, path, header: RefHeader):
        self.path = Path(path)
        self.h = header
        self.hjson = json.dumps(header.__dict__).encode()
        self.tok_off, self.log_off, self.size = header.layout(len(self.hjson))
        self.f, self.tmp = temp_beside(self.path)
        self.f.write(REF_MAGIC + struct.pack("<II", REF_VERSION, len(self.hjson)) + self.hjson)
        self.f.write(b"\0" * (self.tok_off - self.f.tell()))
        self.n = 0
        self.tokens = []

    def add(self, tokens: np.ndarray, logits_rows: np.ndarray) -> None:
        if logits_rows.shape != (self.h.rows, self.h.vocab) or tokens.shape != (self.h.ctx,):
            raise UsageError(f"reference window of shape {logits_rows.shape}, expected {(self.h.rows, self.h.vocab)}")
        if self.n >= self.h.windows:
            raise UsageError("more reference windows than declared")
        self.tokens.append(np.asarray(tokens, np.int64))
        # logits go after all tokens: keep the file position there, tokens are written at close
        if self.n == 0:
            self.f.seek(self.log_off)
        self.f.write(np.ascontiguousarray(logits_rows, dtype="<f4").tobytes())
        self.n += 1

    def close(self) -> Path:
        if self.n != self.h.windows:
            self.abort()
            raise UsageError(f"{self.path}: {self.n} of {self.h.windows} reference windows written")
        self.f.seek(self.tok_off)
        self.f.write(np.stack(self.tokens).astype("<i8").tobytes())
        return publish(self.f, self.tmp, self.path)

    def abort(self) -> None:
        discard(self.f, self.tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is not None:
            self.abort()
        return False


class RefReader:
    """A saved reference: .header (RefHeader), .tokens (windows, ctx), .logits(w) -> (rows, vocab)."""

    def __init__(self, path):
        self.path = Path(path)
        name = self.path.name
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                head = f.read(16)
                if len(head) < 16 or head[:8] != REF_MAGIC:
                    raise UsageError(f"{name}: not a ggq KLD reference file (no {REF_MAGIC.decode()} magic)")
                version, hlen = struct.unpack("<II", head[8:])
                if version != REF_VERSION:
                    raise UsageError(f"{name}: reference file version {version}, this ggq reads {REF_VERSION}")
                if hlen > min(size, 1 << 20):
                    raise UsageError(f"{name}: header length {hlen} exceeds the file")
                raw = f.read(hlen)
        except OSError as e:
            raise UsageError(f"{name}: cannot read ({e.strerror or e})") from None
        try:
            d = json.loads(raw.decode())
            h = RefHeader(int(d["ctx"]), int(d["first"]), int(d["windows"]), int(d["vocab"]),
                          None if d["bos"] is None else int(d["bos"]), str(d["model"]))
        except (ValueError, KeyError, TypeError) as e:
            raise UsageError(f"{name}: bad reference header ({e})") from None
        if not (4 <= h.ctx <= 1 << 20 and 0 <= h.first < h.ctx - 1 and 1 <= h.windows <= 1 << 24
                and 1 <= h.vocab <= 1 << 24):
            raise UsageError(f"{name}: implausible reference header {d}")
        tok_off, log_off, total = h.layout(hlen)
        if total != size:
            raise UsageError(f"{name}: file is {size} bytes, its header describes {total}")
        self.header = h
        self.tokens = np.memmap(self.path, dtype="<i8", mode="r", offset=tok_off, shape=(h.windows, h.ctx))
        self._logits = np.memmap(self.path, dtype="<f4", mode="r", offset=log_off,
                                 shape=(h.windows, h.rows, h.vocab))

    def logits(self, w: int) -> np.ndarray:
        return self._logits[w]


# ---------------------------------------------------------------------------------------------
# the whole evaluation

def model_windows(m, text: str, ctx: int, chunks: int | None) -> list[np.ndarray]:
    bos = m.tokenizer.bos_id if m.tokenizer.add_bos else None
    toks = np.asarray(m.tokenizer.encode(text), dtype=np.int64)
    wins = text_windows(toks, ctx, bos, chunks)
    if not wins:
        raise UsageError(f"the text is {len(toks)} tokens, fewer than one window of {ctx}")
    return wins


def check_same_vocab(a, b, name_a: str, name_b: str) -> None:
    va, vb = a.llama.vocab_size, b.llama.vocab_size
    if va != vb:
        raise UsageError(f"{name_a} has {va} tokens in its vocabulary, {name_b} {vb}: not the same model")


def evaluate(model, ref=None, ref_file=None, text: str = "", ctx: int = 512, chunks: int | None = None,
             protocol: str = "half", save_ref=None, on_window=None) -> KLDResult:
    """KLD of `model` (a loaded ggq.Model) from `ref` (a loaded ggq.Model) or `ref_file` (a saved
    reference path). save_ref: also write the reference's logits there (ref must be a model).
    on_window(i, n, result) is called after each window."""
    if (ref is None) == (ref_file is None):
        raise UsageError("give one reference: a model or a saved reference file")
    res = KLDResult()
    if ref_file is not None:
        rr = RefReader(ref_file)
        h = rr.header
        if ctx != h.ctx or first_scored(protocol, ctx) != h.first:
            raise UsageError(f"{Path(ref_file).name} was saved with -c {h.ctx} scoring from row {h.first}; "
                             f"this run asks for -c {ctx} scoring from row {first_scored(protocol, ctx)}")
        if model.llama.vocab_size != h.vocab:
            raise UsageError(f"{Path(ref_file).name} has {h.vocab} logits per token, the model {model.llama.vocab_size}")
        wins = model_windows(model, text, ctx, None)
        n = h.windows if chunks is None else min(chunks, h.windows)
        if len(wins) < n or any(not np.array_equal(wins[w], rr.tokens[w]) for w in range(n)):
            raise UsageError(f"{Path(ref_file).name}: its tokens differ from this text's (another text or tokenizer)")
        for w in range(n):
            lq = model.logits(wins[w])
            res.add(*compare_logits(lq[h.first:-1], np.asarray(rr.logits(w)), wins[w][h.first + 1:]))
            if on_window:
                on_window(w, n, res)
        return res
    check_same_vocab(model, ref, "the model", "the reference")
    first = first_scored(protocol, ctx)
    wins = model_windows(model, text, ctx, chunks)
    wins_ref = model_windows(ref, text, ctx, chunks)
    if len(wins) != len(wins_ref) or any(not np.array_equal(a, b) for a, b in zip(wins, wins_ref)):
        raise UsageError("the model and the reference tokenize the text differently: not the same vocabulary")
    writer = None
    if save_ref is not None:
        writer = RefWriter(save_ref, RefHeader(ctx, first, len(wins), ref.llama.vocab_size,
                                               ref.tokenizer.bos_id if ref.tokenizer.add_bos else None,
                                               ref.path.name))
    try:
        for w, win in enumerate(wins):
            lr = ref.logits(win)[first:-1]
            if writer is not None:
                writer.add(win, lr)
            lq = model.logits(win)[first:-1]
            res.add(*compare_logits(lq, lr, win[first + 1:]))
            if on_window:
                on_window(w, len(wins), res)
        if writer is not None:
            writer.close()
            writer = None
    finally:
        if writer is not None:
            writer.abort()
    return res


def ref_file_size(windows: int, ctx: int, first: int, vocab: int) -> int:
    return RefHeader(ctx, first, windows, vocab, None, "").layout(200)[2]
