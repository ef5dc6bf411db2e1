"""`ggq convert`: a Hugging Face checkpoint or a GGUF file -> .ggq."""
from __future__ import annotations

from pathlib import Path

import click

from . import cli


class _PresetOption(click.Option):
    """-t: its help lists the presets from their registry, imported only when the help is shown
    (ggq.convert pulls in NumPy and Numba, which `ggq --help` must not)."""

    def get_help_record(self, ctx):
        from ..convert.presets import FIT, MIX, PRESETS

        self.help = (f"{' '.join(p for p in PRESETS if not p.endswith((FIT, MIX)))} (default: keep for .gguf "
                     f"input, else q4_k_m); *{FIT} keeps the bit budget on rows 256 does not divide "
                     f"({' '.join(p for p in PRESETS if p.endswith(FIT))}); *{MIX} is ggq's mixture at "
                     f"llama.cpp's size ({' '.join(p for p in PRESETS if p.endswith(MIX))}).")
        return super().get_help_record(ctx)


@cli.command()
@click.argument("input", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output .ggq file (default: INPUT's name + .<preset>.ggq in the current folder).")
@click.option("-t", "--type", "preset", cls=_PresetOption, default=None, metavar="PRESET")
@click.option("--override", "overrides", multiple=True, metavar="PATTERN=TYPE",
              help="Per-tensor type by fnmatch pattern, e.g. 'blk.*.ffn_down.weight=Q6_K' (repeatable, later wins).")
@click.option("--imatrix", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Importance matrix: llama.cpp's imatrix GGUF (`ggq calibrate`, llama-imatrix), its legacy "
                   ".dat, or a .npz of per-column weights keyed by tensor name.")
@click.option("--method", type=click.Choice(["auto", "imatrix", "gptq"]), default="auto", show_default=True,
              help="With --imatrix: imatrix = scale search weighted by the importance; gptq = GPTQ error "
                   "feedback (needs `ggq calibrate --hessian`); auto = gptq where the file has a tensor's "
                   "Hessian, else imatrix.")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@click.option("--dry-run", is_flag=True, help="Print the plan (type and size per tensor) and write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def convert(input: Path, output: Path | None, preset: str | None, overrides: tuple[str, ...],
            imatrix: Path | None, method: str, force: bool, dry_run: bool, as_json: bool) -> None:
    """Convert INPUT (.safetensors file, Hugging Face folder, or .gguf) to a .ggq file."""
    import json

    from ..convert import convert_model
    from ..errors import UsageError

    if method != "auto" and imatrix is None:
        raise UsageError(f"--method {method} needs --imatrix")

    report = convert_model(input, output, preset=preset, overrides=overrides, force=force,
                           dry_run=dry_run, imatrix=imatrix, progress=not as_json, method=method)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=1))
        return
    if dry_run:
        click.echo(report.table())
        click.echo()
    else:
        click.echo(f"wrote {report.output}")
    click.echo(report.summary())
