"""A KV-cache session over a loaded model, with prefix reuse.

The model's KV cache holds one sequence. A Session remembers which token sits at each cache
position (`tokens`), so that a new prompt that starts like the previous sequence (a chat that
goes on, a server request that repeats a system prompt) evaluates only from the first position
where they differ. The last prompt token is always evaluated again, since the next token's
logits come from it. forward(tokens, start_pos) overwrites the cache from start_pos on and never
reads beyond start_pos + n, so positions past `len(tokens)` may hold stale K/V harmlessly.

Invariant: for i < len(tokens), cache position i holds the K/V of tokens[i]. Before each forward
call the list is cut to its start position and extended only after the call returns, so an
exception (or an interrupt) in the middle of a pass never leaves a position claimed that the
pass may have half-written.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..errors import UsageError
from .generate import N_BATCH, Stats, decode_loop, token_budget
from .sampler import Sampler


@dataclass
class TurnStats(Stats):
    """generate.Stats plus what prefix reuse saved. prompt_tokens counts the whole prompt,
    prompt_evaluated the tokens actually run (prompt_s is their time)."""
    prompt_reused: int = 0
    prompt_evaluated: int = 0

    @property
    def prompt_tps(self) -> float:
        return self.prompt_evaluated / self.prompt_s if self.prompt_s > 0 else 0.0


class PenaltySampler(Sampler):
    """Sampler plus OpenAI's additive penalties, applied as llama.cpp's penalties sampler does:
    after the multiplicative repeat penalty and over the same window (the last repeat_last_n
    tokens of prompt and output): logit -= count * frequency_penalty + (count > 0) * presence_penalty."""

    def __init__(self, *, frequency_penalty: float = 0.0, presence_penalty: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        for name, v in (("frequency_penalty", frequency_penalty), ("presence_penalty", presence_penalty)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not -2.0 <= float(v) <= 2.0:
                raise UsageError(f"{name} must be a number in [-2, 2] (got {v!r})")
        self.frequency_penalty = float(frequency_penalty)
        self.presence_penalty = float(presence_penalty)

    def _additive(self, history) -> bool:
        return bool(self.frequency_penalty or self.presence_penalty) and self.repeat_last_n > 0 and len(history) > 0

    def _penalty_applies(self, history) -> bool:
        # Sampler skips penalize() (greedy argmax on the raw logits) unless this says a penalty applies
        return super()._penalty_applies(history) or self._additive(history)

    def penalize(self, logits, history):
        out = super().penalize(logits, history)
        if self._additive(history):
            recent = np.asarray(history[-self.repeat_last_n:], dtype=np.int64)
            recent = recent[(recent >= 0) & (recent < out.shape[0])]
            ids, counts = np.unique(recent, return_counts=True)
            out[ids] -= counts * self.frequency_penalty + self.presence_penalty
        return out


class Session:
    """One conversation's (or one server's) view of a model's KV cache."""

    def __init__(self, llama, n_batch: int = N_BATCH):
        self.llama = llama
        self.n_ctx = int(llama.n_ctx)
        self.n_batch = int(n_batch)
        self.tokens: list[int] = []

    def reset(self) -> None:
        """Forget the cache contents (the next prompt is evaluated from position 0)."""
        self.tokens = []

    def reusable(self, ids) -> int:
        """How many leading tokens of ids the cache already holds (at most len(ids) - 1, since
        the last prompt token must run to give logits)."""
        n = min(len(self.tokens), len(ids) - 1)
        i = 0
        while i < n and self.tokens[i] == ids[i]:
            i += 1
        return max(i, 0)

    def _forward(self, ids, start: int) -> np.ndarray:
        """ids at positions start.. in batches of n_batch; logits (1, vocab) of the last one."""
        del self.tokens[start:]
        logits = None
        for s in range(0, len(ids), self.n_batch):
            chunk = ids[s:s + self.n_batch]
            logits = self.llama.forward(np.asarray(chunk, dtype=np.int64), start + s)
            self.tokens.extend(int(t) for t in chunk)
        return logits

    def prefill(self, ids, reuse: bool = True) -> tuple[np.ndarray, int]:
        """Bring the cache to ids; returns (logits of the last token, tokens reused)."""
        ids = [int(t) for t in ids]
        if not ids:
            raise UsageError("the prompt is empty (no tokens)")
        if len(ids) > self.n_ctx:
            raise UsageError(f"the prompt is {len(ids)} tokens but the context holds {self.n_ctx}")
        keep = self.reusable(ids) if reuse else 0
        return self._forward(ids[keep:], keep)[-1], keep

    def generate(self, ids, sampler: Sampler, max_tokens: int = -1, stop_ids=frozenset(),
                 stats: TurnStats | None = None, cancelled=None, reuse: bool = True):
        """Yield sampled token ids after the prompt ids, like runtime.generate.generate_ids (a
        stop id ends generation and is not yielded; max_tokens -1: until the context is full),
        reusing the cached prefix. cancelled(): checked before the prompt pass and after each
        token; True ends generation with stats.stop == "cancelled". The cache keeps the prompt
        and every token fed back, so the next call can reuse them."""
        stats = stats if stats is not None else TurnStats()
        ids = [int(t) for t in ids]
        n = len(ids)
        max_tokens, budget = token_budget(n, self.n_ctx, max_tokens)
        stats.prompt_tokens = n
        if budget == 0:
            stats.stop = "length"
            return
        if cancelled is not None and cancelled():
            stats.stop = "cancelled"
            return
        t0 = time.perf_counter()
        logits, stats.prompt_reused = self.prefill(ids, reuse)
        stats.prompt_evaluated = n - stats.prompt_reused
        stats.prompt_s = time.perf_counter() - t0
        yield from decode_loop(lambda tok, pos: self._forward([tok], pos)[-1], logits, ids, sampler, budget,
                               max_tokens, stop_ids, stats, t0, cancelled)
