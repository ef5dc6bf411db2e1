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
  what each buys; GPU memory (peak allocated, quantized weights, file size).

Results as a Markdown table on stdout, and as JSON with --json FILE.
"""
from __future__ import annotations

import argparse
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


def measure(path: Path, device: str, n_prompt: int, n_gen: int, reps: int, **ops_kw) -> dict:
    """pp and tg tokens/s (medians over reps) with every layer and the output on `device`."""
    import torch

    from ggq.format import GGQReader
    from ggq.models import build_model
    from ggq.torch_backend import Offload
    from ggq.torch_backend.ops import TorchOps

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    ops = TorchOps(device, **ops_kw)
    reader = GGQReader(path)
    model = build_model(reader, n_ctx=max(n_prompt, 16 + n_gen, 36) + 8, offload=Offload(999, ops))
    vocab = model.vocab_size
    rng = np.random.default_rng(1)
    prompt = rng.integers(0, vocab, size=n_prompt)
    short = rng.integers(0, vocab, size=16)
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
            tok = int(model.forward([tok], 16 + i)[-1].argmax())
        _sync(device)
        tg.append(n_gen / (time.perf_counter() - t))
    weights = sum(m.data.numel() for m in model.matrices() if hasattr(m, "data"))
    out = {"pp": statistics.median(pp), "tg": statistics.median(tg), "pp_all": pp, "tg_all": tg,
           "weights_mib": weights / 2**20, "file_mib": path.stat().st_size / 2**20}
    if device.startswith("cuda"):
        out["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    reader.close()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="smollm2-q4_k_m,1.2b-q4_k_m,1.2b-q8_0",
                    help=f"comma-separated, of: {', '.join(MODELS)}")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where to write the models (default: a temporary folder)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    names = [m.strip() for m in a.models.split(",") if m.strip()]
    for n in names:
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
    results = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(a.dir or tmp)
        base.mkdir(parents=True, exist_ok=True)
        for name in names:
            t = time.perf_counter()
            path = build(base / f"{name}.ggq", *MODELS[name])
            built = time.perf_counter() - t
            res = {"build_s": built}
            for vname, kw in variants.items():
                gen = a.gen if vname == "graphs+triton" else min(a.gen, 32)
                res[vname] = measure(path, a.device, a.prompt, gen, a.reps, **kw)
                print(f"{name} [{vname}]: pp{a.prompt} {res[vname]['pp']:.1f} t/s, tg {res[vname]['tg']:.1f} t/s",
                      file=sys.stderr, flush=True)
            results["models"][name] = res
    print(f"\n{results['device']}, torch {results['torch']}, every layer and the output offloaded (-ngl 999)\n")
    print(f"| model | file MiB | weights on device MiB | peak MiB | pp{a.prompt} t/s | tg t/s | "
          "tg without graphs | tg without Triton |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|")
    for name, res in results["models"].items():
        m = res["graphs+triton"]
        ng = res.get("no graphs", {}).get("tg")
        nt = res.get("no triton (tile decode)", {}).get("tg")
        print(f"| {name} | {m['file_mib']:.1f} | {m['weights_mib']:.1f} | {m.get('peak_mib', float('nan')):.1f} | "
              f"{m['pp']:.1f} | {m['tg']:.1f} | {'' if ng is None else f'{ng:.1f}'} | "
              f"{'' if nt is None else f'{nt:.1f}'} |")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
