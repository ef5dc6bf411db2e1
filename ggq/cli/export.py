"""`ggq export`: write a .ggq model as a llama.cpp-compatible GGUF file."""
from __future__ import annotations

import time
from pathlib import Path

import click

from . import cli


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Output .gguf file.")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
def export(model: Path, output: Path, force: bool) -> None:
    """Export MODEL (.ggq) to GGUF v3 for llama.cpp and friends.

    Tensors are copied without requantizing; attn_q/attn_k rows are reordered into llama.cpp's
    rotary layout; the embedded tokenizer and chat template are written in GGUF form."""
    from ..errors import UsageError
    from ..gguf_io import export_gguf

    if not model.exists():
        raise UsageError(f"{model}: no such file")
    t0 = time.perf_counter()
    out = export_gguf(model, output, force=force)
    mb = out.stat().st_size / 1e6
    click.echo(f"wrote {out} ({mb:.1f} MB) in {time.perf_counter() - t0:.1f} s", err=True)
