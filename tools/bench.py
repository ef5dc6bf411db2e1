#!/usr/bin/env python3
"""ggq against llama.cpp on the same bytes: the benchmark of issue 8. Writes docs/bench.md.

    python tools/bench.py                          # everything, the issue's protocol
    python tools/bench.py -r 1 --pp 16 --tg 8 --files q4_k_m --no-write   # a quick smoke test
    python tools/bench.py --help

Parts (each can be left out with --skip):
  bandwidth  streaming-read GB/s of an in-cache (16 MiB) and an out-of-cache (1 GiB) buffer,
             a Numba parallel sum over an int64 view with --threads threads;
  speed      per file, --rounds rounds; each round runs `ggq bench` and `llama-bench` on the
             same file, in alternating order (round 1 ggq first, round 2 llama.cpp first, ...),
             each with --reps repetitions after its own warm-up; the figure of a round is the
             engine's mean over its repetitions. Reported: median over rounds, (min–max) over
             rounds, ratio of medians ggq / llama.cpp. Also weight bytes read per generated token
             (all layer matrices + the output matrix) × tg tok/s = effective GB/s;
  run        in every round, right after `ggq bench`: `ggq run FILE -n TG --temp 0`, its own
             reported generation tok/s against `ggq bench`'s tg (target: within 5%);
  start      cold start: `ggq run Q4_K_M -p "The capital of France is" -n 16 --temp 0 -t 2` with
             an empty Numba cache (a fresh NUMBA_CACHE_DIR), then 3 warm runs on that cache:
             time to the first byte of text on stdout and total wall time, from process start;
  rss        peak RSS (`/usr/bin/time -v`, else wait4's ru_maxrss) of that `ggq run` (16 tokens)
             and of llama.cpp's `llama-completion` (or `llama-simple`) on the same file, each
             after one warm-up run (page cache and Numba's kernel cache warm).
Opt-in: --fresh-install times the first `ggq run` of a fresh install (new venv, `pip install`
of this checkout, empty GGQ_CACHE so the default model is fetched, empty Numba cache).

Files: SmolLM2-135M-Instruct (the default GGUF) converted to each preset named in --files
(q4_k_m, q8_0, q6_k, ...) and exported with `ggq export` to .gguf for llama.cpp; `gemma3` is the
Gemma 3 270M Q4_K_M GGUF as shipped (llama.cpp reads it, ggq reads its `--type keep` import:
the same tensor bytes). They are made once in --models-dir [$GGQ_CACHE/bench].

llama.cpp: --llama-bench PATH (the binary or its folder), else $LLAMA_BENCH, else known build
folders (KNOWN_BIN_DIRS), else PATH. --build-llamacpp DIR builds the tools from the
llama-cpp-python 0.3.36 sdist in DIR (outside the repo; 10+ minutes on two cores) and uses them.
"""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SDIST = "llama-cpp-python==0.3.36"
BUILD_TARGETS = ["llama-bench", "llama-completion", "llama-simple"]
CMAKE_FLAGS = ["-DGGML_NATIVE=ON", "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF",
               "-DLLAMA_CURL=OFF", "-DCMAKE_BUILD_TYPE=Release"]
KNOWN_BIN_DIRS = [
    "/tmp/llama/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin",
    "/opt/llamacpp/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin",
    "~/.cache/ggq/llama.cpp-0.3.36/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin",  # llamacpp_compare.py
    "~/.cache/ggq/bench/llama.cpp/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin",
]
PRESETS_NAME = "SmolLM2-135M-Instruct.{}"
GEMMA3_STEM = "gemma-3-270m-q4_k_m"
START_PROMPT = "The capital of France is"
RUN_PROMPT = "Once upon a time, in a small village by the sea,"
PARTS = ("bandwidth", "speed", "run", "start", "rss")
README_BEGIN, README_END = "<!-- bench:begin -->", "<!-- bench:end -->"
NOTES: list[str] = []


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def note(msg: str) -> None:
    if msg not in NOTES:
        NOTES.append(msg)
        log(f"note: {msg}")


# ------------------------------------------------------------------------------ pure helpers

def csv_list(s: str) -> list[str]:
    return [x.strip() for x in (s or "").split(",") if x.strip()]


def parse_size(s: str) -> int:
    """'16M' / '1G' / '512K' / '4096' -> bytes (binary units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)i?B?\s*", s, re.I)
    if not m:
        raise ValueError(f"not a size: {s!r}")
    return int(float(m.group(1)) * 1024 ** " KMG".index((m.group(2) or " ").upper()))


def human_bytes(n: int) -> str:
    for unit, k in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= k:
            v = n / k
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{n} B"


def parse_llama_bench_json(text: str) -> tuple[dict[str, float], dict]:
    """llama-bench -o json -> ({'pp128': mean t/s, 'tg64': ...}, build info)."""
    recs = json.loads(text)
    res, info = {}, {}
    for t in recs:
        n_p, n_g = int(t.get("n_prompt") or 0), int(t.get("n_gen") or 0)
        name = f"pp{n_p}" if n_p and not n_g else f"tg{n_g}" if n_g and not n_p else f"pp{n_p}+tg{n_g}"
        res[name] = float(t["avg_ts"])
        info = {k: t.get(k) for k in ("build_commit", "build_number", "cpu_info", "backends", "repack",
                                      "model_type", "model_size")}
    return res, info


_GGQ_BENCH_ROW = re.compile(r"\|\s*((?:pp|tg)\d+)\s*\|\s*([\d.]+)\s*±\s*([\d.]+)\s*\|")


def parse_ggq_bench(text: str) -> dict[str, float]:
    """`ggq bench` table -> {'pp128': mean t/s, ...}."""
    return {m.group(1): float(m.group(2)) for m in _GGQ_BENCH_ROW.finditer(text)}


def parse_run_stats(text: str) -> dict:
    """The summary line `ggq run` prints on stderr -> gen_tokens, gen_tps, prompt_tps, load_ms,
    first_ms (whichever are present)."""
    out = {}
    for key, rx, conv in (("gen_tokens", r"generation (\d+) tok", int),
                          ("gen_tps", r"generation \d+ tok ([\d.]+) tok/s", float),
                          ("prompt_tps", r"prompt \d+ tok ([\d.]+) tok/s", float),
                          ("load_ms", r"load (\d+) ms", float),
                          ("first_ms", r"first text after (\d+) ms", float)):
        m = re.search(rx, text)
        if m:
            out[key] = conv(m.group(1))
    return out


def parse_time_v(text: str) -> int | None:
    """`/usr/bin/time -v` report -> maximum resident set size in KiB."""
    m = re.search(r"Maximum resident set size \(kbytes\):\s*(\d+)", text)
    return int(m.group(1)) if m else None


def spread(values) -> tuple[float, float, float] | None:
    """(median, min, max) of the values, None when there are none."""
    v = [float(x) for x in values if x is not None]
    if not v:
        return None
    return statistics.median(v), min(v), max(v)


def fmt_spread(values, digits: int = 1) -> str:
    s = spread(values)
    if s is None:
        return "n/a"
    med, lo, hi = s
    if len([x for x in values if x is not None]) == 1:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} ({lo:.{digits}f}–{hi:.{digits}f})"


def ratio(a_values, b_values) -> float | None:
    """median(a) / median(b)."""
    a, b = spread(a_values), spread(b_values)
    if a is None or b is None or b[0] == 0:
        return None
    return a[0] / b[0]


def fmt_ratio(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.2f}×"


def weight_bytes_per_token(tensors: dict[str, tuple[tuple[int, ...], int]]) -> int:
    """Bytes of weight matrices one decode step reads: every 2-D `blk.*` tensor plus the output
    matrix (`output.weight`, or `token_embd.weight` when the embeddings are tied). The one
    embedding row a step looks up is left out (negligible). tensors: name -> (shape, nbytes)."""
    total = sum(nb for name, (shape, nb) in tensors.items() if name.startswith("blk.") and len(shape) == 2)
    out = tensors.get("output.weight") or tensors.get("token_embd.weight")
    return total + (out[1] if out else 0)


def replace_marked(text: str, block: str, begin: str = README_BEGIN, end: str = README_END) -> str | None:
    """text with everything between the begin and end markers replaced by block (markers kept);
    None when the markers are not both present, in that order."""
    i = text.find(begin)
    j = text.find(end, i + len(begin)) if i >= 0 else -1
    if i < 0 or j < 0:
        return None
    return text[:i + len(begin)] + "\n" + block.strip("\n") + "\n" + text[j:]


def md_table(head: list[str], rows: list[list[str]], right_from: int = 1) -> list[str]:
    align = ["---" if i < right_from else "--:" for i in range(len(head))]
    return ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"] + \
           ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]


# ------------------------------------------------------------------------------ llama.cpp tools

def build_llamacpp(dest: Path) -> Path:
    """Download the llama-cpp-python 0.3.36 sdist into dest, unpack it and build llama.cpp's
    tools (BUILD_TARGETS) in vendor/llama.cpp/build. Returns the bin folder."""
    dest = dest.expanduser().resolve()
    if dest == ROOT or ROOT in dest.parents:
        raise click.ClickException("--build-llamacpp DIR must be outside the repository")
    dest.mkdir(parents=True, exist_ok=True)
    src = next(dest.glob("llama_cpp_python-*/vendor/llama.cpp"), None)
    if src is None:
        tgz = next(dest.glob("llama_cpp_python-*.tar.gz"), None)
        if tgz is None:
            log(f"pip download {SDIST} (sdist) -> {dest}")
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                            SDIST, "-d", str(dest)], check=True)
            tgz = next(dest.glob("llama_cpp_python-*.tar.gz"))
        log(f"unpack {tgz.name}")
        with tarfile.open(tgz) as tf:
            tf.extractall(dest, filter="data")
        src = next(dest.glob("llama_cpp_python-*/vendor/llama.cpp"))
    build = src / "build"
    log(f"cmake configure + build {', '.join(BUILD_TARGETS)} in {build} (10+ minutes on two cores)")
    subprocess.run(["cmake", "-S", str(src), "-B", str(build), *CMAKE_FLAGS], check=True)
    subprocess.run(["cmake", "--build", str(build), "--config", "Release", "-j", str(os.cpu_count() or 2),
                    "--target", *BUILD_TARGETS], check=True)
    if not (build / "bin" / "llama-bench").is_file():
        raise click.ClickException(f"build finished but {build / 'bin' / 'llama-bench'} is missing")
    return build / "bin"


def _executable(p: Path) -> bool:
    return p.is_file() and os.access(p, os.X_OK)


def find_llama_bench(explicit: str | None) -> Path | None:
    """--llama-bench (the binary or its folder), $LLAMA_BENCH, KNOWN_BIN_DIRS, PATH."""
    cands = []
    for given in (explicit, os.environ.get("LLAMA_BENCH")):
        if given:
            p = Path(given).expanduser()
            cands.append(p / "llama-bench" if p.is_dir() else p)
            if given is explicit and not _executable(cands[-1]):
                raise click.ClickException(f"--llama-bench {given}: no llama-bench binary there")
    cands += [Path(d).expanduser() / "llama-bench" for d in KNOWN_BIN_DIRS]
    w = shutil.which("llama-bench")
    if w:
        cands.append(Path(w))
    return next((p.resolve() for p in cands if _executable(p)), None)


def run_llama_bench(binary: Path, model: Path, threads: int, pps: list[int], tg: int, reps: int) -> dict:
    cmd = [str(binary), "-m", str(model), "-t", str(threads), "-p", ",".join(map(str, pps)) or "0",
           "-n", str(tg), "-r", str(reps), "-o", "json"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if r.returncode < 0 or r.returncode == 139:
        # some builds' repacked path segfaults on some VMs: run without repacking, and say so
        r = subprocess.run(cmd + ["--repack", "0"], capture_output=True, text=True, timeout=3600)
        note("llama-bench crashed with weight repacking on; its figures are with --repack 0")
    if r.returncode != 0:
        raise click.ClickException(f"llama-bench failed ({r.returncode}): {r.stderr.strip().splitlines()[-1:]}")
    res, info = parse_llama_bench_json(r.stdout)
    BUILD_INFO.update({k: v for k, v in info.items() if k in ("build_commit", "build_number", "backends")})
    return res


BUILD_INFO: dict = {}


# ------------------------------------------------------------------------------ files

def ggq_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "ggq", *map(str, args)]


def ensure_files(name: str, models_dir: Path) -> tuple[Path, Path]:
    """(.ggq for ggq, .gguf for llama.cpp) holding the same tensor bytes; made once."""
    from ggq.convert import convert_model
    from ggq.gguf_io import export_gguf

    models_dir.mkdir(parents=True, exist_ok=True)
    if name == "gemma3":
        from ggq.default_model import gemma3_gguf

        gguf = gemma3_gguf()
        g = models_dir / f"{GEMMA3_STEM}.keep.ggq"
        if not g.exists() or g.stat().st_mtime < gguf.stat().st_mtime:
            log(f"import {gguf.name} -> {g} (--type keep: tensor bytes copied)")
            convert_model(gguf, g, preset="keep", force=True, progress=False)
        return g, gguf
    from ggq.default_model import smollm2_gguf

    g = models_dir / (PRESETS_NAME.format(name) + ".ggq")
    f = models_dir / (PRESETS_NAME.format(name) + ".gguf")
    if not g.exists():
        log(f"convert the default model -> {g} ({name})")
        convert_model(smollm2_gguf(), g, preset=name, force=True, progress=False)
    if not f.exists() or f.stat().st_mtime < g.stat().st_mtime:
        log(f"export {g.name} -> {f}")
        export_gguf(g, f, force=True)
    return g, f


def file_weight_bytes(path: Path) -> int:
    from ggq.format.reader import GGQReader

    with GGQReader(path) as r:
        return weight_bytes_per_token({n: (t.shape, t.nbytes) for n, t in r.tensors.items()})


# ------------------------------------------------------------------------------ processes

def timed_run(cmd: list[str], env: dict | None = None, timeout: float = 1800) -> dict:
    """Run cmd: seconds from start to its first stdout byte and to its exit, peak RSS (KiB;
    `/usr/bin/time -v` when present, else wait4's ru_maxrss), stdout and stderr text."""
    use_time = _executable(Path("/usr/bin/time"))
    with tempfile.TemporaryDirectory() as tmp:
        tv = Path(tmp) / "time.txt"
        full = (["/usr/bin/time", "-v", "-o", str(tv)] if use_time else []) + [str(c) for c in cmd]
        with open(Path(tmp) / "err.txt", "w+b") as err:
            t0 = time.perf_counter()
            p = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, env=env)
            first = p.stdout.read(1)
            t_first = time.perf_counter() - t0 if first else None
            rest = p.stdout.read()
            _, status, usage = os.wait4(p.pid, 0)
            total = time.perf_counter() - t0
            p.returncode = os.waitstatus_to_exitcode(status)
            p.stdout.close()
            err.seek(0)
            err_text = err.read().decode("utf-8", "replace")
        rss = parse_time_v(tv.read_text()) if use_time and tv.exists() else None
        if rss is None:
            rss = usage.ru_maxrss  # Linux: KiB, the largest of the waited-for children
    out = {"first_s": t_first, "total_s": total, "rss_kib": rss, "rc": p.returncode,
           "stdout": (first + rest).decode("utf-8", "replace"), "stderr": err_text}
    if p.returncode != 0:
        tail = " | ".join(err_text.strip().splitlines()[-3:])
        raise click.ClickException(f"{Path(str(cmd[0])).name} {' '.join(map(str, cmd[1:4]))}... failed "
                                   f"({p.returncode}): {tail}")
    return out


def ggq_bench(model: Path, threads: int, pps: list[int], tg: int, reps: int) -> dict[str, float]:
    """`ggq bench` runs one pp size per process: the first with the tg test, the rest -n 0."""
    res = {}
    jobs = [(pps[0] if pps else 0, tg)] + [(p, 0) for p in pps[1:]]
    for p, n in jobs:
        r = subprocess.run(ggq_cmd("bench", model, "-t", threads, "-p", p, "-n", n, "-r", reps),
                           capture_output=True, text=True, timeout=3600)
        if r.returncode != 0:
            raise click.ClickException(f"ggq bench failed: {r.stderr.strip().splitlines()[-1:]}")
        res.update(parse_ggq_bench(r.stdout))
    return res


def ggq_run(model: Path, threads: int, n: int, prompt: str, env: dict | None = None,
            ctx: int | None = None) -> dict:
    args = ["run", model, "-p", prompt, "-n", n, "--temp", 0, "-t", threads]
    if ctx:
        args += ["-c", ctx]
    r = timed_run(ggq_cmd(*args), env=env)
    r["stats"] = parse_run_stats(r["stderr"])
    return r


def llama_generate_cmd(bin_dir: Path, model: Path, prompt: str, n: int, threads: int, ctx: int) -> list[str] | None:
    comp, simple = bin_dir / "llama-completion", bin_dir / "llama-simple"
    if _executable(comp):
        return [str(comp), "-m", str(model), "-p", prompt, "-n", str(n), "--temp", "0", "-t", str(threads),
                "-c", str(ctx), "-no-cnv", "--no-display-prompt", "--simple-io"]
    if _executable(simple):  # its context is prompt + n tokens, and it uses its default threads
        note("llama.cpp's RSS is from llama-simple (context = prompt + n tokens), not llama-completion")
        return [str(simple), "-m", str(model), "-n", str(n), prompt]
    return None


# ------------------------------------------------------------------------------ bandwidth

def stream_bandwidth(sizes: list[int], thread_counts: list[int], min_time: float = 1.0,
                     min_passes: int = 5) -> list[dict]:
    """Streaming-read GB/s (1e9 bytes/s) per buffer size and thread count: a Numba parallel sum
    over an int64 view of the buffer, each thread streaming its own slice (re-read within one pass
until 256 MiB are read); best pass and median pass of at least min_time seconds.
    On a loaded machine a parallel pass waits for its slowest thread: the best pass is the figure
    (and the one-thread figure the robust one)."""
    import numba
    import numpy as np

    @numba.njit(parallel=True, fastmath=True, cache=False)
    def _sum(a, reps, chunks):
        # each of `chunks` tasks reads its slice `reps` times within one parallel region, so that
        # one pass lasts long enough for the region's launch and join to be noise
        # (a slice, so that indices are known non-negative and the loop vectorizes; `^ r` keeps
        # the compiler from hoisting the invariant inner sum out of the reps loop)
        n = a.size
        total = 0
        for c in numba.prange(chunks):
            b = a[c * n // chunks:(c + 1) * n // chunks]
            s = 0
            for r in range(reps):
                for i in range(b.size):
                    s += b[i] ^ r
            total += s
        return total

    _sum(np.ones(1024, dtype=np.int64), 1, 1)  # compile
    out = []
    for size in sizes:
        buf = np.ones(size // 8, dtype=np.int64)  # touched: pages are mapped before timing
        reps = max(1, (256 << 20) // size)  # at least 256 MiB read per pass
        for t in thread_counts:
            numba.set_num_threads(max(1, min(t, numba.config.NUMBA_NUM_THREADS)))
            t_end = time.perf_counter() + 0.2  # warm-up: threads started, buffer in cache if it fits
            while time.perf_counter() < t_end:
                _sum(buf, reps, t)
            times = []
            t_end = time.perf_counter() + min_time
            while len(times) < min_passes or (time.perf_counter() < t_end and len(times) < 100000):
                t0 = time.perf_counter()
                _sum(buf, reps, t)
                times.append(time.perf_counter() - t0)
            nbytes = size * reps
            r = {"size": size, "threads": t, "best_gbs": nbytes / min(times) / 1e9,
                 "median_gbs": nbytes / statistics.median(times) / 1e9, "passes": len(times)}
            out.append(r)
            log(f"stream read {human_bytes(size)}, {t} thread(s): {r['best_gbs']:.1f} GB/s best, "
                f"{r['median_gbs']:.1f} median ({len(times)} passes)")
        del buf
    return out


def stream_bandwidth_subprocess(sizes: list[int], threads: int) -> list[dict]:
    """stream_bandwidth with 1 and `threads` threads, in a child process (a pool of exactly
    `threads` Numba threads, none of which lingers in this process while the engines run)."""
    counts = sorted({1, threads})
    code = (f"import sys, json; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); import bench; "
            f"print(json.dumps(bench.stream_bandwidth({sizes!r}, {counts!r})))")
    env = dict(os.environ, NUMBA_NUM_THREADS=str(max(counts)))
    r = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env, timeout=1800)
    if r.returncode != 0:
        raise click.ClickException("streaming-read measurement failed")
    return json.loads(r.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------ machine

def machine_info(bin_dir: Path | None) -> dict:
    info = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "cores": os.cpu_count(), "python": platform.python_version()}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        m = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
        info["cpu"] = m.group(1).strip() if m else platform.processor()
        m = re.search(r"^flags\s*:\s*(.+)$", cpuinfo, re.M)
        flags = set(m.group(1).split()) if m else set()
        info["flags"] = sorted(f for f in flags if f in ("avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw",
                                                         "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
                                                         "amx_tile", "amx_int8", "amx_bf16"))
    except OSError:
        info["cpu"] = platform.processor() or "?"
    try:
        info["l3"] = human_bytes(parse_size(Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text()))
    except OSError:
        pass
    try:
        kb = int(re.search(r"MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text()).group(1))
        info["ram"] = f"{kb / 2**20:.0f} GiB"
    except (OSError, AttributeError):
        pass
    try:
        info["commit"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                        capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "ggq"],
                               capture_output=True, text=True).stdout.strip()
        if dirty:
            info["commit"] += " (ggq/ has uncommitted changes)"
    except OSError:
        pass
    try:
        import numba
        import numpy

        info["numba"], info["numpy"] = numba.__version__, numpy.__version__
    except ImportError:
        pass
    if bin_dir is not None:
        info["llama_dir"] = str(bin_dir)
        try:
            r = subprocess.run([str(bin_dir / "llama-bench"), "--version"], capture_output=True, text=True, timeout=60)
            m = re.search(r"version: (\S+) \(build (\d+), commit (\w+)\)", r.stdout + r.stderr)
            if m:
                info["llama_version"] = f"{m.group(1)}, build {m.group(2)}, commit {m.group(3)}"
        except (OSError, subprocess.SubprocessError):
            pass
    info["load_start"] = os.getloadavg()
    return info


# ------------------------------------------------------------------------------ fresh install

def time_fresh_install(threads: int) -> dict:
    """New venv, `pip install` of this checkout, then the first `ggq run` with an empty GGQ_CACHE
    (default model fetched) and no Numba cache. Times: install, first text, total."""
    with tempfile.TemporaryDirectory(prefix="ggq-fresh-") as tmp:
        venv = Path(tmp) / "venv"
        log(f"fresh install: python -m venv {venv}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        t0 = time.perf_counter()
        log("fresh install: pip install (this checkout)")
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(ROOT)], check=True,
                       timeout=3600)
        t_install = time.perf_counter() - t0
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_", "GGQ_", "PYTHONPATH"))}
        env["GGQ_CACHE"] = str(Path(tmp) / "ggq-cache")
        log("fresh install: first `ggq run` (fetches the default model, compiles the kernels)")
        # run from the temp folder so that the checkout's ggq/ is not imported instead
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            r = timed_run([str(venv / "bin" / "ggq"), "run", "-p", START_PROMPT, "-n", "16", "--temp", "0",
                           "-t", str(threads)], env=env, timeout=3600)
        finally:
            os.chdir(cwd)
        return {"install_s": t_install, "first_s": r["first_s"], "total_s": r["total_s"],
                "stats": parse_run_stats(r["stderr"])}


# ------------------------------------------------------------------------------ report

def bw_lines(bw: list[dict], threads: int) -> list[str]:
    rows = [[human_bytes(r["size"]), str(r["threads"]), f"{r['best_gbs']:.1f}", f"{r['median_gbs']:.1f}"] for r in bw]
    return (["Streaming read measured by the tool: a Numba parallel sum over an int64 view of a buffer that fits "
             "in the L3 cache and one that does not (GB = 1e9 bytes; best and median pass over a second). The "
             f"{threads}-thread figure is the one to set against the engines; on a loaded machine a parallel pass "
             "waits for its slowest thread, so the one-thread figure is the steadier one.", ""]
            + md_table(["buffer", "threads", "best GB/s", "median GB/s"], rows) + [""])



PROTOCOL = {"rounds": 3, "pp": [128, 512], "tg": 64, "threads": 2}


def report(res: dict, cfg: dict, info: dict) -> tuple[str, str]:
    """(the whole docs/bench.md text, the summary block for README.md)."""
    L = ["# ggq vs llama.cpp: benchmark", "",
         "Made by `python tools/bench.py` (issue 8's protocol). Rerun it to refresh this file; "
         "`--readme` also refreshes the marked section of README.md.", ""]
    low = [k for k in ("rounds",) if cfg[k] < PROTOCOL[k]] + \
          [k for k in ("pp", "tg", "threads") if cfg[k] != PROTOCOL[k]]
    if low:
        shown = {k: ",".join(map(str, cfg[k])) if isinstance(cfg[k], list) else cfg[k] for k in low}
        L += [f"**Not the protocol's settings ({', '.join(f'{k} {v}' for k, v in shown.items())}): a smoke test, "
              "the figures below mean nothing.**", ""]
    flags = " ".join(info.get("flags", [])) or "none of interest"
    L += ["## Machine", "",
          f"- CPU: {info.get('cpu', '?')}, {info.get('cores')} cores"
          f"{', L3 ' + info['l3'] if info.get('l3') else ''}{', RAM ' + info['ram'] if info.get('ram') else ''}; "
          f"flags: {flags}",
          f"- Date: {info['date']}; load average at start {' '.join(f'{x:.2f}' for x in info['load_start'])}, "
          f"at end {' '.join(f'{x:.2f}' for x in info.get('load_end', ()))}",
          f"- ggq: commit {info.get('commit', '?')}; Python {info['python']}, Numba {info.get('numba', '?')}, "
          f"NumPy {info.get('numpy', '?')}",
          f"- llama.cpp: {info.get('llama_version') or ('commit ' + str(BUILD_INFO['build_commit']) if BUILD_INFO else 'not found')}"
          f" (llama-cpp-python 0.3.36 sdist, vendor/llama.cpp), `{info.get('llama_dir', '-')}`",
          f"- Settings: {cfg['threads']} threads for both engines, {cfg['rounds']} rounds × {cfg['reps']} repetitions, "
          f"tests {', '.join(f'pp{p}' for p in cfg['pp'])}{', tg' + str(cfg['tg']) if cfg['tg'] else ''}", ""]
    readme = []

    speed = res.get("speed") or {}
    if speed:
        rows = []
        for f, r in speed.items():
            for test in r["tests"]:
                g, l_ = r["ggq"].get(test, []), r["llama"].get(test, [])
                rows.append([f, test, fmt_spread(l_), fmt_spread(g), fmt_ratio(ratio(g, l_))])
        t = md_table(["file", "test", "llama.cpp t/s", "ggq t/s", "ggq / llama.cpp"], rows, right_from=2)
        L += ["## Speed", "",
              "Median over rounds (min–max over rounds); a round's figure is the engine's mean over its "
              "repetitions. Ratio = median ggq ÷ median llama.cpp (above 1: ggq faster). Both engines read the "
              "same tensor bytes; rounds alternate which engine goes first.", ""] + t + [""]
        readme += t + [""]

        rows = []
        bw = res.get("bandwidth") or []
        mine = sorted((b for b in bw if b["threads"] == cfg["threads"]), key=lambda b: b["size"])
        for f, r in speed.items():
            tg = f"tg{cfg['tg']}"
            wb = r.get("weight_bytes")
            if not wb or tg not in r["tests"]:
                continue
            gs, ls = spread(r["ggq"].get(tg, [])), spread(r["llama"].get(tg, []))
            row = [f, f"{wb / 1e6:.1f}", f"{ls[0] * wb / 1e9:.1f}" if ls else "n/a",
                   f"{gs[0] * wb / 1e9:.1f}" if gs else "n/a"]
            if len(mine) >= 2:
                row += [f"{gs[0] * wb / 1e9 / b['best_gbs'] * 100:.0f}%" if gs else "n/a" for b in (mine[0], mine[-1])]
            rows.append(row)
        if rows:
            L += ["## Weight bytes read per token", "",
                  "Bytes of the weight matrices one decode step reads (every layer matrix plus the output "
                  "matrix; the embedding row is left out) × median tg tok/s = effective read bandwidth.", ""]
            head = ["file", "MB per token", "llama.cpp GB/s", "ggq GB/s"]
            if len(mine) >= 2:
                head += [f"ggq ÷ stream {human_bytes(mine[0]['size'])}", f"ggq ÷ stream {human_bytes(mine[-1]['size'])}"]
            L += md_table(head, rows) + [""]
            if bw:
                L += bw_lines(bw, cfg["threads"])
    elif res.get("bandwidth"):
        L += ["## Streaming read", ""] + bw_lines(res["bandwidth"], cfg["threads"])

    runs = {f: r for f, r in speed.items() if r.get("run_tps")}
    if runs:
        tg = f"tg{cfg['tg']}"
        rows = [[f, fmt_spread(r["ggq"].get(tg, [])), fmt_spread(r["run_tps"]),
                 fmt_spread(r["run_tokens"], 0), fmt_ratio(ratio(r["run_tps"], r["ggq"].get(tg, [])))]
                for f, r in runs.items()]
        L += ["## `ggq run` against `ggq bench`", "",
              f"`ggq run FILE -p {RUN_PROMPT!r} -n {cfg['tg']} --temp 0 -t {cfg['threads']}` once per round, right "
              "after `ggq bench`: the generation speed it reports on stderr (tokens after the first over the wall "
              f"time between them: sampling, detokenizing and streaming included) against `ggq bench`'s {tg}. "
              "Target: within 5%.", ""]
        L += md_table(["file", f"ggq bench {tg} t/s", "ggq run t/s", "tokens generated", "run / bench"], rows) + [""]

    st = res.get("start")
    if st:
        rows = [["cold (empty Numba cache)", f"{st['cold']['first_s']:.2f}", f"{st['cold']['total_s']:.2f}",
                 f"{st['cold']['stats'].get('first_ms', float('nan')) / 1000:.2f}"],
                ["warm (min of 3)", f"{min(w['first_s'] for w in st['warm']):.2f}",
                 f"{min(w['total_s'] for w in st['warm']):.2f}",
                 f"{min(w['stats'].get('first_ms', float('nan')) for w in st['warm']) / 1000:.2f}"]]
        if st.get("llama"):
            rows.append(["llama.cpp (`llama-completion`, warm)", f"{st['llama']['first_s']:.2f}",
                         f"{st['llama']['total_s']:.2f}", "-"])
        if st.get("fresh"):
            fr = st["fresh"]
            rows.append([f"fresh install (pip install took {fr['install_s']:.0f} s; model fetched)",
                         f"{fr['first_s']:.2f}", f"{fr['total_s']:.2f}",
                         f"{fr['stats'].get('first_ms', float('nan')) / 1000:.2f}"])
        t = md_table(["`ggq run` start", "first text s", "total s", "first text s (ggq's own stderr)"], rows)
        L += ["## Start-up", "",
              f"`ggq run {st['file']} -p {START_PROMPT!r} -n 16 --temp 0 -t {cfg['threads']}`, from process start "
              "(Python start-up included) to the first byte on stdout and to exit. Cold: NUMBA_CACHE_DIR set to a "
              "fresh folder (every kernel compiles); warm: the same folder, three runs after it. The last column is "
              "what `ggq run` itself reports (from its own start, after imports). ggq's modules are byte-compiled "
              "first, as an installed package's are. Targets: cold total ≤ 6 s, warm first text ≤ 0.3 s.", ""] + t + [""]
        readme += t + [""]

    rss = res.get("rss") or {}
    if rss:
        rows = [[f, f"{r['ggq_kib'] / 1024:.0f}", f"{r['llama_kib'] / 1024:.0f}" if r.get("llama_kib") else "n/a",
                 fmt_ratio(r["ggq_kib"] / r["llama_kib"]) if r.get("llama_kib") else "n/a"] for f, r in rss.items()]
        how = "`/usr/bin/time -v`" if _executable(Path("/usr/bin/time")) else "wait4's ru_maxrss"
        t = md_table(["file", "ggq run MiB", "llama.cpp MiB", "ggq / llama.cpp"], rows)
        L += ["## Peak RSS", "",
              f"Maximum resident set size ({how}) of `ggq run FILE -p {START_PROMPT!r} -n 16 --temp 0 -c {cfg['ctx']}` "
              f"and of `llama-completion -m FILE.gguf -p ... -n 16 --temp 0 -c {cfg['ctx']} -no-cnv`, "
              f"{cfg['threads']} threads, warm caches (each measured after one warm-up run of its own). "
              f"Target: ggq ≤ llama.cpp.", ""] + t + [""]
        readme += t + [""]

    if NOTES:
        L += ["## Notes", ""] + [f"- {n}" for n in NOTES] + [""]
    L += ["## How to run", "",
          "```sh",
          "python tools/bench.py                      # all files, all parts, writes docs/bench.md",
          "python tools/bench.py --files q4_k_m,gemma3 --skip rss --readme",
          "python tools/bench.py -r 1 --pp 16 --tg 8 --files q4_k_m --no-write   # smoke test",
          "python tools/bench.py --build-llamacpp /tmp/llama   # build llama.cpp's tools first",
          "python tools/bench.py --fresh-install      # add the first run of a fresh install (venv + pip)",
          "```", "",
          "`--files` takes SmolLM2 presets (`q4_k_m`, `q8_0`, `q6_k`, any `ggq convert --type`) and `gemma3`; "
          "`--models-dir` points at a folder with the files already made (`SmolLM2-135M-Instruct.<preset>.ggq` / "
          "`.gguf`, `gemma-3-270m-q4_k_m.keep.ggq`). `--skip` leaves parts out: "
          f"{', '.join(PARTS)}. `--json PATH` keeps the raw figures. `python tools/bench.py --help` lists the rest.",
          "", "The machine is shared and noisy: compare ratios within one run, not figures across runs.", ""]
    summary = (f"Measured by `python tools/bench.py` on {info['date'][:10]} ({info.get('cpu', '?')}, "
               f"{cfg['threads']} threads, median of {cfg['rounds']} alternating rounds; details in `docs/bench.md`).\n\n"
               + "\n".join(readme))
    return "\n".join(L), summary


# ------------------------------------------------------------------------------ main

@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--files", default="q4_k_m,q8_0,q6_k,gemma3", show_default=True,
              help="Comma list: SmolLM2 presets and/or gemma3.")
@click.option("-t", "--threads", default=2, show_default=True, type=int, help="Threads for both engines.")
@click.option("--pp", "pp", default="128,512", show_default=True, help="Prompt sizes (comma list; '' = none).")
@click.option("--tg", "tg", default=64, show_default=True, type=int, help="Generated tokens (0: no tg test).")
@click.option("-r", "--rounds", default=3, show_default=True, type=int, help="Alternating rounds per file.")
@click.option("--reps", default=3, show_default=True, type=int,
              help="Repetitions inside each engine's bench call per round (after its warm-up).")
@click.option("--skip", default="", help=f"Comma list of parts to leave out: {','.join(PARTS)}.")
@click.option("--models-dir", type=click.Path(file_okay=False), help="Where the files are (made) [$GGQ_CACHE/bench].")
@click.option("--llama-bench", "llama_bench", help="llama-bench binary or its folder [$LLAMA_BENCH, known builds, PATH].")
@click.option("--build-llamacpp", "build_dir", type=click.Path(file_okay=False),
              help="Build llama.cpp's tools from the llama-cpp-python 0.3.36 sdist in DIR (outside the repo) and use them.")
@click.option("--buffers", default="16M,1G", show_default=True, help="Streaming-read buffer sizes.")
@click.option("--start-file", default="q4_k_m", show_default=True, help="File of the cold/warm start test.")
@click.option("--ctx", default=4096, show_default=True, type=int, help="Context size of the RSS runs (both engines).")
@click.option("--fresh-install", is_flag=True,
              help="Also time the first `ggq run` of a fresh install (new venv + pip install + default model fetch; "
                   "needs the package index, minutes).")
@click.option("--out", default=None, show_default="docs/bench.md", type=click.Path(dir_okay=False),
              help="Markdown report to write.")
@click.option("--no-write", is_flag=True, help="Only print the report.")
@click.option("--readme", is_flag=True, help="Replace README.md's text between <!-- bench:begin --> and <!-- bench:end -->.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the raw results here.")
@click.option("--from-json", "from_json", type=click.Path(exists=True, dir_okay=False),
              help="Measure nothing: write the report (and --readme) from results saved by --json.")
def main(files, threads, pp, tg, rounds, reps, skip, models_dir, llama_bench, build_dir, buffers, start_file, ctx,
         fresh_install, out, no_write, readme, json_path, from_json):
    """ggq against llama.cpp on the same bytes (issue 8): speed (alternating rounds), effective
    bandwidth, `ggq run` vs `ggq bench`, cold/warm start, peak RSS. Writes docs/bench.md."""
    from ggq.default_model import cache_dir

    if from_json:
        saved = json.loads(Path(from_json).read_text())
        NOTES.extend(saved.get("notes", []))
        BUILD_INFO.update(saved.get("llama_build", {}))
        return publish(saved["results"], saved["config"], saved["machine"], out, no_write, readme)

    skip_set = set(csv_list(skip))
    if skip_set - set(PARTS):
        raise click.BadParameter(f"unknown part(s) {', '.join(sorted(skip_set - set(PARTS)))}; parts: {', '.join(PARTS)}",
                                 param_hint="--skip")
    pps = [int(x) for x in csv_list(pp)]
    if rounds < 1 or reps < 1 or (not pps and tg <= 0):
        raise click.BadParameter("need rounds >= 1, reps >= 1 and at least one test")
    names = csv_list(files)
    mdir = Path(models_dir).expanduser() if models_dir else cache_dir() / "bench"
    cfg = {"threads": threads, "pp": pps, "tg": tg, "rounds": rounds, "reps": reps, "ctx": ctx}

    if build_dir:
        binary = build_llamacpp(Path(build_dir)) / "llama-bench"
    else:
        binary = find_llama_bench(llama_bench)
    bin_dir = binary.parent if binary else None
    log(f"llama-bench: {binary or 'not found (ggq only)'}")
    if binary is None:
        note("llama.cpp's llama-bench was not found: ggq only (give --llama-bench or --build-llamacpp)")
    info = machine_info(bin_dir)
    res: dict = {}

    if "bandwidth" not in skip_set:
        res["bandwidth"] = stream_bandwidth_subprocess([parse_size(s) for s in csv_list(buffers)], threads)

    paths = {n: ensure_files(n, mdir) for n in names}
    if "speed" not in skip_set:
        tests = [f"pp{p}" for p in pps] + ([f"tg{tg}"] if tg > 0 else [])
        speed = res["speed"] = {}
        for n, (g, f) in paths.items():
            r = speed[n] = {"tests": tests, "ggq": {t: [] for t in tests}, "llama": {t: [] for t in tests},
                            "run_tps": [], "run_tokens": [], "weight_bytes": file_weight_bytes(g)}
            for k in range(rounds):
                order = ["ggq", "llama"] if k % 2 == 0 else ["llama", "ggq"]
                for eng in order:
                    if eng == "llama":
                        if binary is None:
                            continue
                        got = run_llama_bench(binary, f, threads, pps, tg, reps)
                    else:
                        got = ggq_bench(g, threads, pps, tg, reps)
                    for t in tests:
                        if t in got:
                            r[eng][t].append(got[t])
                    log(f"{n} round {k + 1}/{rounds} {eng}: " + ", ".join(f"{t} {got.get(t, 0):.1f}" for t in tests))
                    if eng == "ggq" and "run" not in skip_set and tg > 0:
                        st = ggq_run(g, threads, tg, RUN_PROMPT)["stats"]
                        if "gen_tps" in st:
                            r["run_tps"].append(st["gen_tps"])
                            r["run_tokens"].append(st.get("gen_tokens"))
                            log(f"{n} round {k + 1}/{rounds} ggq run: {st.get('gen_tokens')} tok {st['gen_tps']:.1f} tok/s")
                        if st.get("gen_tokens", tg) < tg // 2:
                            note(f"{n}: `ggq run` stopped after {st.get('gen_tokens')} of {tg} tokens (end of text)")

    if "start" not in skip_set and start_file:
        g, f = paths.get(start_file) or ensure_files(start_file, mdir)
        # ggq's own modules byte-compiled, as an installed package's are (pip compiles them):
        # with PYTHONDONTWRITEBYTECODE set, as on this machine, every start would otherwise
        # compile ~25 of them from source (~50 ms) and time a setup no user has
        import compileall

        compileall.compile_dir(str(ROOT / "ggq"), quiet=1)
        log(f"start: cold `ggq run` on {g.name} (empty Numba cache)")
        with tempfile.TemporaryDirectory(prefix="ggq-numba-") as ncache:
            env = dict(os.environ, NUMBA_CACHE_DIR=ncache)
            cold = ggq_run(g, threads, 16, START_PROMPT, env=env)
            warm = [ggq_run(g, threads, 16, START_PROMPT, env=env) for _ in range(3)]
        st = res["start"] = {"file": g.name, "cold": cold, "warm": warm}
        log(f"start: cold first text {cold['first_s']:.2f} s total {cold['total_s']:.2f} s; warm first text "
            f"{min(w['first_s'] for w in warm):.2f} s total {min(w['total_s'] for w in warm):.2f} s")
        cmd = llama_generate_cmd(bin_dir, f, START_PROMPT, 16, threads, ctx) if bin_dir else None
        if cmd:
            timed_run(cmd)  # page cache warm, as ggq's warm runs are
            st["llama"] = timed_run(cmd)
        if fresh_install:
            st["fresh"] = time_fresh_install(threads)

    if "rss" not in skip_set:
        rss = res["rss"] = {}
        for n, (g, f) in paths.items():
            # one warm-up run each first: page cache and Numba's kernel cache as a user's second
            # run finds them; the first-run peak is not what this table compares
            ggq_run(g, threads, 16, START_PROMPT, ctx=ctx)
            ours = ggq_run(g, threads, 16, START_PROMPT, ctx=ctx)
            cmd = llama_generate_cmd(bin_dir, f, START_PROMPT, 16, threads, ctx) if bin_dir else None
            if cmd:
                timed_run(cmd)
            theirs = timed_run(cmd) if cmd else None
            rss[n] = {"ggq_kib": ours["rss_kib"], "llama_kib": theirs["rss_kib"] if theirs else None}
            log(f"rss {n}: ggq {ours['rss_kib'] / 1024:.0f} MiB, llama.cpp "
                f"{theirs['rss_kib'] / 1024 if theirs else float('nan'):.0f} MiB")

    info["load_end"] = os.getloadavg()
    if json_path:
        def strip(o):
            if isinstance(o, dict):
                return {str(k): strip(v) for k, v in o.items() if k not in ("stdout", "stderr")}
            return [strip(v) for v in o] if isinstance(o, list) else o
        Path(json_path).write_text(json.dumps({"config": cfg, "machine": info, "llama_build": BUILD_INFO,
                                               "notes": NOTES, "results": strip(res)}, indent=1, default=str))
    publish(res, cfg, info, out, no_write, readme)


def publish(res: dict, cfg: dict, info: dict, out: str | None, no_write: bool, readme: bool) -> None:
    text, summary = report(res, cfg, info)
    click.echo(text)
    if not no_write:
        p = Path(out) if out else ROOT / "docs" / "bench.md"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        log(f"wrote {p}")
    if readme:
        rp = ROOT / "README.md"
        new = replace_marked(rp.read_text(), summary)
        if new is None:
            click.echo(f"note: README.md has no {README_BEGIN} ... {README_END} section; not updated", err=True)
        else:
            rp.write_text(new)
            log("updated README.md between the bench markers")


if __name__ == "__main__":
    main()
