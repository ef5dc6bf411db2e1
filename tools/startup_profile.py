"""Where the start-up time of `ggq run` goes, with a cold and a warm Numba cache.

    python tools/startup_profile.py [MODEL] [-n 16] [-t 2] [-r 3] [--mode cold,warm] [--kernels]

For each mode and run a fresh process runs `ggq run MODEL -p PROMPT -n N --temp 0 -t T`:
  cold: NUMBA_CACHE_DIR is a new empty folder (every kernel compiles);
  warm: NUMBA_CACHE_DIR is the folder a cold run filled (every kernel loads from disk).
Two kinds of process per run, alternating:
  plain:        `python -m ggq run ...` exactly as a user runs it; wall time and the CLI's
                "first text after" (from its own process start, so interpreter start-up is
                added from the parent's clock).
  instrumented: the same command inside a probe that stamps, from the parent's spawn time,
                python up -> cli imported -> api imported -> kernels imported -> model loaded
                -> first forward done -> first text -> done, and times every Numba dispatcher
                compile: load from the disk cache (hit) or compile (miss), self time (nested
                compiles subtracted), LLVM share of a compile (Numba's llvm_lock timer).
Medians over the runs; the machine is noisy, so compare medians from one invocation.
MODEL defaults to the q4_k_m SmolLM2 file used in issue 8, else the default model.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FILE = Path("/tmp/cmpwork/SmolLM2-135M-Instruct.q4_k_m.ggq")

# The probe: runs in the child process. argv: json of {"t0": spawn time, "argv": ggq argv, "out": path}
PROBE = r'''
import json, sys, time
T = json.loads(sys.argv[1])
marks = [("python up", time.time(), time.process_time())]
events = []          # per dispatcher compile() call
stack = []           # nested compile calls: children's time is subtracted from the parent


def _patch_dispatcher(mod):
    D = mod.Dispatcher
    orig = D.compile

    def compile(self, sig):
        hits0 = sum(self._cache_hits.values())
        miss0 = sum(self._cache_misses.values())
        n0 = len(self.overloads)
        stack.append(0.0)
        t = time.perf_counter()
        try:
            return orig(self, sig)
        finally:
            dt = time.perf_counter() - t
            child = stack.pop()
            if stack:
                stack[-1] += dt
            if len(self.overloads) != n0 and not any(   # a new overload: loaded or compiled
                    e["disp"] == id(self) and e["sig"] == str(sig)[:120] for e in events):
                # (a second thread that waited for the same compile adds nothing)
                hit = sum(self._cache_hits.values()) > hits0
                llvm = None
                if not hit:
                    try:
                        cres = list(self.overloads.values())[-1]
                        llvm = cres.metadata.get("timers", {}).get("llvm_lock")
                    except Exception:
                        pass
                f = self.py_func
                events.append({"kernel": f"{f.__module__}.{f.__qualname__}", "hit": hit, "disp": id(self),
                               "total": dt, "self": dt - child, "llvm": llvm,
                               "parallel": bool(self.targetoptions.get("parallel")),
                               "at": time.time(), "sig": str(sig)[:120]})
    D.compile = compile


import importlib.abc, importlib.machinery


def _stamp(name):
    marks.append((name, time.time(), time.process_time()))


def _patch_api(api):
    _init = api.Model.__init__

    def init(self, *a, **k):
        _init(self, *a, **k)
        _stamp("model loaded")
        fwd = self.llama.forward
        calls = [0]

        def forward(*a, **k):
            r = fwd(*a, **k)
            calls[0] += 1
            if calls[0] <= 2:
                _stamp(("first", "second")[calls[0] - 1] + " forward done")
            return r
        self.llama.forward = forward
    api.Model.__init__ = init


# after these modules execute: (stamp, patch)
WATCH = {"numba.core.dispatcher": ("numba imported", _patch_dispatcher),
         "ggq.cli.run": ("cli imported", None),
         "ggq.api": ("api imported", _patch_api),
         "ggq.kernels": ("kernels imported", None)}


class _Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in WATCH:
            return None
        stamp, patch = WATCH.pop(name)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        orig_exec = spec.loader.exec_module

        def exec_module(module):
            orig_exec(module)
            if patch:
                patch(module)
            _stamp(stamp)
        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _Hook())


class _Out:
    def __init__(self, f):
        self.f, self.first = f, True

    def write(self, s):
        if self.first and s:
            self.first = False
            marks.append(("first text", time.time(), time.process_time()))
        return self.f.write(s)

    def flush(self):
        return self.f.flush()

    def __getattr__(self, k):
        return getattr(self.f, k)


sys.stdout = _Out(sys.stdout)
from ggq.cli import main
rc = main(T["argv"])
marks.append(("done", time.time(), time.process_time()))
sys.stdout = sys.stdout.f
with open(T["out"], "w") as fh:
    json.dump({"t0": T["t0"], "marks": marks, "events": events, "rc": rc}, fh)
'''


def run_plain(argv, env):
    """`python -m ggq run ...` as a user runs it: wall time, and first text = the first byte on
    its stdout, both from the spawn."""
    t0 = time.time()
    p = subprocess.Popen([sys.executable, "-m", "ggq", *argv], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, cwd=ROOT)
    head = p.stdout.read(1)
    first = time.time() - t0 if head else None
    out, err = p.communicate()
    wall = time.time() - t0
    if p.returncode:
        sys.exit(f"ggq run failed:\n{err.decode(errors='replace')}")
    return {"wall": wall, "first_text": first, "stderr": err.decode(errors="replace").strip()[-300:]}


def run_probe(argv, env):
    fd, out = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        t0 = time.time()
        r = subprocess.run([sys.executable, "-c", PROBE, json.dumps({"t0": t0, "argv": argv, "out": out})],
                           env=env, capture_output=True, text=True, cwd=ROOT)
        if r.returncode:
            sys.exit(f"probe failed:\n{r.stderr}")
        with open(out) as fh:
            return json.load(fh)
    finally:
        os.unlink(out)


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", help="model file (default: issue 8's q4_k_m file, else the default model)")
    ap.add_argument("-p", "--prompt", default="The capital of France is")
    ap.add_argument("-n", type=int, default=16)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-r", "--runs", type=int, default=3)
    ap.add_argument("--mode", default="cold,warm", help="cold, warm or cold,warm")
    ap.add_argument("--kernels", action="store_true", help="print the per-kernel table of every mode")
    ap.add_argument("--no-plain", action="store_true", help="instrumented runs only")
    ap.add_argument("--json", help="write all raw results here")
    ap.add_argument("--compileall", action="store_true",
                    help="byte-compile ggq first (as an installed package is; here PYTHONDONTWRITEBYTECODE may "
                         "leave it compiling its sources at every start)")
    a = ap.parse_args()
    if a.compileall:
        import compileall
        compileall.compile_dir(str(ROOT / "ggq"), quiet=1)
    model = a.model or (str(DEFAULT_FILE) if DEFAULT_FILE.exists() else None)
    argv = ["run"] + ([model] if model else []) + ["-p", a.prompt, "-n", str(a.n), "--temp", "0",
                                                    "-t", str(a.threads)]
    modes = [m.strip() for m in a.mode.split(",") if m.strip()]
    base_env = dict(os.environ)
    base_env.setdefault("PYTHONPATH", str(ROOT))
    tmp = Path(tempfile.mkdtemp(prefix="ggq-startup-"))
    raw = {m: {"plain": [], "probe": []} for m in modes}
    try:
        warm_dir = tmp / "warm"
        if "warm" in modes:  # fill the warm cache once
            run_plain(argv, {**base_env, "NUMBA_CACHE_DIR": str(warm_dir)})
        for i in range(a.runs):
            for m in modes:
                for kind in (("probe",) if a.no_plain else ("plain", "probe")):
                    if m == "cold":
                        d = tmp / f"cold{i}{kind}"
                    else:
                        d = warm_dir
                    env = {**base_env, "NUMBA_CACHE_DIR": str(d)}
                    if kind == "plain":
                        raw[m]["plain"].append(run_plain(argv, env))
                    else:
                        raw[m]["probe"].append(run_probe(argv, env))
                    if m == "cold":
                        shutil.rmtree(d, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"ggq {' '.join(argv)}   ({a.runs} runs per mode, medians; seconds from process spawn)")
    for m in modes:
        P, Q = raw[m]["plain"], raw[m]["probe"]
        print(f"\n== {m} ==")
        if P:
            print(f"plain `python -m ggq run`: wall {med([p['wall'] for p in P]):.2f} s "
                  f"[{', '.join('%.2f' % p['wall'] for p in P)}], first text "
                  f"{med([p['first_text'] for p in P]):.2f} s [{', '.join('%.2f' % p['first_text'] for p in P)}]")
        names = []
        for q in Q:
            for name, *_ in q["marks"]:
                if name not in names:
                    names.append(name)
        prev = prevc = 0.0
        print(f"  {'stamp':22s} {'at':>7s} {'+step':>7s} {'cpu':>7s} {'+cpu':>7s}  (instrumented; cpu: the process's CPU time)")
        for name in names:
            ms = [{n: (w, c) for n, w, c in q["marks"]} for q in Q]
            at = med([m[name][0] - q["t0"] for m, q in zip(ms, Q) if name in m])
            cpu = med([m[name][1] for m in ms if name in m])
            print(f"  {name:22s} {at:7.3f} {at - prev:+7.3f} {cpu:7.3f} {cpu - prevc:+7.3f}")
            prev, prevc = at, cpu
        # per kernel: median over runs of the summed self time per kernel
        per = {}
        for q in Q:
            agg = {}
            for e in q["events"]:
                k = e["kernel"] + ("" if e["hit"] else "") + (" [par]" if e["parallel"] else "")
                s = agg.setdefault(k, {"self": 0.0, "n": 0, "hit": 0, "llvm": 0.0})
                s["self"] += e["self"]
                s["n"] += 1
                s["hit"] += e["hit"]
                s["llvm"] += e["llvm"] or 0.0
            for k, s in agg.items():
                per.setdefault(k, []).append(s)
        tot = sum(med([s["self"] for s in v]) for v in per.values())
        nev = med([len(q["events"]) for q in Q])
        print(f"  numba compile/load self time: {tot:.2f} s over {len(per)} kernels ({nev:.0f} overloads)")
        if a.kernels or True:
            rows = sorted(per.items(), key=lambda kv: -med([s["self"] for s in kv[1]]))
            for k, v in rows[: (None if a.kernels else 12)]:
                n = v[0]["n"]
                hit = v[0]["hit"]
                llvm = med([s["llvm"] for s in v])
                print(f"    {med([s['self'] for s in v]):6.3f} s  {n} sig{'s' if n > 1 else ' '} "
                      f"{'hit ' if hit == n else ('miss' if hit == 0 else 'mix ')}"
                      f" llvm {llvm:5.2f}  {k}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(raw, fh)


if __name__ == "__main__":
    main()
