"""Fused Numba kernels per quant family and the per-type dispatch tables.

MATVEC[name](w, x, y):            y = W x, w uint8 (rows, row_bytes), x float32 (cols,), y (rows,)
DEQUANT[name](w, r0, r1, out):    out[:r1-r0, :cols] = float32 rows r0..r1 of W (exact)
Kernels compile lazily (first use of a type) and are cached on disk by Numba.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import floats, iquants, kquants, legacy  # noqa: E402
from ..jit_cache import guard

# the matvec kernels inline common.py's intrinsics (and iquants.py the quants' table): Numba
# alone would not see an edit there
guard([floats, legacy, kquants, iquants], [Path(m.__file__) for m in (floats, legacy, kquants, iquants)]
      + [Path(__file__).with_name("common.py"), Path(__file__).parent.parent / "quants" / "iquants.py"],
      "kernels")

MATVEC = {**floats.MATVEC, **legacy.MATVEC, **kquants.MATVEC, **iquants.MATVEC}
DEQUANT = {**floats.DEQUANT, **legacy.DEQUANT, **kquants.DEQUANT, **iquants.DEQUANT}

# (elements, bytes) per block, GGML layouts: lets the runtime validate row sizes on its own
BLOCK = {"F32": (1, 4), "F16": (1, 2), "BF16": (1, 2),
         "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24), "Q8_0": (32, 34),
         "Q2_K": (256, 84), "Q3_K": (256, 110), "Q4_K": (256, 144), "Q5_K": (256, 176),
         "Q6_K": (256, 210), "IQ4_NL": (32, 18), "IQ4_XS": (256, 136)}

# matvec kernels that quantize the activation vector to int8 (the others are exact float math)
INT8_ACTIVATIONS = frozenset(legacy.MATVEC) | frozenset(kquants.MATVEC) | frozenset(iquants.MATVEC)



# ---------------------------------------------------------------------------------------------
# start-up: which matvec kernels a cold Numba cache lacks, and compiling them ahead of use
# (ggq.jit_cache.Precompiler runs warm() in a helper process while a command loads the model
# and evaluates the prompt; the decode steps then load the kernels from the disk cache)

def matvec_args(name: str):
    """(w, x, y) of the types runtime.linear passes to MATVEC[name] (read-only weights: mmap views
    and copies alike), tiny and zero: calling the kernel on them compiles or loads exactly the
    overload a model needs."""
    bs, ts = BLOCK[name]
    cols, rows = 256, 4
    w = np.zeros((rows, cols // bs * ts), np.uint8)
    if name in floats.VIEW:
        w = w.view(floats.VIEW[name])
    w.flags.writeable = False
    x = np.zeros((1, cols), np.float32)
    y = np.zeros((1, rows), np.float32)
    return w, x[0], y[0]


def uncached_matvecs(names) -> list[str]:
    """The names (in the given order) whose MATVEC kernel is neither loaded in this process nor
    in Numba's disk cache for the signature a model uses. Without a usable disk cache (or if
    Numba's cache layout is not what this expects): [] (a helper process could not help)."""
    from numba import typeof

    out = []
    for name in dict.fromkeys(names):
        disp = MATVEC.get(name)
        if disp is None:
            continue
        sig = tuple(typeof(a) for a in matvec_args(name))
        if sig in disp.overloads:
            continue
        try:
            cache = disp._cache
            if not hasattr(cache, "_cache_file"):  # NullCache: caching off
                return []
            key = cache._index_key(sig, disp.targetctx.codegen())
            if key not in cache._cache_file._load_index():
                out.append(name)
        except Exception:  # pragma: no cover - another Numba's internals
            return []
    return out


def warm(tasks, report=None) -> None:
    """Compile (or load) kernels ahead of use, in order; report(task) after each. A task is
    "mv:NAME" (MATVEC[NAME], the decode step's kernel) or "mm:NAME" (whatever
    runtime.linear runs for a batch of 8 rows of a NAME weight: the prompt's kernels)."""
    for task in tasks:
        kind, _, name = task.partition(":")
        if name not in BLOCK:
            continue
        w, x, y = matvec_args(name)
        if kind == "mv" and name in MATVEC:
            MATVEC[name](w, x, y)
        elif kind == "mm":
            from ..runtime.linear import linear

            linear(name, w.view(np.uint8), x.size, np.zeros((8, x.size), np.float32))
        else:
            continue
        if report:
            report(task)


__all__ = ["MATVEC", "DEQUANT", "INT8_ACTIVATIONS", "BLOCK", "matvec_args", "uncached_matvecs", "warm"]
