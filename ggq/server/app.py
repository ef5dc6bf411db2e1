"""The Starlette application: routes, API key, body limits, server-sent events.

    GET  /health               {"status": "ok", ...} (no API key needed)
    GET  /v1/models            the one model served
    POST /v1/chat/completions  messages rendered with the model's chat template
    POST /v1/completions       a raw prompt (text or token ids)

Every error is answered in OpenAI's shape ({"error": {"message", "type", "param", "code"}}) with a
4xx status for anything the client sent (a 500 would be a bug in ggq).
"""
from __future__ import annotations

import asyncio
import hmac
import json
import time

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from ..errors import GGQError
from ..runtime.session import PenaltySampler
from .engine import Engine, Job
from .protocol import (APIError, bad, chunk, error_body, finish_reason, full_response, new_id, parse_chat,
                       parse_completion, usage_chunk)

MAX_BODY_BYTES = 8 << 20  # a request body larger than this is refused (413) before it is read


def _error_response(e: APIError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


async def _read_json(request: Request) -> dict:
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise bad("invalid Content-Length header")
        if int(length) > MAX_BODY_BYTES:
            raise APIError(413, f"request body of {int(length)} bytes exceeds the limit of {MAX_BODY_BYTES}")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > MAX_BODY_BYTES:
            raise APIError(413, f"request body exceeds the limit of {MAX_BODY_BYTES} bytes")
    try:
        obj = json.loads(bytes(body).decode("utf-8"))  # JSON text is UTF-8 (RFC 8259)
    except UnicodeDecodeError:
        raise bad("request body is not UTF-8 text") from None
    except ValueError as e:
        raise bad(f"request body is not valid JSON: {e}") from None
    except RecursionError:
        raise bad("request body is nested too deeply") from None
    if not isinstance(obj, dict):
        raise bad("request body must be a JSON object")
    return obj


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


class _Auth:
    """Pure ASGI middleware: with an API key, every path but /health needs
    `Authorization: Bearer KEY` (compared in constant time)."""

    def __init__(self, app, api_key: str | None):
        self.app = app
        self.key = api_key.encode() if api_key else None

    async def __call__(self, scope, receive, send):
        if self.key is not None and scope["type"] == "http" and scope.get("path") != "/health":
            auth = dict(scope.get("headers") or []).get(b"authorization", b"")
            scheme, _, token = auth.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                resp = _error_response(APIError(401, "invalid or missing API key (Authorization: Bearer KEY)",
                                                code="invalid_api_key"))
                await resp(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(model, model_id: str, api_key: str | None = None, log=None, engine: Engine | None = None) -> Starlette:
    """The app serving `model` (a loaded ggq.Model) as `model_id`. Its engine (app.state.engine)
    starts at once; close it with app.state.engine.close()."""
    engine = engine or Engine(model, log=log)
    tok = model.tokenizer
    n_ctx = engine.session.n_ctx
    vocab = model.llama.vocab_size
    created = int(time.time())

    async def health(request: Request):
        return JSONResponse({"status": "ok", "model": model_id, "pending": engine.pending, "n_ctx": n_ctx})

    async def models(request: Request):
        return JSONResponse({"object": "list", "data": [
            {"id": model_id, "object": "model", "created": created, "owned_by": "ggq",
             "meta": {"n_ctx": n_ctx, "n_vocab": vocab, "file": model.path.name}}]})

    def _tokens(req) -> list[int]:
        """Prompt token ids (runs in a thread pool: tokenizing a long prompt takes a while)."""
        try:
            if req.kind == "chat":
                return tok.messages_ids(req.messages, True)
            if isinstance(req.prompt, str):
                return tok.encode(req.prompt)
        except GGQError as e:  # a chat template refusing the conversation, say
            raise bad(str(e), "messages" if req.kind == "chat" else "prompt") from None
        bad_ids = [t for t in req.prompt if not 0 <= t < vocab]
        if bad_ids:
            raise bad(f"'prompt' token id {bad_ids[0]} is outside the vocabulary 0..{vocab - 1}", "prompt")
        return list(req.prompt)

    async def _job(request: Request, parse) -> tuple:
        req = parse(await _read_json(request))
        if req.model is not None and req.model != model_id:
            raise APIError(404, f"the model '{req.model}' does not exist; this server serves '{model_id}'",
                           "model", "model_not_found")
        ids = await run_in_threadpool(_tokens, req)
        if not ids:
            raise bad("the prompt is empty (no tokens)", "prompt")
        if len(ids) >= n_ctx:
            raise bad(f"this model's context holds {n_ctx} tokens, but the prompt is {len(ids)} tokens "
                      f"(with room for at least one generated token)",
                      "messages" if req.kind == "chat" else "prompt", "context_length_exceeded")
        try:
            sampler = PenaltySampler(**req.sampling)
        except GGQError as e:
            raise bad(str(e)) from None
        job = Job(ids=ids, sampler=sampler, max_tokens=req.max_tokens, stops=req.stop, reuse=req.cache_prompt,
                  loop=asyncio.get_running_loop(), kind=req.kind)
        return req, engine.submit(job)

    async def _watch_disconnect(request: Request, job: Job) -> None:
        """Cancel the job when the client goes away (queued: it never runs; running: it stops
        at its next token)."""
        while True:
            msg = await request.receive()
            if msg["type"] == "http.disconnect":
                job.cancel.set()
                return

    async def generate(request: Request, parse):
        try:
            req, job = await _job(request, parse)
        except APIError as e:
            return _error_response(e)
        rid = new_id(req.kind)
        watcher = asyncio.create_task(_watch_disconnect(request, job))
        if req.stream:
            return StreamingResponse(_stream(req, job, rid, watcher), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            while True:
                ev = await job.events.get()
                if ev[0] == "done":
                    return JSONResponse(full_response(req, rid, model_id, job.text, job.stop, job.stats,
                                                      job.queued_s))
                if ev[0] == "error":
                    return JSONResponse(error_body(f"generation failed: {ev[1]}", "server_error"), status_code=500)
        finally:
            job.cancel.set()  # a no-op once done; stops the job if this handler is torn down
            watcher.cancel()

    async def _stream(req, job: Job, rid: str, watcher):
        t = int(time.time())
        try:
            if req.kind == "chat":
                yield _sse(chunk(req, rid, model_id, t, role=True))
            while True:
                ev = await job.events.get()
                if ev[0] == "text":
                    yield _sse(chunk(req, rid, model_id, t, text=ev[1]))
                elif ev[0] == "done":
                    if job.stop == "cancelled":
                        return
                    yield _sse(chunk(req, rid, model_id, t, finish=finish_reason(job.stop)))
                    if req.include_usage:
                        yield _sse(usage_chunk(req, rid, model_id, t, job.stats, job.queued_s))
                    yield "data: [DONE]\n\n"
                    return
                else:
                    yield _sse(error_body(f"generation failed: {ev[1]}", "server_error"))
                    return
        finally:
            job.cancel.set()
            watcher.cancel()

    async def chat_completions(request: Request):
        return await generate(request, parse_chat)

    async def completions(request: Request):
        return await generate(request, parse_completion)

    async def http_error(request: Request, exc: HTTPException):
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        msg = f"{request.method} {request.url.path}: {exc.detail}"
        return JSONResponse(error_body(msg, "invalid_request_error", None, kind), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    async def api_error(request: Request, exc: APIError):
        return _error_response(exc)

    async def server_error(request: Request, exc: Exception):
        msg = f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if log is not None:
            log(msg)
        return JSONResponse(error_body(msg, "server_error"), status_code=500)

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error, APIError: api_error,
                                                       Exception: server_error})
    app.state.engine = engine
    app.state.model_id = model_id
    app.add_middleware(_Auth, api_key=api_key)
    return app
