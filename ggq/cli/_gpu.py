"""-ngl / --n-gpu-layers and --device, shared by the commands that load a model."""
from __future__ import annotations

import click

NGL_HELP = ("Run the last N repeating layers on the GPU through torch (llama.cpp's count: N above the "
            "layer count, e.g. 999, also puts the output norm and output matrix there); without torch "
            "or a CUDA device: one line, then the CPU engine. Weights stay quantized on the GPU.")
DEVICE_HELP = "Where -ngl layers run: cuda (default), cuda:N, or cpu (torch on the CPU: for tests)."


def gpu_options(f):
    """Adds n_gpu_layers (int, default 0) and device (str or None) parameters to a command."""
    f = click.option("--device", default=None, metavar="DEV", help=DEVICE_HELP)(f)
    f = click.option("-ngl", "--n-gpu-layers", "n_gpu_layers", type=click.IntRange(min=0), default=0,
                     show_default=True, metavar="N", help=NGL_HELP)(f)
    return f


def gpu_memory_line(model) -> str | None:
    """'GPU memory: X MiB (weights Y MiB; file Z MiB)' for a model with offloaded layers, else None."""
    ops = [o for o, _ in getattr(model.llama, "segments", []) if not getattr(o, "is_cpu", True)]
    head = getattr(model.llama, "head_ops", None)
    if head is not None and not getattr(head, "is_cpu", True):
        ops.append(head)
    if not ops:
        return None
    import torch

    dev = ops[0].device
    weights = sum(m.data.numel() for m in model.llama.matrices() if hasattr(m, "data") and m.data.device == dev)
    mib = 1 << 20
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev)
        exact = any(getattr(m, "exact", False) for m in model.llama.matrices() if hasattr(m, "data"))
        dtype = "float32" if exact else str(getattr(ops[0], "prompt_dtype", "torch.float32")).removeprefix("torch.")
        return (f"GPU memory ({dev}): peak {peak / mib:.1f} MiB allocated, of which quantized weights "
                f"{weights / mib:.1f} MiB (file {model.file_size / mib:.1f} MiB); prompt matmuls in {dtype}")
    return f"torch on {dev}: quantized weights {weights / mib:.1f} MiB (file {model.file_size / mib:.1f} MiB)"
