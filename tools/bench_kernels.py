"""Benchmark the weight kernels (ggq.runtime.linear) on model-sized shapes.

    python tools/bench_kernels.py [-t THREADS] [-r REPEATS] [--types Q8_0,Q5_0,...] [--no-cold]

- decode: one matrix-vector product over a whole model's worth of weights (SmolLM2-135M:
  30 layers of q,k,v,o,gate,up,down + the 49152x576 output = 134.5M weights, 211 calls),
  reported as tokens/s if that were the whole model, and GB/s of weight bytes streamed.
  k-quant rows must be multiples of 256, so they use 576x1536 matrices (same total weights).
- gemma3 out: one matvec with Gemma 3 270M's tied output projection, 262144 x 640 (types
  with 32-element blocks); on AVX512-VNNI hosts also the generic (non-VNNI) kernel.
- k-quants: one matvec of 640 x 1024 (Gemma 3 attn_output), 640 x 2048 (ffn_down) and
  16384 x 4096, same generic line.
- batch: a 128-token batch through the 1536x576 and 576x1536 matrices, GFLOP/s (2*n*rows*cols).
- baselines: NumPy float32 matvec / matmul on the same shapes.
- cold compile: a fresh process with an empty NUMBA_CACHE_DIR compiles one type's kernels.
Best of R repeats (the machine is shared; take the best).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

# bytes per block, elements per block, offsets of fp16 fields inside a block
INFO = {"Q2_K": (84, 256, (80, 82)), "Q3_K": (110, 256, (108,)), "Q4_K": (144, 256, (0, 2)),
        "Q5_K": (176, 256, (0, 2)), "Q6_K": (210, 256, (208,)),
        "Q8_0": (34, 32, (0,)), "Q4_0": (18, 32, (0,)), "Q4_1": (20, 32, (0, 2)),
        "Q5_0": (22, 32, (0,)), "Q5_1": (24, 32, (0, 2)), "F16": (2, 1, ()), "BF16": (2, 1, ()),
        "F32": (4, 1, ())}


def random_weights(name, rows, cols, rng):
    """Valid random blocks: random bytes with small finite fp16 scale fields."""
    nbytes, bs, f16o = INFO[name]
    if name == "F32":
        return rng.standard_normal((rows, cols), dtype=np.float32).view(np.uint8)
    if name == "F16":
        return rng.standard_normal((rows, cols), dtype=np.float32).astype(np.float16).view(np.uint8)
    if name == "BF16":
        return (rng.standard_normal((rows, cols), dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    nb = cols // bs
    w = rng.integers(0, 256, size=(rows, nb, nbytes), dtype=np.uint8)
    for o in f16o:
        w[:, :, o:o + 2] = (rng.random((rows, nb), dtype=np.float32) * 0.01 + 0.001
                            ).astype(np.float16).view(np.uint8).reshape(rows, nb, 2)
    w = np.ascontiguousarray(w.reshape(rows, nb * nbytes))
    w.flags.writeable = False
    return w


def model_shapes(name):
    if INFO[name][1] == 256:
        return [(576, 1536)] * 152  # 134.5M weights with 256-divisible rows
    sh = []
    for _ in range(30):
        sh += [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]
    return sh + [(49152, 576)]


def bench_decode(name, reps, rng):
    from ggq.runtime.linear import linear
    sh = model_shapes(name)
    ws = [random_weights(name, r, c, rng) for r, c in sh]
    xs = {c: rng.standard_normal((1, c), dtype=np.float32) for c in {c for _, c in sh}}
    outs = [np.empty((1, r), np.float32) for r, _ in sh]
    linear(name, ws[0], sh[0][1], xs[sh[0][1]], out=outs[0])  # compile / load
    best = 1e9
    for _ in range(reps):
        t = time.perf_counter()
        for w, (r, c), o in zip(ws, sh, outs):
            linear(name, w, c, xs[c], out=o)
        best = min(best, time.perf_counter() - t)
    nbytes = sum(w.nbytes for w in ws)
    nw = sum(r * c for r, c in sh)
    return 1 / best, nbytes / best / 1e9, nw


def bench_big(name, reps, rng, rows=262144, cols=640):
    """(ms, GB/s) per matvec of a rows x cols matrix: linear(), and the generic kernel where
    MATVEC holds the VNNI one (legacy and k-quant types)."""
    from ggq.kernels import kquants, legacy
    from ggq.runtime.linear import linear
    w = random_weights(name, rows, cols, rng)
    x = rng.standard_normal((1, cols), dtype=np.float32)
    out = np.empty((1, rows), np.float32)
    runs = {"": lambda: linear(name, w, cols, x, out=out)}
    mod = kquants if name in kquants.MATVEC else legacy
    gen = mod.MATVEC_GENERIC.get(name)
    if gen is not None and gen is not mod.MATVEC[name]:
        runs[" generic"] = lambda: gen(w, x[0], out[0])
    res = {}
    for f in runs.values():
        f()
    times = {k: [] for k in runs}
    for _ in range(reps):  # alternate, so a busy moment hits both
        for k, f in runs.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    for k, ts in times.items():
        res[k] = (min(ts) * 1e3, w.nbytes / min(ts) / 1e9)
    return res


def bench_numpy_decode(reps, rng):
    sh = model_shapes("Q8_0")
    ws = [rng.standard_normal((r, c), dtype=np.float32) for r, c in sh]
    xs = {c: rng.standard_normal((1, c), dtype=np.float32) for c in (576, 1536)}
    best = 1e9
    for _ in range(reps):
        t = time.perf_counter()
        for w, (r, c) in zip(ws, sh):
            xs[c] @ w.T
        best = min(best, time.perf_counter() - t)
    return 1 / best, sum(w.nbytes for w in ws) / best / 1e9


def bench_batch(name, reps, rng, n=128):
    from ggq.runtime.linear import linear
    bs = INFO[name][1]
    sh = [(1536, 576), (576, 1536)] if bs != 256 else [(1536, 768), (576, 1536)]
    ws = [random_weights(name, r, c, rng) for r, c in sh]
    xs = [rng.standard_normal((n, c), dtype=np.float32) for _, c in sh]
    outs = [np.empty((n, r), np.float32) for r, _ in sh]
    for w, (r, c), x, o in zip(ws, sh, xs, outs):
        linear(name, w, c, x, out=o)
    best = 1e9
    for _ in range(reps):
        t = time.perf_counter()
        for w, (r, c), x, o in zip(ws, sh, xs, outs):
            linear(name, w, c, x, out=o)
        best = min(best, time.perf_counter() - t)
    flops = sum(2 * n * r * c for r, c in sh)
    return flops / best / 1e9


def bench_numpy_batch(reps, rng, n=128):
    sh = [(1536, 576), (576, 1536)]
    ws = [rng.standard_normal((r, c), dtype=np.float32) for r, c in sh]
    xs = [rng.standard_normal((n, c), dtype=np.float32) for _, c in sh]
    best = 1e9
    for _ in range(reps):
        t = time.perf_counter()
        for w, x in zip(ws, xs):
            x @ w.T
        best = min(best, time.perf_counter() - t)
    return sum(2 * n * r * c for r, c in sh) / best / 1e9


COLD = r"""
import time, numpy as np, sys
sys.path.insert(0, {tools!r})
from bench_kernels import random_weights
t0 = time.perf_counter()
from ggq.runtime.linear import linear
t1 = time.perf_counter()
rng = np.random.default_rng(0)
name = {name!r}
cols = 256 if name.endswith("_K") else 64
w = random_weights(name, 8, cols, rng)
linear(name, w, cols, rng.standard_normal((1, cols), dtype=np.float32))
t2 = time.perf_counter()
linear(name, w, cols, rng.standard_normal((3, cols), dtype=np.float32))
t3 = time.perf_counter()
print(f"{{t1-t0:.2f}} {{t2-t1:.2f}} {{t3-t2:.2f}}")
"""


def cold_compile(name, threads):
    """(import, matvec, batch) seconds in fresh processes: empty cache, then warm cache."""
    res = {}
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, NUMBA_CACHE_DIR=d, NUMBA_NUM_THREADS=str(threads))
        code = COLD.format(tools=os.path.dirname(os.path.abspath(__file__)), name=name)
        for label in ("cold", "warm"):
            out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                 text=True, check=True).stdout.split()
            res[label] = tuple(float(v) for v in out)
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-r", "--repeats", type=int, default=5)
    ap.add_argument("--types", default="Q8_0,Q5_0,Q4_K,Q6_K,Q4_0,F16")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold-compile measurement")
    ap.add_argument("--no-batch", action="store_true")
    a = ap.parse_args(argv)
    import numba
    numba.set_num_threads(a.threads)
    from ggq.runtime.blas import blas_set_threads
    blas_set_threads(a.threads)
    rng = np.random.default_rng(0)
    types = [t.strip().upper() for t in a.types.split(",") if t.strip()]
    print(f"threads={a.threads} (Numba and BLAS) repeats={a.repeats} (best of)")
    tok, gbs = bench_numpy_decode(a.repeats, rng)
    print(f"{'numpy f32':>10} decode {tok:7.1f} tok/s {gbs:6.1f} GB/s   (float32 weights, same shapes)")
    for name in types:
        tok, gbs, nw = bench_decode(name, a.repeats, rng)
        print(f"{name:>10} decode {tok:7.1f} tok/s {gbs:6.1f} GB/s   ({nw / 1e6:.1f}M weights)")
    for name in types:
        if INFO[name][1] in (1, 32):
            for k, (ms, gbs) in bench_big(name, a.repeats, rng).items():
                print(f"{name + k:>10} gemma3 out 262144x640 {ms:7.2f} ms {gbs:6.1f} GB/s")
        elif INFO[name][1] == 256:
            for rows, cols in ((640, 1024), (640, 2048), (16384, 4096)):
                for k, (ms, gbs) in bench_big(name, a.repeats, rng, rows, cols).items():
                    print(f"{name + k:>10} matvec {rows}x{cols} {ms:7.3f} ms {gbs:6.1f} GB/s")
    if not a.no_batch:
        print(f"{'numpy f32':>10} batch128 {bench_numpy_batch(a.repeats, rng):7.1f} GFLOP/s")
        for name in types:
            print(f"{name:>10} batch128 {bench_batch(name, a.repeats, rng):7.1f} GFLOP/s")
    if not a.no_cold:
        for name in types:
            r = cold_compile(name, a.threads)
            c, w = r["cold"], r["warm"]
            print(f"{name:>10} compile cold: import {c[0]:.1f}s matvec {c[1]:.1f}s dequant {c[2]:.1f}s"
                  f" | warm cache: import {w[0]:.2f}s matvec {w[1]:.2f}s dequant {w[2]:.2f}s")


if __name__ == "__main__":
    main()
