"""`ggq calibrate`: activation statistics of a model on sample text -> llama.cpp imatrix GGUF."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click

from ..errors import UsageError
from . import cli
from .run import _load, _log


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-f", "--file", "text_file", required=True, type=click.Path(dir_okay=False), help="Calibration text (UTF-8).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Output importance matrix (llama.cpp's imatrix GGUF; llama-quantize --imatrix reads it).")
@click.option("-c", "--ctx-size", default=512, show_default=True, type=int, help="Chunk length in tokens.")
@click.option("--chunks", type=int, help="Use only the first N chunks.")
@click.option("--process-output/--no-process-output", default=True, show_default=True,
              help="Also record the output product's input, under output.weight, or token_embd.weight when the "
                   "embeddings are tied (ggq only). llama-imatrix records it only with --process-output; ggq does "
                   "by default because GPTQ on the output matrix pays (docs/quality.md).")
@click.option("--hessian", is_flag=True,
              help="Also store each input's full X^T X (tensors <name>.in_cov, which llama.cpp skips) for "
                   "`ggq convert --method gptq`. Large: cols^2 x 4 bytes per matrix.")
@click.option("-t", "--threads", type=int, help="Threads [default: all cores].")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
def calibrate(model, text_file, output, ctx_size, chunks, process_output, hessian, threads, force):
    """Record, for every linear layer of MODEL, the per-column sum of squared inputs over TEXT.

    As llama-imatrix: the text is tokenized whole (no special tokens), cut into chunks of -c
    tokens (the remainder dropped), each run alone from an empty cache (its first token
    replaced by BOS when the model adds one); every token of every chunk counts. Float
    activations throughout. The file is llama.cpp's imatrix GGUF (spec/IMATRIX.md): use it
    with `ggq convert --imatrix` or llama-quantize --imatrix."""
    from ..quality.imatrix import collect, write_imatrix
    from ..quality.kld import text_windows
    from .kld import read_text

    if output.is_dir():
        raise UsageError(f"{output}: is a folder; give a file name such as imatrix.gguf")
    if not output.resolve().parent.is_dir():  # before the collection run, not after it
        raise UsageError(f"{output}: folder {output.resolve().parent} does not exist")
    if not force and os.path.lexists(output):
        raise UsageError(f"{output} already exists; refusing to overwrite it (use --force)")
    text = read_text(text_file)
    m = _load(model, ctx_size, threads)
    import numpy as np

    toks = np.asarray(m.tokenizer.encode(text), dtype=np.int64)
    bos = m.tokenizer.bos_id if m.tokenizer.add_bos else None
    wins = text_windows(toks, ctx_size, bos, chunks)
    if not wins:
        raise UsageError(f"{text_file}: {len(toks)} tokens, fewer than one chunk of {ctx_size}")
    _log(f"{m.path.name}: {len(toks)} tokens, {len(wins)} chunks of {ctx_size}")
    t0 = time.perf_counter()
    tty = sys.stderr.isatty()

    def progress(i, n):
        if tty:
            frac = (i + 1) / n
            el = time.perf_counter() - t0
            sys.stderr.write(f"\r[{'#' * int(30 * frac):<30}] {i + 1}/{n} chunks  {el:6.1f}s  "
                             f"ETA {el / (i + 1) * (n - i - 1):6.1f}s")
            sys.stderr.flush()

    im = collect(m, wins, process_output=process_output, dataset=str(text_file), on_window=progress,
                 hessian=hessian)
    if tty:
        sys.stderr.write("\n")
    write_imatrix(output, im)
    _log(f"wrote {output}: {len(im.sums)} matrices, {len(wins)} chunks x {ctx_size} tokens "
         f"in {time.perf_counter() - t0:.1f} s")
