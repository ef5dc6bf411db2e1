"""Token sampling with llama.cpp's semantics and order:

    repetition penalty -> top-k -> top-p -> min-p -> temperature -> draw

- repetition penalty (over the last `repeat_last_n` tokens, each distinct token once):
  logit / p if logit > 0 else logit * p; 1.0 disables.
- top-k: keep the k largest logits (0 disables). top-p: keep the smallest prefix of the sorted
  candidates whose probability mass reaches p (1.0 disables). min-p: keep tokens whose probability
  is at least min_p times the largest (0 disables). Both computed before temperature, as llama.cpp.
- temperature 0: greedy (argmax after the penalty).
- the draw uses a numpy Generator seeded once, and nothing here depends on thread count, so the
  same seed gives the same tokens.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import UsageError


def _top_k(x: np.ndarray, k: int) -> np.ndarray | None:
    """The ids of a superset of x's k largest values (every id whose value ties the k-th
    largest included), in a few passes over x instead of a selection over it: the smallest of
    the maxima of k disjoint slices is at most the k-th largest value (k values reach it), so
    the ids at or above it hold the top k; on logits they are a few hundred. None when x holds
    NaN (the caller then takes every id)."""
    n = x.shape[0] // k * k
    bound = x[:n].reshape(k, -1).max(axis=1).min()
    ids = np.flatnonzero(x >= bound)
    return ids if ids.shape[0] >= k else None


class Sampler:
    def __init__(self, temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95,
                 min_p: float = 0.05, repeat_penalty: float = 1.0, repeat_last_n: int = 64,
                 seed: int | None = None):
        def num(name, v):
            try:
                f = float(v)
            except (TypeError, ValueError):
                raise UsageError(f"{name} must be a number (got {v!r})") from None
            if not math.isfinite(f):
                raise UsageError(f"{name} must be finite (got {v!r})")
            return f

        self.temperature = num("temperature", temperature)
        if self.temperature < 0:
            raise UsageError(f"temperature must be >= 0 (got {temperature}); 0 means greedy")
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
            raise UsageError(f"top-k must be an integer >= 0 (got {top_k!r}); 0 disables it")
        self.top_k = int(top_k)
        self.top_p = num("top-p", top_p)
        if not 0.0 < self.top_p <= 1.0:
            raise UsageError(f"top-p must be in (0, 1] (got {top_p}); 1 disables it")
        self.min_p = num("min-p", min_p)
        if not 0.0 <= self.min_p <= 1.0:
            raise UsageError(f"min-p must be in [0, 1] (got {min_p}); 0 disables it")
        self.repeat_penalty = num("repeat-penalty", repeat_penalty)
        if self.repeat_penalty <= 0:
            raise UsageError(f"repeat-penalty must be > 0 (got {repeat_penalty}); 1 disables it")
        if isinstance(repeat_last_n, bool) or not isinstance(repeat_last_n, (int, np.integer)) or repeat_last_n < 0:
            raise UsageError(f"repeat-last-n must be an integer >= 0 (got {repeat_last_n!r})")
        self.repeat_last_n = int(repeat_last_n)
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
                raise UsageError(f"seed must be an integer >= 0 (got {seed!r})")
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def penalize(self, logits: np.ndarray, history) -> np.ndarray:
        """Copy of logits (float64) with the repetition penalty applied."""
        out = np.array(logits, dtype=np.float64).reshape(-1)
        if self._penalty_applies(history):
            recent = np.unique(np.asarray(history[-self.repeat_last_n:], dtype=np.int64))
            recent = recent[(recent >= 0) & (recent < out.shape[0])]
            v = out[recent]
            out[recent] = np.where(v > 0, v / self.repeat_penalty, v * self.repeat_penalty)
        return out

    def candidates(self, logits: np.ndarray, history=()) -> tuple[np.ndarray, np.ndarray]:
        """(ids, probabilities) left after penalty, top-k, top-p, min-p and temperature,
        sorted by decreasing logit (ties by id; top-k keeps the first k in that order).
        Greedy returns the single argmax."""
        if self._penalty_applies(history):
            x = self.penalize(logits, history)
        else:
            # the logits as they are (float32): widening to float64 changes no order, and only
            # the few candidates left are widened for the probabilities below
            x = np.asarray(logits).reshape(-1)
        if self.greedy:
            i = int(np.argmax(x))
            return np.array([i]), np.array([1.0])
        V = x.shape[0]
        ids = _top_k(x, self.top_k) if 0 < self.top_k < V else None
        if ids is None:
            ids = np.arange(V)
        ids = ids[np.lexsort((ids, -x[ids]))]
        if 0 < self.top_k < V:
            ids = ids[:self.top_k]
        lg = x[ids].astype(np.float64)
        if self.top_p < 1.0:
            p = np.exp(lg - lg[0])
            p /= p.sum()
            cum = np.cumsum(p)
            keep = int(np.searchsorted(cum, self.top_p, side="left")) + 1  # first index with cum >= p
            ids, lg = ids[:keep], lg[:keep]
        if self.min_p > 0.0:
            keep = lg >= lg[0] + math.log(self.min_p)
            ids, lg = ids[keep], lg[keep]
        p = np.exp((lg - lg[0]) / self.temperature)
        return ids, p / p.sum()

    def _penalty_applies(self, history) -> bool:
        return self.repeat_penalty != 1.0 and self.repeat_last_n > 0 and len(history) > 0

    def __call__(self, logits: np.ndarray, history=()) -> int:
        if self.greedy and not self._penalty_applies(history):
            # argmax of the logits as they are: the float64 copy penalize() makes changes no
            # order (every float32 is a float64), and a decode step then saves that copy
            return int(np.argmax(np.asarray(logits).reshape(-1)))
        ids, p = self.candidates(logits, history)
        if ids.shape[0] == 1:
            return int(ids[0])
        cum = np.cumsum(p)
        r = self.rng.random() * cum[-1]
        return int(ids[min(int(np.searchsorted(cum, r, side="right")), ids.shape[0] - 1)])
