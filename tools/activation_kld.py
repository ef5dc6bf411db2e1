#!/usr/bin/env python3
"""What 8-bit activations cost: KL divergence of ggq's default prompt path (activations
quantized to int8 per 32 in every matmul, as llama.cpp does) against exact mode (float
activations, same weights) on a text file.

    python tools/activation_kld.py MODEL.ggq TEXT [-c 512] [--windows 16]

Non-overlapping windows of -c tokens from the start of the text, each evaluated alone (its first
token replaced by BOS when the model adds one, as `ggq perplexity` does); every position of
every window is scored. Prints mean KLD(exact || default) in nats, its 99th
percentile and maximum, how often the top-1 token agrees, and both perplexities.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


@click.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.argument("text", type=click.Path(exists=True, dir_okay=False))
@click.option("-c", "--ctx-size", default=512, show_default=True)
@click.option("--windows", default=16, show_default=True, help="Windows to evaluate (0: all).")
@click.option("-t", "--threads", type=int, default=None)
def main(model, text, ctx_size, windows, threads):
    import ggq
    from ggq.runtime.generate import prefill

    m = ggq.load(model, n_ctx=ctx_size, threads=threads)
    ids = np.asarray(m.tokenizer.encode(Path(text).read_text(encoding="utf-8")), dtype=np.int64)
    n_win = len(ids) // ctx_size
    if windows:
        n_win = min(n_win, windows)
    bos = m.tokenizer.bos_id if m.tokenizer.add_bos else None
    kl, agree, nll = [], 0, {True: 0.0, False: 0.0}
    for w in range(n_win):
        toks = ids[w * ctx_size:(w + 1) * ctx_size].copy()
        if bos is not None:
            toks[0] = bos
        lp = {}
        for exact in (True, False):
            m.llama.set_exact(exact)
            lp[exact] = log_softmax(prefill(m.llama, toks, 0, all_logits=True))
            nll[exact] -= lp[exact][np.arange(ctx_size - 1), toks[1:]].sum()
        p = np.exp(lp[True])
        kl.append((p * (lp[True] - lp[False])).sum(axis=1))
        agree += int((lp[True].argmax(axis=1) == lp[False].argmax(axis=1)).sum())
        click.echo(f"window {w + 1}/{n_win}: mean KLD {kl[-1].mean():.5f}", err=True)
    kl = np.concatenate(kl)
    count = n_win * (ctx_size - 1)
    click.echo(f"{Path(model).name}: {n_win} windows of {ctx_size} tokens, {kl.size} positions")
    click.echo(f"KLD(exact || int8 activations): mean {kl.mean():.5f} nats, 99th pct "
               f"{np.percentile(kl, 99):.5f}, max {kl.max():.4f}")
    click.echo(f"top-1 agreement {agree / kl.size:.2%}")
    click.echo(f"perplexity: exact {np.exp(nll[True] / count):.4f}, int8 activations {np.exp(nll[False] / count):.4f}")


if __name__ == "__main__":
    main()
