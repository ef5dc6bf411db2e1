"""Python API: the CLI is a thin shell over this.

    import ggq
    model = ggq.load()                       # default model (SmolLM2-135M-Instruct, as shipped)
    for piece in model.generate("The capital of France is", max_tokens=32, temperature=0):
        print(piece, end="", flush=True)
    model.logits(model.tokenizer.encode("Hello world"))   # float32 (n, vocab)
"""
from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

import numpy as np

from .errors import UsageError
from .runtime.generate import N_BATCH, Stats, check_max_tokens, generate_ids, prefill
from .runtime.sampler import Sampler


def _log_stderr(msg: str) -> None:
    print(f"ggq: {msg}", file=sys.stderr, flush=True)


def default_model_path(log=None) -> Path:
    """SmolLM2-135M-Instruct imported once into the cache directory with its tensor types kept
    (DEFAULT_PRESET "keep": its Q4_1 blocks are copied, not re-quantized)."""
    from . import default_model as dm

    out = dm.cache_dir() / f"SmolLM2-135M-Instruct.{dm.DEFAULT_PRESET}.ggq"
    if not out.exists():
        src = dm.smollm2_gguf(quiet=log is None)
        if log:
            log(f"importing the default model (once) -> {out}")
        from .convert import convert_model

        convert_model(src, out, preset=dm.DEFAULT_PRESET, force=True, progress=log is not None)
    return out


def imported_gguf_path(path, log=None) -> Path:
    """A .gguf imported once (preset "keep": tensor bytes copied as they are) into the cache,
    keyed by the file's path, size and mtime so an edited file is imported again."""
    from .default_model import cache_dir

    p = Path(path).resolve()
    st = p.stat()
    key = hashlib.sha256(f"{p}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:16]
    d = cache_dir() / "imported"
    d.mkdir(parents=True, exist_ok=True)
    out = d / f"{p.stem}.{key}.ggq"
    if not out.exists():
        if log:
            log(f"importing {p.name} (once) -> {out}")
        from .convert import convert_model

        convert_model(p, out, preset="keep", force=True, progress=log is not None)
    return out


def resolve_model_path(path=None, log=None) -> Path:
    if path is None:
        return default_model_path(log)
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{p}: no such file")
    if p.is_dir():
        raise UsageError(f"{p}: is a folder; convert it first with `ggq convert {p}`")
    with open(p, "rb") as fh:
        magic = fh.read(4)
    if magic == b"GGUF":
        return imported_gguf_path(p, log)
    return p


def set_threads(threads) -> int:
    """Numba worker threads for this process (None: all cores Numba sees).

    NumPy's BLAS (prompt matmuls) gets the same count unless GGQ_BLAS_THREADS says otherwise.
    On an idle 2-core machine two BLAS threads gave pp128 384 tok/s against 305 with one; on a
    loaded one (other processes on the cores) its spinning threads collapse (a 512-token batch
    took 11 s instead of 3 s): GGQ_BLAS_THREADS=1 is the remedy there."""
    import numba

    from .runtime.blas import blas_set_threads

    limit = numba.config.NUMBA_NUM_THREADS
    if threads is None:
        threads = limit
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or not 1 <= threads <= limit:
        raise UsageError(f"threads must be an integer in 1..{limit} (got {threads!r})")
    numba.set_num_threads(int(threads))
    env = os.environ.get("GGQ_BLAS_THREADS", "").strip()
    try:
        blas = max(1, min(int(env), int(threads))) if env else int(threads)
    except ValueError:
        raise UsageError(f"GGQ_BLAS_THREADS must be an integer (got {env!r})") from None
    blas_set_threads(blas)
    return int(threads)


class Model:
    """A loaded model: weights mmapped, KV cache of n_ctx positions, embedded tokenizer."""

    def __init__(self, path, n_ctx: int | None = None, threads: int | None = None, use_mmap: bool = True,
                 n_gpu_layers: int = 0, device: str | None = None, log=None):
        from .format import GGQReader
        from .models import build_model
        from .runtime.tokenizer import Tokenizer

        t0 = time.perf_counter()
        if n_ctx is not None and (isinstance(n_ctx, bool) or not isinstance(n_ctx, (int, np.integer)) or n_ctx < 1):
            raise UsageError(f"context size must be a positive integer (got {n_ctx!r})")
        self.threads = set_threads(threads)
        offload = None
        if n_gpu_layers or device is not None:
            from .torch_backend import resolve_offload

            offload = resolve_offload(n_gpu_layers, device, log=log or _log_stderr)
        self.path = Path(path)
        self.reader = GGQReader(self.path)
        try:
            # the forward pass of the file's architecture (Llama, Gemma3); named .llama for history
            self.llama = build_model(self.reader, n_ctx=n_ctx, source=self.path.name, use_mmap=use_mmap,
                                     offload=offload)
            self.tokenizer = Tokenizer(self.reader.metadata, source=self.path.name)
        except BaseException:
            self.reader.close()
            raise
        self.metadata = self.reader.metadata
        self.config = self.llama.config
        self.n_ctx = self.llama.n_ctx
        self.load_s = time.perf_counter() - t0
        self.stats = Stats(load_s=self.load_s)

    # -- info ------------------------------------------------------------------------------------
    @property
    def n_params(self) -> int:
        return int(sum(int(np.prod(t.shape)) for t in self.reader.tensors.values()))

    @property
    def file_size(self) -> int:
        return self.path.stat().st_size

    @property
    def name(self) -> str:
        return str(self.metadata.get("general.name") or self.path.stem)

    # -- evaluation ------------------------------------------------------------------------------
    def logits(self, token_ids) -> np.ndarray:
        """float32 logits (n, vocab) of a token sequence evaluated from position 0."""
        ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise UsageError("no tokens to evaluate")
        if ids.size > self.n_ctx:
            raise UsageError(f"{ids.size} tokens do not fit the context size {self.n_ctx}")
        return prefill(self.llama, ids, 0, all_logits=True, n_batch=N_BATCH)

    def prompt_ids(self, prompt: str, chat: bool = False, system: str | None = None) -> list[int]:
        if not isinstance(prompt, str):
            raise UsageError("prompt must be a string")
        if chat:
            return self.tokenizer.chat_ids(prompt, system)
        if system is not None:
            raise UsageError("a system message needs chat mode (--chat)")
        return self.tokenizer.encode(prompt)

    def generate_tokens(self, prompt, max_tokens: int = 256, *, temperature: float = 0.8, top_k: int = 40,
                        top_p: float = 0.95, min_p: float = 0.05, repeat_penalty: float = 1.0,
                        repeat_last_n: int = 64, seed: int | None = None, chat: bool = False,
                        system: str | None = None):
        """Iterator of generated token ids (prompt: text, or a list of token ids)."""
        sampler = Sampler(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                          repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n, seed=seed)
        check_max_tokens(max_tokens)
        ids = list(prompt) if not isinstance(prompt, str) else self.prompt_ids(prompt, chat, system)
        if len(ids) == 0:
            raise UsageError("the prompt is empty (no tokens)")
        if len(ids) >= self.n_ctx:
            raise UsageError(f"the prompt is {len(ids)} tokens but the context holds {self.n_ctx} "
                             f"(with room for at least one generated token); use a larger --ctx-size")
        self.stats = Stats(load_s=self.load_s)
        return generate_ids(self.llama, ids, sampler, max_tokens, self.tokenizer.eog_ids, self.stats)

    def generate(self, prompt: str, max_tokens: int = 256, **kwargs):
        """Iterator of text pieces (never a broken UTF-8 character). Keyword arguments as
        generate_tokens: temperature, top_k, top_p, min_p, repeat_penalty, seed, chat, system.
        Settings are checked here, before the first piece is asked for."""
        it = self.generate_tokens(prompt, max_tokens, **kwargs)
        return self._text(it)

    def _text(self, it):
        dec = self.tokenizer.stream()
        for tok in it:
            piece = dec.put(tok)
            if piece:
                yield piece
        rest = dec.flush()
        if rest:
            yield rest

    def close(self) -> None:
        self.llama = None
        self.reader.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"<ggq.Model {self.path.name} ctx={self.n_ctx} threads={self.threads}>"


def load(path=None, n_ctx: int | None = None, threads: int | None = None, log=None,
         use_mmap: bool = True, n_gpu_layers: int = 0, device: str | None = None) -> Model:
    """Load a model for inference. path: a .ggq file, a .gguf file (imported once into the
    cache with its tensors copied as they are), or None for the default model.
    use_mmap=False copies the weights into memory (faster decode, slower load).
    n_gpu_layers=N runs the last N layers with torch on `device` (default: the first CUDA
    device; "cpu": torch on the CPU), N above the layer count the output matrix too, as
    llama.cpp's -ngl; without torch or CUDA, one line through log (stderr) and the CPU engine."""
    return Model(resolve_model_path(path, log), n_ctx=n_ctx, threads=threads, use_mmap=use_mmap,
                 n_gpu_layers=n_gpu_layers, device=device, log=log)
