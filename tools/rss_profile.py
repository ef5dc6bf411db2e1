"""Peak resident memory of `ggq run` against llama.cpp on the same GGUF, and where ggq's goes.

    python tools/rss_profile.py [MODEL ...] [-n 16] [-c 4096] [-t 2] [--no-phases] [--tracemalloc]
                                [--llama-cpp-dir DIR] [--json PATH]

MODEL: `smollm2` (the default model's GGUF), `gemma3` (Gemma 3 270M Q4_K_M GGUF) or a .gguf path;
default both. For each:
  total:  Maximum resident set size (`/usr/bin/time -v`, else wait4's ru_maxrss) of
          `ggq run GGUF -p PROMPT -n N --temp 0 -c C -t T` (ggq imports a .gguf once into
          ~/.cache/ggq/imported; the import is done before measuring) and of
          `llama-completion -m GGUF` with the same settings (-no-cnv), warm page cache; and the
          "first text after" that `ggq run` reports (from its own start, after imports).
  phases: a fresh process loads the model one step at a time in the order ggq.api.Model does
          and prints VmRSS (now), VmHWM (peak so far), anonymous and file-backed RSS after each:
          imports, reader (open + metadata), tokenizer (built), model
          (build_model), numba (CPU target ready), first forward (the prompt), N tokens.
          --tracemalloc adds the Python-heap peak of each step (tracemalloc sees Python
          allocations only: not the `tokenizers` library's Rust heap nor NumPy's large buffers
          made before tracing starts), at the cost of slower steps.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LLAMA_DIR = Path("/tmp/llama/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin")
PROMPT = "The capital of France is"

# The phase probe, run in a child: argv = json {"model", "prompt", "n", "ctx", "threads", "tracemalloc"}
PROBE = r'''
import json, sys, time
A = json.loads(sys.argv[1])
t0 = time.perf_counter()
if A["tracemalloc"]:
    import tracemalloc
    tracemalloc.start()

def status():
    d = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                d[k] = int(v.split()[0]) / 1024
    return d

rows = []
def mark(name):
    row = {"phase": name, "s": time.perf_counter() - t0, **status()}
    if A["tracemalloc"]:
        cur, peak = tracemalloc.get_traced_memory()
        row["py_now"], row["py_peak"] = cur / 2**20, peak / 2**20
        tracemalloc.reset_peak()
    rows.append(row)

mark("python up")
import numpy as np
from ggq.api import resolve_model_path, set_threads
from ggq.format import GGQReader
from ggq.jit_cache import numba_ready, numba_without_scipy
from ggq.models import build_model
from ggq.runtime.generate import prefill
from ggq.runtime.sampler import Sampler
from ggq.runtime.tokenizer import Tokenizer
path = resolve_model_path(A["model"])
set_threads(A["threads"])
mark("imports")
with numba_without_scipy():
    reader = GGQReader(path)
    mark("reader + metadata")
    tok = Tokenizer(reader.metadata, source=path.name)
    tok._ready()
    mark("tokenizer built")
    llama = build_model(reader, n_ctx=A["ctx"], source=path.name)
    mark("model built")
    numba_ready(fast_cache_loads=True)
mark("numba ready")
ids = tok.encode(A["prompt"])
logits = prefill(llama, np.asarray(ids, dtype=np.int64), 0)
mark("first forward")
from ggq.runtime.generate import generate_ids
out = list(generate_ids(llama, ids, Sampler(temperature=0.0), A["n"], tok.eog_ids))
mark(f"{A['n']} tokens")
print("PHASES " + json.dumps(rows))
'''


def gguf_path(name: str) -> Path:
    if name == "smollm2":
        from ggq.default_model import smollm2_gguf
        return Path(smollm2_gguf())
    if name == "gemma3":
        from ggq.default_model import gemma3_gguf
        return Path(gemma3_gguf())
    return Path(name)


def peak_rss_mib(cmd: list[str]) -> tuple[float, str, str]:
    """(peak RSS in MiB, stdout, stderr) of cmd run to completion."""
    use_time = os.access("/usr/bin/time", os.X_OK)
    with tempfile.TemporaryDirectory() as tmp:
        tv = Path(tmp) / "time.txt"
        full = (["/usr/bin/time", "-v", "-o", str(tv)] if use_time else []) + cmd
        with open(Path(tmp) / "err.txt", "w+b") as err:
            p = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
            out = p.stdout.read()
            p.stdout.close()
            _, status, usage = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            err.seek(0)
            err_text = err.read().decode("utf-8", "replace")
            if p.returncode:
                tail = " | ".join(err_text.strip().splitlines()[-3:])
                raise SystemExit(f"{Path(cmd[0]).name} failed ({p.returncode}): {tail}")
        m = re.search(r"Maximum resident set size \(kbytes\):\s*(\d+)", tv.read_text()) if use_time else None
    kib = int(m.group(1)) if m else usage.ru_maxrss  # Linux ru_maxrss: KiB
    return kib / 1024, out.decode("utf-8", "replace"), err_text


def ggq_cmd(model: Path, a) -> list[str]:
    return [sys.executable, "-m", "ggq", "run", str(model), "-p", a.prompt, "-n", str(a.n),
            "--temp", "0", "-c", str(a.ctx), "-t", str(a.threads)]


def llama_cmd(model: Path, a) -> list[str] | None:
    exe = Path(a.llama_cpp_dir) / "llama-completion"
    if not os.access(exe, os.X_OK):
        return None
    return [str(exe), "-m", str(model), "-p", a.prompt, "-n", str(a.n), "--temp", "0",
            "-t", str(a.threads), "-c", str(a.ctx), "-no-cnv", "--no-display-prompt", "--simple-io"]


def phases(model: Path, a) -> list[dict]:
    arg = json.dumps({"model": str(model), "prompt": a.prompt, "n": a.n, "ctx": a.ctx,
                      "threads": a.threads, "tracemalloc": a.tracemalloc})
    r = subprocess.run([sys.executable, "-c", PROBE, arg], capture_output=True, text=True,
                       cwd=ROOT, timeout=1800)
    line = [x for x in r.stdout.splitlines() if x.startswith("PHASES ")]
    if r.returncode or not line:
        raise SystemExit(f"phase probe failed: {r.stderr.strip()[-800:]}")
    return json.loads(line[-1][7:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=["smollm2", "gemma3"])
    ap.add_argument("-n", type=int, default=16)
    ap.add_argument("-c", "--ctx", type=int, default=4096)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-p", "--prompt", default=PROMPT)
    ap.add_argument("-r", "--repeat", type=int, default=1,
                    help="runs of each total (the minimum peak and the median first-text time are kept)")
    ap.add_argument("--no-phases", action="store_true")
    ap.add_argument("--tracemalloc", action="store_true")
    ap.add_argument("--llama-cpp-dir", default=str(LLAMA_DIR))
    ap.add_argument("--json", help="write the figures here")
    a = ap.parse_args()

    from ggq.api import resolve_model_path

    results = {}
    for name in a.models:
        g = gguf_path(name)
        resolve_model_path(g)  # the one-time import, outside the measurement
        res = {"gguf": str(g)}
        runs = [peak_rss_mib(ggq_cmd(g, a)) for _ in range(a.repeat)]
        res["ggq_mib"] = min(r[0] for r in runs)
        firsts = [int(m.group(1)) for r in runs for m in [re.search(r"first text after (\d+) ms", r[2])] if m]
        res["ggq_first_text_ms"] = sorted(firsts)[len(firsts) // 2] if firsts else None
        lc = llama_cmd(g, a)
        res["llama_mib"] = min(peak_rss_mib(lc)[0] for _ in range(a.repeat)) if lc else None
        print(f"\n{name}: {g}")
        if res["ggq_first_text_ms"] is not None:
            print(f"  ggq run's own 'first text after' (median of {len(firsts)}): {res['ggq_first_text_ms']} ms")
        if res["llama_mib"]:
            print(f"  peak RSS  ggq run {res['ggq_mib']:.0f} MiB   llama-completion {res['llama_mib']:.0f} MiB"
                  f"   ratio {res['ggq_mib'] / res['llama_mib']:.2f}x")
        else:
            print(f"  peak RSS  ggq run {res['ggq_mib']:.0f} MiB   (no llama-completion in {a.llama_cpp_dir})")
        if not a.no_phases:
            rows = phases(g, a)
            res["phases"] = rows
            print(f"  {'phase':<20}{'at s':>7}{'RSS':>8}{'peak':>8}{'anon':>8}{'file':>8}"
                  + (f"{'py now':>8}{'py peak':>9}" if a.tracemalloc else "") + "   (MiB)")
            for r in rows:
                print(f"  {r['phase']:<20}{r['s']:>7.2f}{r['VmRSS']:>8.0f}{r['VmHWM']:>8.0f}"
                      f"{r['RssAnon']:>8.0f}{r['RssFile']:>8.0f}"
                      + (f"{r['py_now']:>8.1f}{r['py_peak']:>9.1f}" if a.tracemalloc else ""))
        results[name] = res
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
