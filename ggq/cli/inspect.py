"""`ggq inspect FILE` and `ggq verify FILE`."""
from __future__ import annotations

import json
import math
import os

import click

from . import cli
from ..errors import FormatError

_STR_SHOW = 80       # characters of a string value shown before abbreviating
_ARRAY_SHOW = 8      # elements of an array value shown before abbreviating


def _abbrev(value, full: bool):
    """-> (shown value, note or None)."""
    if full:
        return value, None
    if isinstance(value, str) and len(value) > _STR_SHOW:
        return value[:_STR_SHOW - 20], f"{len(value)} chars"
    if isinstance(value, list) and len(value) > _ARRAY_SHOW:
        return [_abbrev(v, False)[0] for v in value[:_ARRAY_SHOW]], f"{len(value)} items"
    if isinstance(value, list):
        return [_abbrev(v, False)[0] for v in value], None
    return value, None


def _fmt_bytes(n: int) -> str:
    for unit, k in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= k:
            return f"{n / k:.2f} {unit}"
    return f"{n} B"


def _tensor_rows(r) -> list[dict]:
    rows = []
    for t in r.tensors.values():
        n = t.n_elements
        rows.append({"name": t.name, "type": t.type_name, "type_id": t.type_id,
                     "shape": list(t.shape), "params": n, "bytes": t.nbytes,
                     "bits_per_weight": 8 * t.nbytes / n, "offset": r.data_offset + t.offset,
                     "crc32": f"{t.checksum:08x}"})
    return rows


def _error_stats(r, reference: str) -> dict:
    """Per-tensor quantization error of r's tensors against the original checkpoint."""
    import numpy as np

    from ..convert.sources import open_source

    out = {}
    with open_source(reference) as src:
        names = set(src.tensor_names())
        for name, t in r.tensors.items():
            if name not in names:
                out[name] = {"status": "not in reference"}
                continue
            if t.qtype is None:
                out[name] = {"status": f"unknown type id {t.type_id}"}
                continue
            ref = np.asarray(src.get(name), dtype=np.float64)
            if tuple(ref.shape) != t.shape:
                out[name] = {"status": f"shape {list(ref.shape)} in reference"}
                continue
            err = r.dequantize(name).astype(np.float64) - ref
            se = float(np.sum(err * err))
            sig = float(np.sum(ref * ref))
            snr = math.inf if se == 0 else (10 * math.log10(sig / se) if sig > 0 else -math.inf)
            out[name] = {"status": "ok", "rmse": math.sqrt(se / err.size),
                         "max_abs_err": float(np.max(np.abs(err))), "snr_db": snr,
                         "_se": se, "_sig": sig, "_n": err.size}
    return out


def _clean(x):
    """JSON has no inf/nan: write them as strings."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_clean(v) for v in x]
    return x


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--full", is_flag=True, help="Do not abbreviate long metadata values.")
@click.option("--error", "reference", type=click.Path(),
              help="Report per-tensor quantization error (RMSE, max abs error, SNR dB) against the "
                   "original checkpoint: .safetensors file, Hugging Face folder or .gguf.")
def inspect(file: str, as_json: bool, full: bool, reference: str | None) -> None:
    """Show the header, metadata and tensor table of a .ggq FILE."""
    from ..format import GGQReader

    with GGQReader(file) as r:
        size = os.path.getsize(file)
        tensors = _tensor_rows(r)
        params = sum(t["params"] for t in tensors)
        tbytes = sum(t["bytes"] for t in tensors)
        errs = _error_stats(r, reference) if reference else None
        header = {"version": f"{r.version[0]}.{r.version[1]}", "alignment": r.alignment,
                  "metadata_keys": len(r.metadata), "tensor_count": len(r.tensors),
                  "data_offset": r.data_offset, "data_size": r.data_size,
                  "header_crc32": f"{r.header_checksum:08x}"}
        totals = {"params": params, "tensor_bytes": tbytes, "file_size": size,
                  "bits_per_weight": 8 * tbytes / params if params else 0.0,
                  "file_bits_per_weight": 8 * size / params if params else 0.0}
        if errs is not None:
            se = sum(e.get("_se", 0.0) for e in errs.values())
            sig = sum(e.get("_sig", 0.0) for e in errs.values())
            n = sum(e.get("_n", 0) for e in errs.values())
            totals["error"] = {"compared": sum(1 for e in errs.values() if e["status"] == "ok"),
                               "rmse": math.sqrt(se / n) if n else None,
                               "snr_db": (10 * math.log10(sig / se) if se > 0 and sig > 0 else None)}
            for e in errs.values():
                for k in ("_se", "_sig", "_n"):
                    e.pop(k, None)
            for t in tensors:
                t["error"] = errs[t["name"]]

        if as_json:
            meta = {}
            for k, v in r.metadata.items():
                shown, note = _abbrev(v, full)
                entry = {"type": r.metadata_types[k], "value": shown}
                if note:
                    entry["abbreviated"] = note
                meta[k] = entry
            doc = {"file": file, "header": header, "metadata": meta, "tensors": tensors, "totals": totals}
            click.echo(json.dumps(_clean(doc), indent=1, ensure_ascii=False, allow_nan=False))
            return

        click.echo(f"{file}: .ggq {header['version']}, {_fmt_bytes(size)} ({size} bytes)")
        click.echo(f"  alignment {r.alignment}, data at byte {r.data_offset} ({r.data_size} bytes), "
                   f"header crc32 {header['header_crc32']}")
        click.echo(f"metadata ({len(r.metadata)} keys):")
        kw = max((len(k) for k in r.metadata), default=0)
        for k, v in r.metadata.items():
            shown, note = _abbrev(v, full)
            if isinstance(shown, str):
                text = json.dumps(shown, ensure_ascii=False)
                text = text if not note else text[:-1] + '..."'
            else:
                text = json.dumps(shown, ensure_ascii=False)
                if note:
                    text = text[:-1] + ", ...]"
            click.echo(f"  {k:<{kw}}  {r.metadata_types[k]:<13} {text}" + (f"  ({note})" if note else ""))
        click.echo(f"tensors ({len(tensors)}):")
        nw = max((len(t["name"]) for t in tensors), default=4)
        head = f"  {'name':<{nw}}  {'type':<8} {'shape':<16} {'bpw':>6} {'bytes':>12}"
        if errs is not None:
            head += f" {'rmse':>10} {'max_abs':>10} {'snr_db':>7}"
        click.echo(head)
        for t in tensors:
            line = (f"  {t['name']:<{nw}}  {t['type']:<8} {'x'.join(map(str, t['shape'])):<16} "
                    f"{t['bits_per_weight']:6.2f} {t['bytes']:12d}")
            if errs is not None:
                e = t["error"]
                if e["status"] == "ok":
                    line += f" {e['rmse']:10.3e} {e['max_abs_err']:10.3e} {e['snr_db']:7.2f}"
                else:
                    line += f"  ({e['status']})"
            click.echo(line)
        click.echo(f"totals: {params:,} params, tensor data {_fmt_bytes(tbytes)}, file {_fmt_bytes(size)}; "
                   f"{totals['bits_per_weight']:.3f} bits/weight "
                   f"({totals['file_bits_per_weight']:.3f} counting the whole file)")
        if errs is not None:
            e = totals["error"]
            if e["compared"]:
                click.echo(f"error: {e['compared']} tensors compared, overall rmse {e['rmse']:.4e}, "
                           f"snr {e['snr_db']:.2f} dB" if e["snr_db"] is not None else
                           f"error: {e['compared']} tensors compared, overall rmse {e['rmse']:.4e}")
            else:
                click.echo("error: no tensor of the file is in the reference")


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
def verify(file: str) -> None:
    """Check the header checksum and every tensor's CRC-32; exit 1 on any failure."""
    from ..format import GGQReader

    with GGQReader(file, check_header_crc=False) as r:
        bad = r.verify()
        n = len(r.tensors)
    if bad:
        for name in bad:
            click.echo(f"BAD {name}")
        what = "header checksum" if bad == ["<header>"] else f"{len([b for b in bad if b != '<header>'])} of {n} tensors"
        if "<header>" in bad and len(bad) > 1:
            what = "header checksum and " + what
        raise FormatError(f"{file}: checksum mismatch: {what}")
    click.echo(f"OK {file}: header and {n} tensors verified")
