"""`ggq serve`: an OpenAI-compatible HTTP server (ggq.server) over one loaded model."""
from __future__ import annotations

import os

import click

from ..errors import UsageError
from . import cli
from ._gpu import gpu_options


def _log(msg: str) -> None:
    click.echo(f"ggq: {msg}", err=True)


def need_serve_extra() -> None:
    """starlette and uvicorn are the `serve` extra: one clear line when they are missing."""
    import importlib.util

    missing = [m for m in ("starlette", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(f"`ggq serve` needs {' and '.join(missing)}: pip install 'ggq[serve]'")


@cli.command()
@click.argument("model", required=False, type=click.Path(dir_okay=True))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", default=8080, show_default=True, type=int, help="TCP port (0: a free one).")
@click.option("-c", "--ctx-size", type=int, help="Context size in tokens [default: model's, at most 4096].")
@click.option("-t", "--threads", type=int, help="Threads [default: all cores].")
@click.option("--api-key", help="Require `Authorization: Bearer KEY` on every request but /health "
                                "[default: $GGQ_API_KEY, else none].")
@click.option("--alias", help="Model id clients use [default: the model file's name without .ggq].")
@click.option("--no-mmap", is_flag=True,
              help="Copy the weights into memory instead of reading them through mmap (slower load, faster decode).")
@gpu_options
def serve(model, host, port, ctx_size, threads, api_key, alias, no_mmap, n_gpu_layers, device):
    """Serve MODEL over an OpenAI-compatible HTTP API (default model: SmolLM2-135M-Instruct).

    POST /v1/chat/completions and /v1/completions (streaming or not), GET /v1/models and
    /health. Requests run one at a time in arrival order; a prompt that starts like the
    previous request's tokens reuses their KV cache. One log line per request goes to stderr."""
    need_serve_extra()
    api_key = api_key if api_key is not None else (os.environ.get("GGQ_API_KEY") or None)
    if api_key is not None and not api_key.strip():
        raise UsageError("--api-key must not be empty")
    from ..server import Server, bind, create_app
    from .run import _load

    sock = bind(host, port)  # before the load: a port in use fails at once
    try:
        m = _load(model, ctx_size, threads, no_mmap, n_gpu_layers=n_gpu_layers, device=device)
        model_id = alias or (m.path.name[:-4] if m.path.name.endswith(".ggq") else m.path.name)
        src = getattr(m.tokenizer, "chat_template_source", "file")
        if src is None:
            _log(f"{m.path.name} has no chat template: /v1/chat/completions will refuse requests")
        elif src != "file":
            _log(f"{m.path.name} has no chat template; chat requests use the {src} one")
        app = create_app(m, model_id, api_key=api_key, log=_log)
        engine = app.state.engine
        try:
            engine.warm()
            server = Server(app, sock)
            if api_key is None and sock.getsockname()[0] not in ("127.0.0.1", "::1"):
                _log(f"listening on {host} without an API key: anyone who can reach this port can use the model")
            _log(f"serving {model_id} on {server.url}/v1 (context {m.n_ctx}, threads {m.threads}"
                 f"{', API key required' if api_key else ''}); Ctrl-C stops")
            server.run()
        finally:
            engine.close()
    finally:
        sock.close()
