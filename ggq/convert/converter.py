"""convert_model: any supported checkpoint -> .ggq, one tensor at a time.

Peak memory is about one tensor as float32 plus its quantized bytes (the GGUF source is
memory-mapped; safetensors are read tensor by tensor). Output goes through GGQWriter, which
writes a temp file and renames it into place only on success, so an error or Ctrl-C leaves no
output. The input is only ever opened for reading.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConvertError, GGQError
from ..quants import get_type
from ..quants.base import accepts_search
from .presets import normalize_preset, plan_types
from .sources import ModelConfig, Source, open_source

DEFAULT_PRESET_HF = "q4_k_m"
DEFAULT_PRESET_GGUF = "keep"


@dataclass
class PlanEntry:
    name: str
    shape: tuple
    type: str            # target type
    nbytes: int          # bytes in the output
    method: str          # copied | float | rtn-search | imatrix | gptq
    source_type: str
    source_bytes: int
    note: str = ""       # why the type differs from the preset's choice (a fallback), if it does

    @property
    def params(self) -> int:
        return int(np.prod(self.shape))


@dataclass
class ConvertReport:
    input: str
    output: str | None
    preset: str
    entries: list[PlanEntry] = field(default_factory=list)
    dry_run: bool = False
    imatrix: bool = False
    file_size: int | None = None   # measured, None on a dry run
    elapsed_s: float = 0.0
    config: ModelConfig | None = None   # the resolved hyperparameters written to the file
    warnings: list[str] = field(default_factory=list)

    @property
    def params(self) -> int:
        return sum(e.params for e in self.entries)

    @property
    def bytes_before(self) -> int:
        return sum(e.source_bytes for e in self.entries)

    @property
    def bytes_after(self) -> int:
        return sum(e.nbytes for e in self.entries)

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.bytes_after / max(1, self.params)

    @property
    def estimate_bytes(self) -> float:
        """The course-notes estimate: bits/8 x params (tensor data only, no metadata)."""
        return self.bits_per_weight / 8.0 * self.params

    def type_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.entries:
            out[e.type] = out.get(e.type, 0) + 1
        return out

    def table(self) -> str:
        w = max([len(e.name) for e in self.entries] + [6])
        lines = [f"{'tensor':<{w}}  {'shape':>13}  {'from':>5}  {'type':>5}  {'bpw':>6}  {'bytes':>11}  method"]
        for e in self.entries:
            shp = "x".join(str(s) for s in e.shape)
            bpw = 8.0 * e.nbytes / max(1, e.params)
            lines.append(f"{e.name:<{w}}  {shp:>13}  {e.source_type:>5}  {e.type:>5}  {bpw:6.2f}  "
                         f"{e.nbytes:>11,}  {e.method}" + (f"  ({e.note})" if e.note else ""))
        return "\n".join(lines)

    def summary(self) -> str:
        mb = 1e6
        counts = ", ".join(f"{k} x{v}" for k, v in sorted(self.type_counts().items()))
        lines = []
        if self.config is not None:
            lines.append(f"model         {self.config.summary()}")
            if self.config.defaulted():
                lines.append(f"defaults      {', '.join(self.config.defaulted())} (absent from the "
                             "config: transformers' defaults)")
        lines += [
            f"preset        {self.preset}  ({counts})",
            f"params        {self.params:,}",
            f"bits/weight   {self.bits_per_weight:.3f}",
            f"size before   {self.bytes_before / mb:.2f} MB ({Path(self.input).name})",
            f"estimate      {self.estimate_bytes / mb:.2f} MB (bits/8 x params)",
        ]
        if self.file_size is not None:
            lines.append(f"size after    {self.file_size / mb:.2f} MB measured "
                         f"({(self.file_size - self.bytes_after) / mb:.2f} MB metadata, tokenizer, padding)")
            lines.append(f"elapsed       {self.elapsed_s:.1f} s")
        else:
            lines.append("dry run       nothing written")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"input": self.input, "output": self.output, "preset": self.preset, "params": self.params,
                "bits_per_weight": self.bits_per_weight, "bytes_before": self.bytes_before,
                "bytes_after": self.bytes_after, "estimate_bytes": self.estimate_bytes,
                "file_size": self.file_size, "elapsed_s": self.elapsed_s, "dry_run": self.dry_run,
                "hyperparameters": ({k: v for k, v, _ in self.config.to_metadata()}
                                    if self.config is not None else None),
                "defaulted": self.config.defaulted() if self.config is not None else [],
                "warnings": list(self.warnings),
                "tensors": [e.__dict__ | {"shape": list(e.shape)} for e in self.entries]}


class _Progress:
    """A one-line progress bar on stderr, only when stderr is a terminal."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done = max(1, total), 0
        self.enabled = enabled and sys.stderr.isatty()
        self.t0 = time.monotonic()

    def step(self, nbytes: int, label: str) -> None:
        self.done += nbytes
        if not self.enabled:
            return
        frac = min(1.0, self.done / self.total)
        bar = "#" * int(30 * frac)
        sys.stderr.write(f"\r[{bar:<30}] {100 * frac:5.1f}%  {time.monotonic() - self.t0:6.1f}s  {label[:40]:<40}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 100 + "\r")
            sys.stderr.flush()


def default_output(input_path, preset: str) -> Path:
    """INPUT's stem + '.<preset>.ggq' in the current directory (never inside the input's folder,
    which may be a read-only cache or the HF folder itself)."""
    p = Path(input_path)
    stem = p.name if p.is_dir() else p.stem
    return Path.cwd() / f"{stem}.{preset}.ggq"


@dataclass
class Importance:
    """Calibration data for the quantizers: per-column weights (sum of squared inputs / tokens)
    and, where recorded, each input's Hessian X^T X / n (for GPTQ); where it came from."""
    weights: dict
    hessians: dict
    source: str = ""
    datasets: tuple = ()
    chunks: int = 0


METHODS = ("auto", "imatrix", "gptq")


def _load_imatrix(imatrix, src: Source) -> Importance | None:
    """imatrix: None; a path to llama.cpp's imatrix GGUF (or its legacy .dat) or to a .npz of
    per-column weights by tensor name; a quality.imatrix.IMatrix; or a dict name -> weights."""
    if imatrix is None:
        return None
    from ..quality.imatrix import IMatrix, read_imatrix

    label, hess, datasets, chunks = "", {}, (), 0
    if isinstance(imatrix, (str, os.PathLike)):
        p = Path(imatrix)
        label = p.name
        if p.suffix.lower() == ".npz":
            try:
                with np.load(p, allow_pickle=False) as z:
                    imatrix = {k: z[k] for k in z.files}
            except (OSError, ValueError) as e:
                raise ConvertError(f"{p.name}: cannot read importance matrix (.npz of per-column "
                                   f"weights by tensor name): {e}") from None
        else:
            imatrix = read_imatrix(p)
    if isinstance(imatrix, IMatrix):
        names = set(src.tensor_names())
        im = imatrix
        datasets, chunks = tuple(im.datasets), int(im.chunk_count)
        used = [n for n in im.names() if n in names]
        hess = {n: im.hessian(n) for n in used if n in im.cov}
        imatrix = {n: im.weights(n) for n in used}
        if im.names() and not used:
            raise ConvertError(f"importance matrix {label or ''}: none of its {len(im.names())} entries "
                               f"(e.g. {im.names()[0]!r}) names a tensor of {src.path.name}")
    out = {}
    for name, v in dict(imatrix).items():
        if name not in src.tensor_names():
            continue
        v = np.asarray(v, dtype=np.float32).reshape(-1)
        cols = src.tensor_info(name).shape[-1]
        if v.shape != (cols,) or not np.all(np.isfinite(v)) or np.any(v < 0):
            raise ConvertError(f"importance matrix for {name!r}: expected {cols} finite non-negative values")
        out[name] = v
    for name, h in hess.items():
        cols = src.tensor_info(name).shape[-1]
        if h.shape != (cols, cols):
            raise ConvertError(f"importance matrix {label}: Hessian of {name!r} is {h.shape}, expected ({cols}, {cols})")
    return Importance(out, hess, label, datasets, chunks)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def _method_for(name: str, im: Importance | None, method: str) -> str:
    """imatrix | gptq | rtn-search for a quantized tensor (see convert_model's method)."""
    if im is None or name not in im.weights:
        return "rtn-search"
    if method == "imatrix":
        return "imatrix"
    if name in im.hessians:
        return "gptq"
    if method == "gptq":
        raise ConvertError(f"--method gptq: the importance matrix {im.source} has no Hessian for {name!r} "
                           "(make it with `ggq calibrate --hessian`)")
    return "imatrix"


def plan(src: Source, preset: str, overrides=(), imatrix: Importance | None = None,
         method: str = "auto") -> list[PlanEntry]:
    cfg: ModelConfig = src.config
    shapes = {n: tuple(src.tensor_info(n).shape) for n in src.tensor_names()}
    notes: dict[str, str] = {}
    types = plan_types(shapes, preset, n_layers=cfg.block_count, n_head=cfg.head_count,
                       n_head_kv=cfg.head_count_kv, tied=cfg.tie_word_embeddings,
                       source_types={n: src.tensor_info(n).dtype for n in shapes}, overrides=overrides,
                       has_imatrix=bool(imatrix), calibrated=set(imatrix.weights) if imatrix else None,
                       notes=notes)
    entries = []
    for n, shape in shapes.items():
        st = src.tensor_info(n)
        qt = get_type(types[n])
        if src.kind == "gguf" and st.dtype == qt.name:
            how = "copied"
        elif qt.is_float:
            how = "float"
        else:
            how = _method_for(n, imatrix, method)
        entries.append(PlanEntry(n, shape, qt.name, qt.nbytes(shape), how, st.dtype, st.nbytes, notes.get(n, "")))
    return entries


def requantize_warnings(entries: list[PlanEntry]) -> list[str]:
    """Re-quantizing already-quantized weights only adds error: say so, naming the types."""
    requant: dict[str, list[str]] = {}
    for e in entries:
        src_t = get_type(e.source_type) if e.source_type not in ("F32", "F16", "BF16") else None
        if src_t is not None and not src_t.is_float and e.type != e.source_type:
            requant.setdefault(e.source_type, []).append(e.type)
    out = []
    for st, targets in requant.items():
        tt = ", ".join(f"{t} x{targets.count(t)}" for t in sorted(set(targets)))
        out.append(f"{len(targets)} tensors are already quantized as {st} and would be re-quantized "
                   f"({tt}), which only adds error; `--type keep` copies them as they are")
    return out


def _metadata(src: Source, preset: str, entries: list[PlanEntry], im: Importance | None):
    """(key, value, vtype) triples per DESIGN.md."""
    cfg = src.config
    md = [("general.architecture", cfg.arch, "str"),
          ("general.name", cfg.name or src.path.stem, "str"),
          ("general.source", src.path.name, "str"),
          ("general.preset", preset, "str")]
    for k, v, vt in cfg.to_metadata():
        if k != "general.name":
            md.append((k, v, vt))
    if src.tokenizer_json:
        md.append(("tokenizer.huggingface.json", src.tokenizer_json, "str"))
    if src.chat_template:
        md.append(("tokenizer.chat_template", src.chat_template, "str"))
    md += [("tokenizer.bos_token_id", int(src.bos_token_id), "i32"),
           ("tokenizer.eos_token_id", int(src.eos_token_id), "i32"),
           ("tokenizer.add_bos_token", bool(src.add_bos_token), "bool")]
    if src.ggml_pre:
        md.append(("tokenizer.ggml.pre", src.ggml_pre, "str"))
    md += list(src.tokenizer_metadata)
    # general.file_type describes the tensor types: true only when they are kept
    md += [t for t in src.general_metadata if t[0] != "general.file_type" or preset == "keep"]
    methods = {}
    for e in entries:
        methods[e.name] = {"type": e.type, "method": e.method, "source_type": e.source_type}
        if e.method in ("imatrix", "gptq") and im is not None and im.source:
            methods[e.name]["imatrix"] = im.source
    md.append(("quantization.tensor_methods", json.dumps(methods, separators=(",", ":")), "str"))
    md.append(("quantization.imatrix", bool(im), "bool"))
    if im:
        md.append(("quantization.imatrix_file", im.source or "(in memory)", "str"))
        md.append(("quantization.imatrix_datasets", [str(d) for d in im.datasets], "array[string]"))
        md.append(("quantization.imatrix_chunks", int(im.chunks), "u32"))
    return [(k, v, "string" if t == "str" else t) for k, v, t in md]


def convert_model(input, output=None, preset: str | None = None, overrides=(), force: bool = False,
                  dry_run: bool = False, imatrix=None, progress: bool = True,
                  method: str = "auto") -> ConvertReport:
    """Convert INPUT (.safetensors file, HF folder, .gguf) to a .ggq file. Returns the report
    (plan per tensor, totals, measured file size). preset None: 'keep' for GGUF input, else
    q4_k_m. output None: see default_output(). imatrix: see _load_imatrix. method (with an
    imatrix): 'imatrix' = least-squares scale search weighted by it; 'gptq' = GPTQ error
    feedback (needs the Hessians of `ggq calibrate --hessian`); 'auto' = gptq where a tensor's
    Hessian is there, else imatrix."""
    if method not in METHODS:
        raise ConvertError(f"unknown method {method!r} (known: {', '.join(METHODS)})")
    t0 = time.monotonic()
    in_path = Path(input)
    with open_source(in_path) as src:
        if preset is None:
            preset = DEFAULT_PRESET_GGUF if src.kind == "gguf" else DEFAULT_PRESET_HF
        preset = normalize_preset(preset)
        im = _load_imatrix(imatrix, src)
        if method == "gptq" and (im is None or not im.hessians):
            raise ConvertError("--method gptq needs an importance matrix with Hessians (`ggq calibrate --hessian`)")
        entries = plan(src, preset, overrides, im, method)
        out_path = Path(output) if output is not None else default_output(in_path, preset)
        report = ConvertReport(str(in_path), str(out_path), preset, entries, dry_run=dry_run,
                               imatrix=bool(im), config=src.config)
        report.warnings += requantize_warnings(entries)
        if progress:
            for w in report.warnings:
                print(f"ggq: warning: {w}", file=sys.stderr)
        if _same_file(in_path, out_path):
            raise ConvertError(f"{out_path}: output would overwrite the input")
        if out_path.is_dir():
            raise ConvertError(f"{out_path}: output is a folder; give a file name such as model.ggq")
        if not force and not dry_run and os.path.lexists(out_path):
            raise ConvertError(f"{out_path} already exists; refusing to overwrite it (use --force)")
        if dry_run:
            report.elapsed_s = time.monotonic() - t0
            return report

        from ..format import GGQWriter
        bar = _Progress(sum(e.params for e in entries), progress)
        try:
            with GGQWriter(out_path, force=force) as w:
                for k, v, vt in _metadata(src, preset, entries, im):
                    w.add_metadata(k, v, vt)
                for e in entries:
                    w.add_tensor(e.name, e.type, e.shape)
                for e in entries:
                    w.write_tensor(e.name, _tensor_bytes(src, e, im))
                    bar.step(e.params, e.name)
        finally:
            bar.close()
    report.file_size = out_path.stat().st_size
    report.elapsed_s = time.monotonic() - t0
    return report


def _tensor_bytes(src: Source, e: PlanEntry, im: Importance | None) -> np.ndarray:
    qt = get_type(e.type)
    if e.method == "copied":
        _, raw = src.get_raw(e.name)
        return raw
    x = src.get(e.name)
    x2 = x.reshape(-1, e.shape[-1]) if x.ndim != 2 else x
    if not np.all(np.isfinite(x2)):
        raise ConvertError(f"{src.path.name}: tensor {e.name!r} contains NaN or infinite values")
    kw = {}
    if not qt.is_float:
        if im and e.name in im.weights:
            kw["imatrix"] = im.weights[e.name]
        if accepts_search(qt) and e.source_type != qt.name:
            kw["search"] = True  # least-squares scale search (k-quants always search)
    try:
        if e.method == "gptq":
            from ..quality.gptq import gptq_quantize

            out = gptq_quantize(qt, x2, im.hessians[e.name], search=kw.get("search", False))
        else:
            out = qt.quantize(x2, **kw)
    except GGQError:
        raise
    except Exception as ex:
        raise ConvertError(f"{src.path.name}: quantizing {e.name!r} to {qt.name} failed ({ex})") from ex
    if out.dtype != np.uint8 or out.nbytes != e.nbytes:
        raise ConvertError(f"quantizer {qt.name} returned {out.nbytes} bytes for {e.name!r}, expected {e.nbytes}")
    return out
