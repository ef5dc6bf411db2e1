"""Speed of layer offload (-ngl) on synthetic random-weight llamas built on the spot.

    python tools/gpu_bench.py                       # CUDA: SmolLM2-shaped q4_k_m, 1.2B q4_k_m and q8_0
    python tools/gpu_bench.py --models tiny --device cpu --reps 1    # the tool's own check, anywhere

The GPU machine cannot receive a real model, so each model is written here with ggq's own
writer: every matrix gets the type ggq's preset gives it (ggq.convert.presets.plan_types) and
bytes made by ggq's quantizer from random weights (a sample of rows quantized, then repeated to
the full height: the kernels' work does not depend on the values). For each model, with every
layer and the output matrix offloaded (-ngl 999):

- pp512: one 512-token prompt, tokens/s; tg128: 128 one-token steps after a short prompt;
- the same decode without CUDA graphs, and without the Triton kernels (tile decode), to show
  what each buys; GPU memory (peak allocated, quantized weights, file size);
- what users would pick instead, in the same run: transformers' LlamaForCausalLM of the same
  shapes in float16 (random weights), its prefill of the same prompt (logits of the last
  position only, as ggq computes), `generate()` greedy, and a hand loop over its KV cache.

--sweep MODEL also runs that model with -ngl 0 (the CPU engine alone), half the layers, and all;
--profile MODEL writes torch profiler tables (a prompt, and decode steps without graphs) to
--profile-out, and states the GPU's busy time per step against the wall time.

Results as a Markdown table on stdout, and as JSON with --json FILE (rewritten after each model,
so a run cut short keeps what it measured).
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# name -> (dim, layers, ffn, heads, kv_heads, vocab, preset)
MODELS = {
    "smollm2-q4_k_m": (576, 30, 1536, 9, 3, 49152, "q4_k_m"),
    "1.2b-q4_k_m": (2048, 16, 8192, 32, 8, 128256, "q4_k_m"),
    "1.2b-q8_0": (2048, 16, 8192, 32, 8, 128256, "q8_0"),
    "tiny": (256, 2, 512, 4, 2, 512, "q4_k_m"),
}
SAMPLE_ROWS = 32


def build(path: Path, dim, layers, ffn, heads, kv, vocab, preset, seed=0) -> Path:
    """A llama .ggq of these shapes with random weights in the preset's types."""
    from ggq.convert.presets import plan_types
    from ggq.format import GGQWriter
    from ggq.quants import get_type

    hd = dim // heads
    shapes = {"token_embd.weight": (vocab, dim), "output_norm.weight": (dim,)}
    for i in range(layers):
        p = f"blk.{i}."
        shapes.update({p + "attn_norm.weight": (dim,), p + "attn_q.weight": (heads * hd, dim),
                       p + "attn_k.weight": (kv * hd, dim), p + "attn_v.weight": (kv * hd, dim),
                       p + "attn_output.weight": (dim, heads * hd), p + "ffn_norm.weight": (dim,),
                       p + "ffn_gate.weight": (ffn, dim), p + "ffn_up.weight": (ffn, dim),
                       p + "ffn_down.weight": (dim, ffn)})
    types = plan_types(shapes, preset, n_layers=layers, n_head=heads, n_head_kv=kv, tied=True)
    md = {"general.architecture": ("llama", "str"), "general.name": (path.stem, "str"),
          "llama.block_count": (layers, "u32"), "llama.embedding_length": (dim, "u32"),
          "llama.feed_forward_length": (ffn, "u32"), "llama.attention.head_count": (heads, "u32"),
          "llama.attention.head_count_kv": (kv, "u32"), "llama.attention.key_length": (hd, "u32"),
          "llama.attention.layer_norm_rms_epsilon": (1e-5, "f32"), "llama.rope.freq_base": (10000.0, "f32"),
          "llama.rope.scaling.type": ("none", "str"), "llama.context_length": (4096, "u32"),
          "llama.vocab_size": (vocab, "u32"), "llama.tie_word_embeddings": (True, "bool")}
    rng = np.random.default_rng(seed)
    with GGQWriter(path, force=True) as w:
        for k, (v, vt) in md.items():
            w.add_metadata(k, v, vt)
        for name, shape in shapes.items():
            w.add_tensor(name, get_type(types[name]), shape)
        for name, shape in shapes.items():
            qt = get_type(types[name])
            if len(shape) == 1:
                w.write_tensor(name, (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32))
                continue
            rows, cols = shape
            sample = (rng.standard_normal((min(rows, SAMPLE_ROWS), cols)) * 0.02).astype(np.float32)
            q = qt.quantize(sample)
            w.write_tensor(name, np.resize(q, (rows, q.shape[1])))
    return path


def _sync(dev):
    import torch

    if dev.startswith("cuda"):
        torch.cuda.synchronize()


def measure(path: Path, device: str, n_prompt: int, n_gen: int, reps: int, ngl: int = 999, depth: int = 16,
            **ops_kw) -> dict:
    """pp and tg tokens/s (medians over reps) with the last ngl layers (999: every layer and the
    output) on `device`; ngl 0: the CPU engine alone. Decode steps follow a prompt of depth tokens."""
    import torch

    from ggq.format import GGQReader
    from ggq.models import build_model
    from ggq.torch_backend import Offload
    from ggq.torch_backend.ops import TorchOps

    base = 0
    if device.startswith("cuda"):  # peak of this measurement alone: what earlier ones left is freed first
        gc.collect()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    reader = GGQReader(path)
    offload = Offload(ngl, TorchOps(device, **ops_kw)) if ngl else None
    model = build_model(reader, n_ctx=max(n_prompt, depth + n_gen, 36) + 8, offload=offload)
    vocab = model.vocab_size
    rng = np.random.default_rng(1)
    prompt = rng.integers(0, vocab, size=n_prompt)
    short = rng.integers(0, vocab, size=depth)
    model.forward(prompt[:32], 0)                       # warm-up: kernels, graphs
    for i in range(3):
        model.forward(short[i:i + 1], 32 + i)
    pp, tg = [], []
    for _ in range(reps):
        _sync(device)
        t = time.perf_counter()
        model.forward(prompt, 0)
        _sync(device)
        pp.append(n_prompt / (time.perf_counter() - t))
        logits = model.forward(short, 0)
        tok = int(logits[-1].argmax())
        _sync(device)
        t = time.perf_counter()
        for i in range(n_gen):
            tok = int(model.forward([tok], depth + i)[-1].argmax())
        _sync(device)
        tg.append(n_gen / (time.perf_counter() - t))
    weights = sum(m.data.numel() for m in model.matrices() if hasattr(m, "data"))
    out = {"ngl": ngl, "pp": statistics.median(pp), "tg": statistics.median(tg), "pp_all": pp, "tg_all": tg,
           "weights_mib": weights / 2**20, "file_mib": path.stat().st_size / 2**20}
    if device.startswith("cuda"):
        out["peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        out["held_before_mib"] = base / 2**20
    del model, offload
    reader.close()
    gc.collect()
    return out


def measure_transformers(shape, device: str, n_prompt: int, n_gen: int, reps: int) -> dict:
    """transformers' LlamaForCausalLM of these shapes in float16 on device, random weights:
    prefill tokens/s (last position's logits), generate() and a hand loop over its cache, tok/s."""
    import torch
    import transformers

    dim, layers, ffn, heads, kv, vocab, _ = shape
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=dim, intermediate_size=ffn,
                                   num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                                   max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0,
                                   tie_word_embeddings=True, bos_token_id=None, eos_token_id=None,
                                   pad_token_id=None)
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.LlamaForCausalLM(cfg).to(torch.float16).eval()
    prompt = torch.randint(0, vocab, (1, n_prompt), device=device)
    short = prompt[:, :16]
    pp, gen, loop = [], [], []
    with torch.inference_mode():
        def prefill():
            try:
                return model(prompt, logits_to_keep=1)
            except TypeError:  # an older transformers
                return model(prompt)

        prefill()
        model.generate(short, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        for _ in range(reps):
            _sync(device)
            t = time.perf_counter()
            prefill()
            _sync(device)
            pp.append(n_prompt / (time.perf_counter() - t))
            t = time.perf_counter()
            model.generate(short, max_new_tokens=n_gen, min_new_tokens=n_gen, do_sample=False)
            _sync(device)
            gen.append(n_gen / (time.perf_counter() - t))
            out = model(short, use_cache=True)
            tok = out.logits[:, -1:].argmax(-1)
            _sync(device)
            t = time.perf_counter()
            for _ in range(n_gen):
                out = model(tok, past_key_values=out.past_key_values, use_cache=True)
                tok = out.logits[:, -1:].argmax(-1)
            _sync(device)
            loop.append(n_gen / (time.perf_counter() - t))
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {"transformers": transformers.__version__, "pp": statistics.median(pp), "generate": statistics.median(gen),
            "loop": statistics.median(loop), "pp_all": pp, "generate_all": gen, "loop_all": loop}


def profile(path: Path, device: str, n_prompt: int, out: Path) -> dict:
    """torch profiler tables of one prompt and of 8 decode steps without graphs (op by op), and the
    GPU's busy time per decode step, with and without graphs, against the wall time."""
    import torch
    from torch.profiler import ProfilerActivity, profile as tprofile

    from ggq.format import GGQReader
    from ggq.models import build_model
    from ggq.torch_backend import Offload
    from ggq.torch_backend.ops import TorchOps

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    sort = "cuda_time_total" if device.startswith("cuda") else "cpu_time_total"
    res, text = {}, []
    for graphs in (False, True):
        ops = TorchOps(device, graphs=graphs) if device.startswith("cuda") else TorchOps(device)
        reader = GGQReader(path)
        model = build_model(reader, n_ctx=n_prompt + 64, offload=Offload(999, ops))
        prompt = np.random.default_rng(2).integers(0, model.vocab_size, size=n_prompt)
        model.forward(prompt, 0)
        for i in range(3):
            model.forward([5], n_prompt + i)
        _sync(device)
        if not graphs:
            with tprofile(activities=acts) as prof:
                model.forward(prompt, 0)
                _sync(device)
            text.append(f"## one {n_prompt}-token prompt\n\n" + prof.key_averages().table(sort_by=sort, row_limit=20))
        steps = 8
        with tprofile(activities=acts) as prof:
            t = time.perf_counter()
            for i in range(steps):
                model.forward([5], n_prompt + 3 + i)
            _sync(device)
            wall = (time.perf_counter() - t) / steps
        busy = sum(getattr(e, "self_device_time_total", 0.0) for e in prof.key_averages()) / steps / 1e3
        name = "graphs" if graphs else "op by op"
        res[name] = {"wall_ms": wall * 1e3, "gpu_busy_ms": busy}
        text.append(f"## {steps} decode steps, {name}: wall {wall * 1e3:.3f} ms/step (under the profiler), "
                    f"GPU busy {busy:.3f} ms/step\n\n" + prof.key_averages().table(sort_by=sort, row_limit=25))
        del model
        reader.close()
    out.write_text("\n\n".join(text) + "\n")
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="smollm2-q4_k_m,1.2b-q4_k_m,1.2b-q8_0",
                    help=f"comma-separated, of: {', '.join(MODELS)}")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--depth", type=int, default=16, help="decode after a prompt of this many tokens")
    ap.add_argument("--no-transformers", action="store_true", help="skip transformers' figures")
    ap.add_argument("--sweep", default="smollm2-q4_k_m", help="model run with -ngl 0, half and all ('' for none)")
    ap.add_argument("--profile", default="smollm2-q4_k_m", help="model to profile ('' for none)")
    ap.add_argument("--profile-out", default="gpu_profile.txt")
    ap.add_argument("--dir", default=None, help="where to write the models (default: a temporary folder)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    names = [m.strip() for m in a.models.split(",") if m.strip()]
    for n in names + [x for x in (a.sweep, a.profile) if x]:
        if n not in MODELS:
            ap.error(f"unknown model {n!r} (known: {', '.join(MODELS)})")
    import torch

    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_bench: no CUDA device here; use --device cpu for the tool's own check", file=sys.stderr)
        return 2
    cuda = a.device.startswith("cuda")
    variants = {"graphs+triton": {}}
    if cuda:
        variants["no graphs"] = {"graphs": False}
        variants["no triton (tile decode)"] = {"triton": None}
    results = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__, "depth": a.depth,
               "models": {}, "transformers": {}, "sweep": {}, "profile": {}}

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    def save():
        if a.json:
            Path(a.json).write_text(json.dumps(results, indent=1))

    def stage(what, fn):
        """One measurement; a failure is logged and recorded, and the rest still runs."""
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - a benchmark reports and goes on
            log(f"{what}: FAILED: {type(e).__name__}: {e}")
            results.setdefault("failures", []).append(f"{what}: {type(e).__name__}: {e}")
            return None

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(a.dir or tmp)
        base.mkdir(parents=True, exist_ok=True)
        paths = {}

        def model_path(name):
            if name not in paths:
                t = time.perf_counter()
                paths[name] = build(base / f"{name}.ggq", *MODELS[name])
                log(f"{name}: built in {time.perf_counter() - t:.1f} s")
            return paths[name]

        for name in names:
            path = stage(f"{name} build", lambda: model_path(name))
            if path is None:
                continue
            res = results["models"][name] = {}
            for vname, kw in variants.items():
                gen = a.gen if vname == "graphs+triton" else min(a.gen, 32)
                r = stage(f"{name} [{vname}]", lambda: measure(path, a.device, a.prompt, gen, a.reps, depth=a.depth,
                                                                 **kw))
                if r is not None:
                    res[vname] = r
                    log(f"{name} [{vname}]: pp{a.prompt} {r['pp']:.1f} t/s, tg {r['tg']:.1f} t/s")
            shape = MODELS[name][:6]
            key = "x".join(map(str, shape))
            if not a.no_transformers and key not in results["transformers"]:
                r = stage(f"transformers {key}", lambda: measure_transformers(MODELS[name], a.device, a.prompt,
                                                                             a.gen, a.reps))
                if r is not None:
                    results["transformers"][key] = r
                    log(f"transformers {key}: pp{a.prompt} {r['pp']:.1f} t/s, generate {r['generate']:.1f} t/s, "
                        f"loop {r['loop']:.1f} t/s")
            save()
        if a.sweep:
            path = stage(f"{a.sweep} build", lambda: model_path(a.sweep))
            n_layers = MODELS[a.sweep][1]
            for ngl in ((0, n_layers // 2, 999) if path else ()):
                r = stage(f"{a.sweep} -ngl {ngl}", lambda: measure(path, a.device, a.prompt, min(a.gen, 64), a.reps, ngl))
                if r is not None:
                    results["sweep"][str(ngl)] = r
                    log(f"{a.sweep} -ngl {ngl}: pp{a.prompt} {r['pp']:.1f} t/s, tg {r['tg']:.1f} t/s")
                save()
        if a.profile:
            path = stage(f"{a.profile} build", lambda: model_path(a.profile))
            r = path and stage(f"profile {a.profile}", lambda: profile(path, a.device, a.prompt, Path(a.profile_out)))
            if r:
                results["profile"] = {"model": a.profile, **r}
            save()

    print(f"\n{results['device']}, torch {results['torch']}, every layer and the output offloaded (-ngl 999); "
          f"decode after {a.depth} tokens\n")
    print(f"| model | file MiB | weights on device MiB | peak MiB | pp{a.prompt} t/s | tg t/s | "
          "tg without graphs | tg without Triton |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|")
    for name, res in results["models"].items():
        m = res.get("graphs+triton")
        if m is None:
            continue
        ng = res.get("no graphs", {}).get("tg")
        nt = res.get("no triton (tile decode)", {}).get("tg")
        print(f"| {name} | {m['file_mib']:.1f} | {m['weights_mib']:.1f} | {m.get('peak_mib', float('nan')):.1f} | "
              f"{m['pp']:.1f} | {m['tg']:.1f} | {'' if ng is None else f'{ng:.1f}'} | "
              f"{'' if nt is None else f'{nt:.1f}'} |")
    if results["transformers"]:
        v = next(iter(results["transformers"].values()))["transformers"]
        print(f"\nAgainst transformers {v} (float16, same shapes, random weights), same run:\n")
        print(f"| model | ggq pp{a.prompt} | transformers pp{a.prompt} | ratio | ggq tg | transformers generate() | "
              "transformers cache loop |")
        print("|---|--:|--:|--:|--:|--:|--:|")
        for name, res in results["models"].items():
            m = res.get("graphs+triton")
            h = results["transformers"].get("x".join(map(str, MODELS[name][:6])))
            if m is None or h is None:
                continue
            print(f"| {name} | {m['pp']:.0f} | {h['pp']:.0f} | {m['pp'] / h['pp']:.2f}x | {m['tg']:.1f} | "
                  f"{h['generate']:.1f} | {h['loop']:.1f} |")
    if results["sweep"]:
        print(f"\n{a.sweep}, layers on the GPU (-ngl; 0 is the CPU engine alone):\n")
        print(f"| -ngl | pp{a.prompt} t/s | tg t/s | peak GPU MiB |")
        print("|--:|--:|--:|--:|")
        for ngl, r in results["sweep"].items():
            print(f"| {ngl} | {r['pp']:.1f} | {r['tg']:.1f} | {r.get('peak_mib', 0.0):.1f} |")
    if results["profile"]:
        p = results["profile"]
        print(f"\nprofile of {p['model']} decode (ms per step, under the profiler; tables in {a.profile_out}):")
        for k in ("op by op", "graphs"):
            if k in p:
                print(f"- {k}: wall {p[k]['wall_ms']:.3f}, GPU busy {p[k]['gpu_busy_ms']:.3f}")
    if results.get("failures"):
        print("\nFAILED: " + "; ".join(results["failures"]))
    save()
    return 1 if results.get("failures") else 0


if __name__ == "__main__":
    sys.exit(main())
