"""`ggq kld`: KL divergence of a model from a reference (float model or saved logits)."""
from __future__ import annotations

import json
import os
import sys
import time

import click

from ..errors import UsageError
from . import cli
from ._gpu import gpu_options
from .run import _load, _log, exact_option


def read_text(path) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None


def is_ref_file(path) -> bool:
    from ..quality.kld import REF_MAGIC

    try:
        with open(path, "rb") as f:
            return f.read(len(REF_MAGIC)) == REF_MAGIC
    except OSError:
        return False


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--ref", "ref", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Reference: the float model (.ggq/.gguf) of the same weights, or a file saved by --save-ref.")
@click.option("-f", "--file", "text_file", required=True, type=click.Path(dir_okay=False), help="Text file (UTF-8).")
@click.option("-c", "--ctx-size", default=512, show_default=True, type=int, help="Window length in tokens.")
@click.option("--chunks", type=int, help="Evaluate only the first N windows.")
@click.option("--protocol", type=click.Choice(["half", "full"]), default="half", show_default=True,
              help="half: score tokens c/2+1..c-1 of each window (llama-perplexity --kl-divergence); "
                   "full: tokens 1..c-1.")
@click.option("--save-ref", type=click.Path(dir_okay=False), default=None,
              help="Also save the reference's logits of the scored positions here (float32, "
                   "windows x scored x vocab x 4 bytes), for later runs' --ref.")
@click.option("-t", "--threads", type=int, help="Threads [default: all cores].")
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
@exact_option
@gpu_options
def kld(model, ref, text_file, ctx_size, chunks, protocol, save_ref, threads, as_json, exact, n_gpu_layers, device):
    """KL divergence of MODEL's next-token distribution from REF's on a text file.

    Windows as `ggq perplexity` (and llama-perplexity) cut them. Both log-softmaxes in float64.
    Prints llama-perplexity's statistics: mean KLD ± its error, percentiles, same top token %,
    PPL of both and their ratio. The reference always runs with float activations (--exact);
    MODEL with the default 8-bit activations unless --exact."""
    from ..quality.kld import evaluate, first_scored, ref_file_size

    text = read_text(text_file)
    saved = is_ref_file(ref)
    if save_ref is not None and not os.path.isdir(os.path.dirname(os.path.abspath(save_ref))):
        raise UsageError(f"{save_ref}: folder {os.path.dirname(os.path.abspath(save_ref))} does not exist")
    if saved and save_ref is not None:
        raise UsageError(f"{ref} is a saved reference already; --save-ref needs a reference model")
    m = _load(model, ctx_size, threads, n_gpu_layers=n_gpu_layers, device=device)
    m.llama.set_exact(exact)
    r = None
    if not saved:
        r = _load(ref, ctx_size, threads, n_gpu_layers=n_gpu_layers, device=device)  # -ngl for both
        r.llama.set_exact(True)
        if save_ref is not None:
            n = len(m.tokenizer.encode(text)) // ctx_size
            n = min(n, chunks) if chunks else n
            size = ref_file_size(n, ctx_size, first_scored(protocol, ctx_size), r.llama.vocab_size)
            _log(f"saving the reference logits to {save_ref} ({size / 1e6:.0f} MB)")
    t0 = time.perf_counter()

    def progress(w, n, res):
        if not as_json:
            click.echo(f"[{w + 1}/{n}] mean KLD {res.mean_kld():.6f}", err=True)
            sys.stderr.flush()

    res = evaluate(m, ref=r, ref_file=ref if saved else None, text=text, ctx=ctx_size, chunks=chunks,
                   protocol=protocol, save_ref=save_ref, on_window=progress)
    if as_json:
        click.echo(json.dumps(res.summary(), indent=1))
    else:
        click.echo(res.report())
    _log(f"{time.perf_counter() - t0:.1f} s")
