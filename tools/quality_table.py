#!/usr/bin/env python3
"""Quality per bit: for each preset, ggq's file (and optionally llama-quantize's of the same
weights), bits per weight, file size, PPL, PPL ratio, mean KLD and same-top % against the float
model, without and with an importance matrix. Prints a markdown table (and --json rows).

    python tools/quality_table.py FLOAT_MODEL.ggq -f HELDOUT.txt [--calib CALIB.txt]
        [--presets q6_k,q5_k_m,...] [--chunks 8] [--calib-chunks 16] [--llama-cpp BIN_DIR]
        [--methods none,imatrix,gptq] [--workdir DIR]

FLOAT_MODEL is a float .ggq or .gguf (e.g. tools/offgrid_model.py's, the issue's fair
yardstick); a .ggq is exported to GGUF once, the conversion source for both tools. The importance
matrix comes from the same calibration text, chunks and context for both: `ggq calibrate
--hessian` (ggq) and llama-imatrix (llama.cpp). Every file is judged by the same evaluator,
`ggq kld` (float64, llama-perplexity's `half` protocol, the reference's logits computed once and
reused), with the default 8-bit activations unless --exact. Held-out text: never the calibration
text. Files and the reference logits go to --workdir (kept: reruns reuse what exists, the
importance matrices included: delete them, and the files made with them, when the calibration
settings change).

bits per weight = 8 x (bytes of all tensors) / (all parameters), norms included, the same rule
for both tools' files.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_PRESETS = "q8_0,q6_k,q5_k_m,q4_k_m,q4_k_s,q3_k_m,q2_k"
LLAMA_FTYPE = {"q8_0": "Q8_0", "q6_k": "Q6_K", "q5_k_m": "Q5_K_M", "q5_k_s": "Q5_K_S", "q4_k_m": "Q4_K_M",
               "q4_k_s": "Q4_K_S", "q3_k_m": "Q3_K_M", "q2_k": "Q2_K", "q4_0": "Q4_0", "q4_1": "Q4_1",
               "q5_0": "Q5_0", "q5_1": "Q5_1", "iq4_nl": "IQ4_NL", "iq4_xs": "IQ4_XS"}


def llama_preset(p: str) -> str:
    """The llama.cpp preset a ggq preset is compared with: a *_mix preset (ggq's mixture at
    llama.cpp's size) or a *_fit preset (ggq's, at the budget the name asks for) against the
    llama.cpp preset of the same name."""
    for suffix in ("_mix", "_fit"):
        if p.endswith(suffix):
            return p[:-len(suffix)]
    return p


def log(msg: str) -> None:
    print(f"[quality] {msg}", file=sys.stderr, flush=True)


def run(cmd, logfile: Path) -> None:
    log(" ".join(str(c) for c in cmd))
    with open(logfile, "w") as out:
        r = subprocess.run([str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT)
    if r.returncode:
        tail = Path(logfile).read_text()[-2000:] if logfile else ""
        raise SystemExit(f"failed ({r.returncode}): {' '.join(map(str, cmd))}\n{tail}")


def bits_per_weight(path: Path) -> tuple[float, int]:
    """(bpw over all tensors, file size) of a .ggq or .gguf."""
    if path.suffix == ".gguf":
        import gguf

        r = gguf.GGUFReader(str(path))
        nbytes = sum(int(t.n_bytes) for t in r.tensors)
        params = sum(int(t.n_elements) for t in r.tensors)
    else:
        from ggq.format import GGQReader

        with GGQReader(path) as r:
            nbytes = sum(t.nbytes for t in r.tensors.values())
            params = sum(int(np.prod(t.shape)) for t in r.tensors.values())
    return 8.0 * nbytes / params, path.stat().st_size


@click.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-f", "--file", "text", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Held-out evaluation text.")
@click.option("--calib", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Calibration text (for the importance matrices); omit for the no-imatrix rows only.")
@click.option("--presets", default=DEFAULT_PRESETS, show_default=True)
@click.option("--methods", default="none,imatrix,gptq", show_default=True,
              help="ggq rows: none (no imatrix), imatrix (--method imatrix), gptq (--method gptq).")
@click.option("-c", "--ctx-size", default=512, show_default=True)
@click.option("--chunks", default=8, show_default=True, help="Evaluation windows.")
@click.option("--calib-chunks", default=16, show_default=True, help="Calibration chunks (both tools).")
@click.option("--llama-cpp", "llama_bin", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Folder with llama-quantize and llama-imatrix: adds llama.cpp's rows.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path("quality-work"), show_default=True)
@click.option("-t", "--threads", type=int, default=None)
@click.option("--exact", is_flag=True, help="Evaluate with float activations.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None)
def main(model, text, calib, presets, methods, ctx_size, chunks, calib_chunks, llama_bin, workdir, threads,
         exact, json_out):
    from ggq.api import load
    from ggq.quality.kld import evaluate

    workdir.mkdir(parents=True, exist_ok=True)
    presets = [p.strip() for p in presets.split(",") if p.strip()]
    methods = [m.strip() for m in methods.split(",") if m.strip()]
    if calib is None:
        methods = [m for m in methods if m == "none"]
    if calib is not None and calib.resolve() == text.resolve():
        raise SystemExit("the calibration text must not be the evaluation text")
    ggq = [sys.executable, "-m", "ggq"]
    thr = ["-t", str(threads)] if threads else []

    # importance matrices, same text and chunks for both
    ggq_im = workdir / "ggq.imatrix.gguf"
    if calib is not None and not ggq_im.exists():
        run(ggq + ["calibrate", model, "-f", calib, "-o", ggq_im, "-c", ctx_size, "--chunks", calib_chunks,
                   "--hessian", "--force"] + thr, workdir / "ggq.calibrate.log")
    # the conversion source for both tools (ggq convert reads GGUF, not .ggq)
    model_gguf = model if model.suffix == ".gguf" else workdir / (model.stem + ".gguf")
    if not model_gguf.exists():
        run(ggq + ["export", model, "-o", model_gguf, "--force"], workdir / "export.log")
    llama_im = None
    if llama_bin is not None:
        if calib is not None:
            llama_im = workdir / "llama.imatrix.gguf"
            if not llama_im.exists():
                # --process-output: the same matrices as `ggq calibrate`'s default where the model
                # has an output.weight (with tied embeddings llama-imatrix records none of it)
                run([llama_bin / "llama-imatrix", "-m", model_gguf, "-f", calib, "-c", ctx_size, "-b", ctx_size,
                     "--chunks", calib_chunks, "-o", llama_im, "--no-ppl", "--process-output"] + thr,
                    workdir / "llama-imatrix.log")

    done_llama: set[str] = set()

    def files():  # (tool, preset, variant, path), each converted when first needed
        for p in presets:
            for m in methods:
                out = workdir / f"ggq.{p}.{m}.ggq"
                if not out.exists():
                    extra = [] if m == "none" else ["--imatrix", ggq_im, "--method", m]
                    run(ggq + ["convert", model_gguf, "-t", p, "-o", out, "--force"] + extra, workdir / f"{out.name}.log")
                yield ("ggq", p, m, out)
            lp = llama_preset(p)
            if llama_bin is not None and lp not in done_llama:
                done_llama.add(lp)
                for m in (["none"] + (["imatrix"] if llama_im else [])):
                    out = workdir / f"llama.{lp}.{m}.gguf"
                    if not out.exists():
                        extra = [] if m == "none" else ["--imatrix", llama_im]
                        run([llama_bin / "llama-quantize"] + extra + [model_gguf, out, LLAMA_FTYPE[lp]] + thr[1:],
                            workdir / f"{out.name}.log")
                    yield ("llama.cpp", lp, m, out)

    # one reference, saved once
    ref_file = workdir / f"ref.c{ctx_size}.n{chunks}.{text.stem}.kldref"
    body = text.read_text(encoding="utf-8")
    rows = []
    ref = None
    for tool, p, m, path in files():
        t0 = time.time()
        cached = path.with_name(f"{path.name}.{ref_file.stem}{'.exact' if exact else ''}.json")
        if cached.exists() and cached.stat().st_mtime > path.stat().st_mtime:
            rows.append(json.loads(cached.read_text()))
            continue
        q = load(path, n_ctx=ctx_size, threads=threads)
        q.llama.set_exact(exact)
        if ref_file.exists():
            res = evaluate(q, ref_file=ref_file, text=body, ctx=ctx_size, chunks=chunks)
        else:
            ref = ref or load(model, n_ctx=ctx_size, threads=threads)
            ref.llama.set_exact(True)
            res = evaluate(q, ref=ref, text=body, ctx=ctx_size, chunks=chunks, save_ref=ref_file)
        d = res.summary()
        bpw, size = bits_per_weight(path)
        rows.append({"tool": tool, "preset": p, "imatrix": m, "file": path.name, "bpw": bpw, "size": size, **d})
        cached.write_text(json.dumps(rows[-1]))
        log(f"{tool} {p} {m}: bpw {bpw:.3f} KLD {d['kld_mean']:.5f} ± {d['kld_err']:.5f} "
            f"PPL {d['ppl']:.3f} same-top {100 * d['same_top']:.2f}% ({time.time() - t0:.0f} s)")
        q.close()
        if json_out:
            json_out.write_text(json.dumps(rows, indent=1))

    print(f"\nKLD vs the float model ({chunks} windows of {ctx_size}, second halves scored: "
          f"{rows[0]['tokens']} tokens of {text.name}); PPL of the float model {rows[0]['ppl_ref']:.3f}\n")
    print("| preset | tool | imatrix | bpw | size MB | PPL | PPL ratio | mean KLD | same top % |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['preset']} | {r['tool']} | {r['imatrix']} | {r['bpw']:.3f} | {r['size'] / 1e6:.1f} | "
              f"{r['ppl']:.3f} | {r['ppl_ratio']:.4f} | {r['kld_mean']:.5f} ± {r['kld_err']:.5f} | "
              f"{100 * r['same_top']:.2f} |")
    if llama_bin is not None:
        print("\n| preset | imatrix | bpw ggq / llama.cpp | KLD ggq / llama.cpp | ratio |")
        print("|---|---|---|---|---:|")
        by = {(r["tool"], r["preset"], r["imatrix"]): r for r in rows}
        for p in presets:
            for m in methods:
                lm = "none" if m == "none" else "imatrix"
                a, b = by.get(("ggq", p, m)), by.get(("llama.cpp", llama_preset(p), lm))
                if a and b:
                    print(f"| {p} | {m} | {a['bpw']:.2f} / {b['bpw']:.2f} | {a['kld_mean']:.5f} / "
                          f"{b['kld_mean']:.5f} | {a['kld_mean'] / b['kld_mean']:.2f}x |")


if __name__ == "__main__":
    main()
