"""`ggq` command line: a thin shell over the Python API. Each command lives in its own module."""
from __future__ import annotations

import sys

import click

from ..errors import GGQError


# Each command lives in a module of this package, imported only when the command runs or help
# lists it (`ggq run` needs neither the converter nor the inspector). A module named after its
# command (serve.py -> `ggq serve`) needs no entry here; COMMANDS names the others.
COMMANDS = {"verify": "inspect", "bench": "run", "perplexity": "run"}


def _command_modules() -> dict[str, str]:
    """command -> module: COMMANDS, plus every public module of this package as its own command."""
    import pkgutil

    mods = {m.name: m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")}
    return {**mods, **COMMANDS}


class _LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(set(_command_modules()) | set(self.commands))

    def get_command(self, ctx, name):
        mods = _command_modules() if name not in self.commands else {}
        if name in mods:
            import importlib

            importlib.import_module(f"{__name__}.{mods[name]}")  # its @cli.command() adds it
        return self.commands.get(name)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ggq")
def cli() -> None:
    """ggq: convert Hugging Face / GGUF checkpoints to .ggq and run them fast on a CPU."""


def _register() -> None:
    """Import every command module (main() imports only the one a command needs)."""
    import importlib

    for mod in set(_command_modules().values()):
        importlib.import_module(f"{__name__}.{mod}")  # each adds its commands to `cli`


def terminate_as_exit() -> None:
    """SIGTERM (kill, a service manager) raises SystemExit(143) in the main thread, so that a
    write in progress unwinds: GGQWriter and the other writers then remove their temp files
    instead of leaving them behind. Only where SIGTERM still has its default action."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        def _exit(signum, frame):
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, _exit)


def main(argv: list[str] | None = None) -> int:
    terminate_as_exit()
    try:
        cli.main(args=argv, prog_name="ggq", standalone_mode=False)
    except GGQError as e:
        click.echo(f"ggq: error: {e}", err=True)
        return 1
    except click.exceptions.Abort:
        click.echo("ggq: interrupted", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("ggq: interrupted", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except BrokenPipeError:
        return 0
    except OSError as e:  # a file the command writes or reads: missing folder, disk full, no permission
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        click.echo(f"ggq: error: {where}{e.strerror or e}", err=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
