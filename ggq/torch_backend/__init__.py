"""Layer offload through torch (-ngl N): the torch backend of the forward pass.

ggq.models.base.CpuOps runs a layer with the Numba kernels; ggq.torch_backend.ops.TorchOps runs
it with torch on a device, weights still quantized there. This package imports torch only when
an offload is asked for (the CPU install never needs torch: `pip install 'ggq[gpu]'`).

    offload = resolve_offload(n_gpu_layers=99, device=None, log=print)
    # None: run on the CPU engine (no layers asked for, or no torch / no CUDA device: log says so)
    model = build_model(reader, offload=offload)
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError

NO_CUDA = "no CUDA device; running on the CPU"


@dataclass
class Offload:
    n_layers: int   # the last n_layers layers run on ops (more than the model has: the output matrix too)
    ops: object     # ggq.torch_backend.ops.TorchOps


def check_layers(n_gpu_layers) -> int:
    if isinstance(n_gpu_layers, bool) or not isinstance(n_gpu_layers, int) or n_gpu_layers < 0:
        raise UsageError(f"n-gpu-layers must be an integer >= 0 (got {n_gpu_layers!r})")
    return int(n_gpu_layers)


def resolve_offload(n_gpu_layers: int = 0, device: str | None = None, log=None) -> Offload | None:
    """The offload for -ngl N / --device D, or None for the CPU engine alone.

    device None or "cuda[:i]": the CUDA device (the first when not named); without torch or
    without that device, log(NO_CUDA) and None. device "cpu": torch's CPU backend (the same
    code path as a GPU's, for tests and comparisons), which needs torch."""
    n = check_layers(n_gpu_layers)
    if device is not None and not isinstance(device, str):
        raise UsageError(f"device must be a string such as 'cuda', 'cuda:1' or 'cpu' (got {device!r})")
    dev = (device or "cuda").strip().lower()
    if dev != "cpu" and not (dev == "cuda" or (dev.startswith("cuda:") and dev[5:].isdigit())):
        raise UsageError(f"unknown device {device!r} (use cuda, cuda:N or cpu)")
    if n == 0:
        return None
    try:
        import torch
    except ImportError:
        if dev == "cpu":
            raise UsageError("--device cpu runs the torch backend, and torch is not installed "
                             "(pip install 'ggq[gpu]')") from None
        if log:
            log(NO_CUDA + " (torch is not installed: pip install 'ggq[gpu]')")
        return None
    if dev != "cpu":
        index = int(dev[5:]) if ":" in dev else 0
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            if log:
                log(NO_CUDA if device is None or dev == "cuda" else f"no CUDA device {dev}; running on the CPU")
            return None
    from .ops import TorchOps

    return Offload(n, TorchOps(dev))
