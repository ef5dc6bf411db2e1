"""`ggq run`'s kernel preload (ggq.cli.run._load_weight_kernels): on a warm Numba cache, every
kernel a short prompt and the decode steps call is loaded before LLVM's pages are dropped, so
neither loads one (no new overload of any model or weight kernel) nor faults LLVM's pages back
in. In a fresh process, on the real files."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CODE = r"""
import json, sys, re
import numpy as np
from numba.core.registry import CPUDispatcher
from ggq.cli.run import _load, _load_weight_kernels
import ggq.kernels, ggq.kernels.gemm, ggq.models.base as base

def llvm_kib():
    tot, cur = 0, False
    for line in open("/proc/self/smaps"):
        m = re.match(r"^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$", line)
        if m:
            cur = "libllvmlite" in m.group(1)
        elif cur and line.startswith("Rss:"):
            tot += int(line.split()[1])
    return tot

def overloads():
    out = {}
    for mod in (base, ggq.kernels.gemm, *[sys.modules[n] for n in list(sys.modules) if n.startswith("ggq.kernels.")]):
        for k, d in vars(mod).items():
            if isinstance(d, CPUDispatcher):
                out[f"{mod.__name__}.{k}"] = len(d.overloads)
    return out

m = _load(sys.argv[1], 256, 1)
prompt = "The capital of France is"
ids = m.prompt_ids(prompt)
_load_weight_kernels(m, lambda: len(ids))
before, kib0 = overloads(), llvm_kib()
m.llama.forward(np.asarray(ids), 0)
for i in range(3):
    m.llama.forward([5 + i], len(ids) + i)
after, kib1 = overloads(), llvm_kib()
print(json.dumps({"new": sorted(k for k in after if after[k] != before.get(k, 0)), "kib0": kib0, "kib1": kib1}))
"""


def _check(gguf_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    runs = []
    for _ in range(2):  # the first may compile into Numba's cache (a cold cache: no preload then)
        r = subprocess.run([sys.executable, "-c", CODE, str(gguf_path)], env=env, capture_output=True,
                           text=True, timeout=900)
        assert r.returncode == 0, r.stderr[-2000:]
        runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
    got = runs[-1]
    assert got["new"] == [], got
    # nothing loaded, so LLVM's code stays out (fault-around may bring back a few pages)
    assert got["kib1"] - got["kib0"] < 2048, got


@pytest.mark.smollm2
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/smaps is Linux's")
def test_smollm2_prompt_and_decode_load_no_kernel(smollm2_gguf):
    _check(smollm2_gguf)


@pytest.mark.gemma3
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/smaps is Linux's")
def test_gemma3_prompt_and_decode_load_no_kernel(gemma3_gguf):
    _check(gemma3_gguf)
