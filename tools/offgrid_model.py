#!/usr/bin/env python3
"""The fair yardstick of issue 10: a float32 model whose weights are moved off the grid they
were quantized on, so that no quantizer is flattered by landing back on it.

    python tools/offgrid_model.py SOURCE.ggq|.gguf -o OUT.ggq [--seed 20250710] [--gguf OUT.gguf]

Every matrix (2-D tensor) gets uniform noise of one grid step, U(-d/2, d/2) per weight, with d
its 32-element block's step in the source: (max - min)/15 for Q4_1/Q4_0/Q5 blocks seen as a
16-level grid (the issue's definition for SmolLM2's Q4_1 file), absmax/127 for Q8_0 blocks (the
embedding). Norm weights (1-D) are left alone. Written as F32; --gguf also exports it for llama.cpp.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SKIP_KEYS = ("quantization.", "general.file_type", "general.preset")


def block_step(x: np.ndarray, source_type: str) -> np.ndarray:
    """(rows, cols) -> (rows, cols // 32) grid step per 32-element block."""
    b = x.reshape(x.shape[0], -1, 32)
    if source_type == "Q8_0":
        return np.abs(b).max(axis=2) / 127.0
    return (b.max(axis=2) - b.min(axis=2)) / 15.0


@click.command()
@click.argument("source", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
@click.option("--seed", default=20250710, show_default=True)
@click.option("--gguf", "gguf_out", type=click.Path(dir_okay=False), default=None)
def main(source, output, seed, gguf_out):
    from ggq.api import resolve_model_path
    from ggq.format import GGQReader, GGQWriter

    src = resolve_model_path(source)  # a .gguf is imported with its types kept
    rng = np.random.default_rng(seed)
    with GGQReader(src) as r, GGQWriter(output, force=True) as w:
        for k, v in r.metadata.items():
            if not k.startswith(SKIP_KEYS):
                w.add_metadata(k, v, r.metadata_types[k])
        w.add_metadata("general.preset", "f32", "string")
        w.add_metadata("general.offgrid_seed", int(seed), "u32")
        for name, info in r.tensors.items():
            w.add_tensor(name, "F32", info.shape)
        for name, info in r.tensors.items():
            x = r.dequantize(name).astype(np.float32)
            if len(info.shape) == 2:
                d = block_step(x, info.qtype.name)
                noise = rng.uniform(-0.5, 0.5, size=x.shape) * np.repeat(d, 32, axis=1)
                x = (x + noise).astype(np.float32)
                print(f"{name:28s} {info.qtype.name:5s} mean step {d.mean():.3g}", file=sys.stderr)
            w.write_tensor(name, x.reshape(-1, info.shape[-1]).view(np.uint8))
    print(f"wrote {output}", file=sys.stderr)
    if gguf_out:
        from ggq.gguf_io import export_gguf

        export_gguf(Path(output), Path(gguf_out), force=True)
        print(f"wrote {gguf_out}", file=sys.stderr)


if __name__ == "__main__":
    main()
