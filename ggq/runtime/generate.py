"""The generation loop: prompt in batches, then one token at a time with the sampler."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..errors import UsageError

N_BATCH = 512  # prompt tokens per forward call (bounds scratch memory)


@dataclass
class Stats:
    load_s: float = 0.0
    prompt_tokens: int = 0
    prompt_s: float = 0.0
    gen_tokens: int = 0
    decode_steps: int = 0        # tokens sampled after the first one
    decode_s: float = 0.0        # wall time from the first sampled token to the last: forward
                                 # passes, sampling, and whatever the caller does with each token
    first_token_s: float = 0.0  # from generate() call to the first sampled token
    stop: str = ""               # "eos", "length" or "context"

    @property
    def prompt_tps(self) -> float:
        return self.prompt_tokens / self.prompt_s if self.prompt_s > 0 else 0.0

    @property
    def gen_tps(self) -> float:
        # the first token comes from the prompt pass; the rate counts the tokens after it, over
        # the wall time they took (what a user sees, not only the forward passes)
        return self.decode_steps / self.decode_s if self.decode_s > 0 else 0.0

    def summary(self) -> str:
        return (f"load {self.load_s * 1000:.0f} ms | prompt {self.prompt_tokens} tok, "
                f"{self.prompt_tps:.1f} tok/s | generated {self.gen_tokens} tok, "
                f"{self.gen_tps:.1f} tok/s | first token {self.first_token_s * 1000:.0f} ms")


def prefill(llama, ids, start_pos: int = 0, all_logits: bool = False, n_batch: int = N_BATCH) -> np.ndarray:
    """Evaluate ids from start_pos in batches; logits of every position or only the last."""
    ids = np.asarray(ids, dtype=np.int64)
    outs = []
    for s in range(0, len(ids), n_batch):
        chunk = ids[s:s + n_batch]
        last = s + n_batch >= len(ids)
        if all_logits or last:
            outs.append(llama.forward(chunk, start_pos + s, all_logits=all_logits))
        else:
            llama.forward(chunk, start_pos + s, all_logits=False)
    return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=0)


def check_max_tokens(max_tokens) -> int:
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, (int, np.integer)) or max_tokens < -1:
        raise UsageError(f"max-tokens must be an integer >= 0, or -1 for 'until the context is full' (got {max_tokens!r})")
    return int(max_tokens)


def token_budget(n: int, n_ctx: int, max_tokens) -> tuple[int, int]:
    """(max_tokens checked, how many tokens may be generated after a prompt of n tokens), or a
    UsageError for an empty prompt or one that leaves no room in the context."""
    if n == 0:
        raise UsageError("the prompt is empty (no tokens)")
    if n >= n_ctx:
        raise UsageError(f"the prompt is {n} tokens but the context holds {n_ctx} "
                         f"(with room for at least one generated token); use a larger --ctx-size")
    max_tokens = check_max_tokens(max_tokens)
    return max_tokens, n_ctx - n if max_tokens < 0 else min(max_tokens, n_ctx - n)


def decode_loop(step, logits, history: list, sampler, budget: int, max_tokens: int, stop_ids, stats: Stats,
                t0: float, cancelled=None):
    """Sample from logits, feed each token back with step(token, position) -> next logits, up to
    budget tokens (positions from len(history) on); a stop id ends it (not yielded). Keeps the
    timing in stats (t0: when the prompt pass began). cancelled(): checked after each token;
    True ends generation with stats.stop == "cancelled". generate_ids and runtime.session share it."""
    pos = len(history)
    t_prev = 0.0
    for i in range(budget):
        tok = sampler(logits, history)
        now = time.perf_counter()
        if i == 0:
            stats.first_token_s = now - t0
        else:
            stats.decode_s += now - t_prev
            stats.decode_steps += 1
        t_prev = now
        if tok in stop_ids:
            stats.stop = "eos"
            return
        history.append(tok)
        stats.gen_tokens += 1
        yield tok
        if cancelled is not None and cancelled():
            stats.stop = "cancelled"
            return
        if i + 1 == budget:
            break
        logits = step(tok, pos)
        pos += 1
    stats.stop = "length" if budget == max_tokens else "context"


def generate_ids(llama, ids, sampler, max_tokens: int, stop_ids=frozenset(), stats: Stats | None = None):
    """Yield sampled token ids after the prompt ids (a stop id ends generation, not yielded)."""
    stats = stats if stats is not None else Stats()
    n = len(ids)
    max_tokens, budget = token_budget(n, llama.n_ctx, max_tokens)
    stats.prompt_tokens = n
    t0 = time.perf_counter()
    if budget == 0:
        stats.stop = "length"
        return
    logits = prefill(llama, ids)[-1]
    stats.prompt_s = time.perf_counter() - t0
    yield from decode_loop(lambda tok, pos: llama.forward([tok], pos)[-1], logits, [int(i) for i in ids],
                           sampler, budget, max_tokens, stop_ids, stats, t0)
