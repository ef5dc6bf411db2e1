"""Where a decode token's time goes: kernel arithmetic against everything around it.

    python tools/decode_profile.py FILE.ggq [FILE.ggq ...] [-t 2] [-n 64] [-r 3]

For each file, one token per forward pass (as `ggq bench`'s tg test):
- step: wall time of one decode forward, median over r rounds of n tokens (after a warm-up),
  positions 8 .. 8+n (a short random prompt first).
- matvec sweep: the same matvec kernels (ggq.kernels.MATVEC, one per weight type) called with
  the same weights, in the order of one token (every layer matrix, then the output matrix),
  back to back from a precomputed list; median over repeats. This still pays one Numba
  dispatch and one parallel-region launch per call.
- launch floor: the same kernels on a tiny matrix (one block per row, NR rows) in a tight loop:
  the per-call cost of dispatch + region launch with almost no arithmetic; times the calls.
- kernel = sweep - floor x calls: the matvec arithmetic of a token (fixed by the kernels, not by
  how the engine calls them). overhead = step - kernel: everything else (Python, dispatch,
  launches, small kernels, attention, norms, allocation). Attention and norms are small at
  these positions and are counted as overhead on purpose: they are what fusing removes.
- empty: the step again with every matvec kernel replaced by one that only zeroes its output
  (serial, no parallel region): the engine's own cost around the matvecs (Python, dispatch,
  norms, attention) without their arithmetic and region launches. Steadier than overhead.

The machine is shared and noisy: compare runs made close together, look at medians.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from numba import njit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ggq  # noqa: E402
from ggq.kernels import BLOCK, MATVEC  # noqa: E402
from ggq.kernels.common import NR  # noqa: E402
from ggq.runtime.linear import _prep_w  # noqa: E402


def step_times(model, n: int, rounds: int, seed: int = 0) -> list[float]:
    """Seconds per decode forward, every step of every round."""
    lm = model.llama
    rng = np.random.default_rng(seed)
    start = 8
    out = []
    lm.forward(rng.integers(0, lm.vocab_size, size=start), 0)
    for r in range(rounds + 1):  # round 0 warms up
        toks = rng.integers(0, lm.vocab_size, size=n)
        for i in range(n):
            t0 = time.perf_counter()
            lm.forward(toks[i:i + 1], start + i)
            dt = time.perf_counter() - t0
            if r:
                out.append(dt)
    return out


def token_matrices(lm):
    """The weight matrices one decode token multiplies by, in order."""
    for L in lm.layers:
        for f in lm.MATRIX_FIELDS:
            yield getattr(L, f)
    yield lm.output


def _kernel(name):
    if name == "F32":
        return lambda w, x, y: np.matmul(w, x, out=y)
    return MATVEC[name]


def sweep_calls(lm, seed: int = 1):
    rng = np.random.default_rng(seed)
    calls = []
    for m in token_matrices(lm):
        name = m.qtype.name.upper()
        w = _prep_w(name, m.raw, m.cols)
        x = rng.standard_normal(m.cols).astype(np.float32)
        y = np.empty(w.shape[0], np.float32)
        calls.append((_kernel(name), w, x, y))
    return calls


def time_sweep(calls, repeats: int) -> list[float]:
    ts = []
    for r in range(repeats + 2):
        t0 = time.perf_counter()
        for f, w, x, y in calls:
            f(w, x, y)
        dt = time.perf_counter() - t0
        if r >= 2:
            ts.append(dt)
    return ts


def launch_floor(name: str, loops: int = 500) -> float:
    """Seconds per call of the type's matvec kernel on NR rows of one block each."""
    bs, ts = BLOCK[name]
    cols = bs if bs > 1 else 32
    w = np.zeros((NR, cols // bs * ts), np.uint8)
    w = _prep_w(name, w, cols)
    x = np.ones(cols, np.float32)
    y = np.empty(NR, np.float32)
    f = _kernel(name)
    f(w, x, y)
    best = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(loops):
            f(w, x, y)
        best.append((time.perf_counter() - t0) / loops)
    return statistics.median(best)


@njit(cache=True)
def _zero_matvec(w, x, y):
    for i in range(y.size):
        y[i] = 0.0


def empty_step_times(path: str, threads: int, n: int, rounds: int) -> list[float]:
    """step_times of a model loaded while MATVEC holds _zero_matvec for every type."""
    saved = dict(MATVEC)
    for k in saved:
        MATVEC[k] = _zero_matvec
    try:
        model = ggq.load(path, n_ctx=max(256, n + 16), threads=threads, log=None)
        try:
            return step_times(model, n, rounds)
        finally:
            model.close()
    finally:
        MATVEC.update(saved)


def profile(path: str, threads: int, n: int, rounds: int, repeats: int) -> dict:
    """Rounds alternate the step timing, the sweep and the floors, so that the machine's load
    changes hit all three alike."""
    model = ggq.load(path, n_ctx=max(256, n + 16), threads=threads, log=None)
    try:
        lm = model.llama
        calls = sweep_calls(lm)
        names = [m.qtype.name.upper() for m in token_matrices(lm)]
        steps, sweep, floor_s, floors = [], [], [], {k: [] for k in set(names)}
        step_times(model, 8, 0, seed=99)  # compile and warm up
        time_sweep(calls, 1)
        for r in range(rounds):
            steps += step_times(model, n, 1, seed=r)
            sweep += time_sweep(calls, repeats)
            fl = {k: launch_floor(k) for k in floors}
            for k, v in fl.items():
                floors[k].append(v)
            floor_s.append(sum(fl[nm] for nm in names))
        step = statistics.median(steps)
        sw = statistics.median(sweep)
        kern = max(sw - statistics.median(floor_s), 0.0)
        return {"file": Path(path).name, "step_ms": step * 1e3, "step_p10_ms": np.percentile(steps, 10) * 1e3,
                "step_p90_ms": np.percentile(steps, 90) * 1e3, "tok_s": 1 / step,
                "sweep_ms": sw * 1e3, "calls": len(calls),
                "floor_us": {k: statistics.median(v) * 1e6 for k, v in floors.items()},
                "kernel_ms": kern * 1e3, "overhead_ms": (step - kern) * 1e3,
                "overhead_pct": 100 * (step - kern) / step,
                "empty_ms": statistics.median(empty_step_times(path, threads, n, rounds)) * 1e3}
    finally:
        model.close()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-n", "--n-gen", type=int, default=64, help="decode tokens per round")
    ap.add_argument("-r", "--rounds", type=int, default=3, help="rounds of n tokens (after one warm-up)")
    ap.add_argument("--repeats", type=int, default=32, help="matvec sweeps timed")
    a = ap.parse_args(argv)
    print("| file | ms/token (p10-p90) | tok/s | matvec sweep ms (calls) | launch floor µs/call "
          "| kernel ms | overhead ms | overhead % | empty ms |")
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|")
    for f in a.files:
        r = profile(f, a.threads, a.n_gen, a.rounds, a.repeats)
        fl = ", ".join(f"{k} {v:.1f}" for k, v in sorted(r["floor_us"].items()))
        print(f"| {r['file']} | {r['step_ms']:.2f} ({r['step_p10_ms']:.2f}-{r['step_p90_ms']:.2f}) "
              f"| {r['tok_s']:.1f} | {r['sweep_ms']:.2f} ({r['calls']}) | {fl} | {r['kernel_ms']:.2f} "
              f"| {r['overhead_ms']:.2f} | {r['overhead_pct']:.0f} | {r['empty_ms']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
