"""The OpenAI wire format: request validation and response bodies.

Every field of a request is either understood and used, accepted because it cannot change the
output (metadata such as `user`), or refused with a 400 naming it: a setting ggq does not
implement (logit_bias, tools, n > 1, ...) is never silently ignored. Sampling settings that the
OpenAI API lacks but llama.cpp's server accepts (top_k, min_p, repeat_penalty, repeat_last_n,
cache_prompt) are accepted under the same names. Unset settings get `ggq run`'s defaults
(temperature 0.8, top_k 40, top_p 0.95, min_p 0.05, as llama.cpp).
"""
from __future__ import annotations

import math
import secrets
import time
from dataclasses import dataclass, field

# `ggq run`'s sampling defaults (llama.cpp's)
DEFAULTS = dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.0, repeat_last_n=64,
                frequency_penalty=0.0, presence_penalty=0.0)
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 512
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # the OpenAI completions endpoint's default

# fields that never change the output (accepted, unused)
_HARMLESS = {"user", "metadata", "store", "service_tier", "safety_identifier", "prompt_cache_key",
             "prompt_cache_retention", "stream_options", "model", "stream"}


class APIError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type_ or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type_: str = "invalid_request_error", param=None, code=None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def bad(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param, code)


# ---------------------------------------------------------------------------------------------
# typed field readers: absent or null -> default

def _present(body: dict, name: str) -> bool:
    return body.get(name) is not None


def number(body: dict, name: str, default: float, lo: float | None = None, hi: float | None = None,
           lo_open: bool = False) -> float:
    if not _present(body, name):
        return default
    v = body[name]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise bad(f"'{name}' must be a finite number (got {v!r})", name)
    if (lo is not None and (v < lo or (lo_open and v == lo))) or (hi is not None and v > hi):
        lo_s = "(" if lo_open else "["
        raise bad(f"'{name}' must be in {lo_s}{lo if lo is not None else '-inf'}, "
                  f"{hi if hi is not None else 'inf'}] (got {v!r})", name)
    return float(v)


def integer(body: dict, name: str, default, lo: int | None = None, hi: int | None = None):
    if not _present(body, name):
        return default
    v = body[name]
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad(f"'{name}' must be an integer (got {v!r})", name)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise bad(f"'{name}' must be in [{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}] "
                  f"(got {v})", name)
    return v


def boolean(body: dict, name: str, default: bool) -> bool:
    if not _present(body, name):
        return default
    v = body[name]
    if not isinstance(v, bool):
        raise bad(f"'{name}' must be true or false (got {v!r})", name)
    return v


def _refuse_unless(body: dict, name: str, ok) -> None:
    """A setting ggq does not implement: refused unless absent or at its no-op value."""
    if name in body and body[name] is not None and not ok(body[name]):
        raise bad(f"'{name}' is not supported by ggq serve (got {body[name]!r})", name, "unsupported_parameter")


# ---------------------------------------------------------------------------------------------
# requests

@dataclass
class GenRequest:
    kind: str                       # "chat" or "completion"
    model: str | None
    stream: bool
    include_usage: bool
    max_tokens: int                 # -1: until the context is full
    stop: list[str]
    sampling: dict                  # PenaltySampler keyword arguments
    cache_prompt: bool
    messages: list[dict] = field(default_factory=list)   # chat: [{"role", "content": str}]
    prompt: str | list[int] | None = None                 # completion: text or token ids


_SAMPLING_FIELDS = {"temperature", "top_p", "top_k", "min_p", "repeat_penalty", "repeat_last_n",
                    "frequency_penalty", "presence_penalty", "seed"}
_COMMON = _HARMLESS | _SAMPLING_FIELDS | {"max_tokens", "stop", "n", "logprobs", "logit_bias", "cache_prompt"}
CHAT_FIELDS = _COMMON | {"messages", "max_completion_tokens", "top_logprobs", "tools", "tool_choice", "functions",
                         "function_call", "parallel_tool_calls", "response_format", "modalities"}
COMPLETION_FIELDS = _COMMON | {"prompt", "echo", "best_of", "suffix"}


def _common(body: dict, fields: set, kind: str) -> dict:
    unknown = sorted(k for k in body if k not in fields)
    if unknown:
        raise bad(f"unrecognized request argument: '{unknown[0]}'", unknown[0], "unknown_parameter")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad(f"'model' must be a string (got {model!r})", "model")
    _refuse_unless(body, "n", lambda v: v == 1)
    _refuse_unless(body, "logit_bias", lambda v: v == {})
    stream = boolean(body, "stream", False)
    opts = body.get("stream_options")
    include_usage = False
    if opts is not None:
        if not isinstance(opts, dict):
            raise bad("'stream_options' must be an object", "stream_options")
        if not stream:
            raise bad("'stream_options' is only allowed when 'stream' is true", "stream_options")
        include_usage = boolean(opts, "include_usage", False)
    sampling = dict(
        temperature=number(body, "temperature", DEFAULTS["temperature"], 0.0),
        top_p=number(body, "top_p", DEFAULTS["top_p"], 0.0, 1.0, lo_open=True),
        top_k=integer(body, "top_k", DEFAULTS["top_k"], 0),
        min_p=number(body, "min_p", DEFAULTS["min_p"], 0.0, 1.0),
        repeat_penalty=number(body, "repeat_penalty", DEFAULTS["repeat_penalty"], 0.0, lo_open=True),
        repeat_last_n=integer(body, "repeat_last_n", DEFAULTS["repeat_last_n"], 0),
        frequency_penalty=number(body, "frequency_penalty", DEFAULTS["frequency_penalty"], -2.0, 2.0),
        presence_penalty=number(body, "presence_penalty", DEFAULTS["presence_penalty"], -2.0, 2.0),
        seed=integer(body, "seed", None, 0, 2**63 - 1),
    )
    stop = body.get("stop")
    if stop is None:
        stops = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = list(stop)
    else:
        raise bad("'stop' must be a string or a list of strings", "stop")
    if len(stops) > MAX_STOP_STRINGS:
        raise bad(f"'stop' holds {len(stops)} strings, at most {MAX_STOP_STRINGS} are allowed", "stop")
    if any(not s or len(s) > MAX_STOP_CHARS for s in stops):
        raise bad(f"each 'stop' string must be 1..{MAX_STOP_CHARS} characters", "stop")
    return dict(model=model, stream=stream, include_usage=include_usage, stop=stops, sampling=sampling,
                cache_prompt=boolean(body, "cache_prompt", True), kind=kind)


def _text_content(content, where: str) -> str:
    """A message's content: a string, or a list of text parts (joined), as OpenAI allows."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad(f"{where}.content[{j}]: only text parts ({{\"type\": \"text\", \"text\": ...}}) "
                          f"are supported", "messages")
            out.append(part["text"])
        return "".join(out)
    raise bad(f"{where}.content must be a string or a list of text parts", "messages")


ROLES = {"system", "user", "assistant", "developer"}


def parse_chat(body: dict) -> GenRequest:
    c = _common(body, CHAT_FIELDS, "chat")
    _refuse_unless(body, "logprobs", lambda v: v is False)
    _refuse_unless(body, "top_logprobs", lambda v: v == 0)
    for name in ("tools", "functions"):
        _refuse_unless(body, name, lambda v: v == [])
    for name in ("tool_choice", "function_call"):
        _refuse_unless(body, name, lambda v: v == "none")
    _refuse_unless(body, "response_format", lambda v: v == {"type": "text"})
    _refuse_unless(body, "modalities", lambda v: v == ["text"])
    _refuse_unless(body, "parallel_tool_calls", lambda v: isinstance(v, bool))
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise bad("'messages' must be a non-empty list of messages", "messages")
    messages = []
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad(f"{where} must be an object with 'role' and 'content'", "messages")
        extra = sorted(k for k in m if k not in ("role", "content", "name"))
        if extra:
            raise bad(f"{where}: '{extra[0]}' is not supported by ggq serve", "messages", "unsupported_parameter")
        role = m.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise bad(f"{where}.role must be one of {', '.join(sorted(ROLES))} (got {role!r})", "messages")
        content = m.get("content")
        if content is None and role == "assistant":
            content = ""
        # "developer" is OpenAI's newer name for the system role; templates know "system"
        messages.append({"role": "system" if role == "developer" else role,
                         "content": _text_content(content, where)})
    if _present(body, "max_completion_tokens") and _present(body, "max_tokens"):
        raise bad("give either 'max_tokens' or 'max_completion_tokens', not both", "max_tokens")
    name = "max_completion_tokens" if _present(body, "max_completion_tokens") else "max_tokens"
    max_tokens = integer(body, name, -1, 0)
    return GenRequest(max_tokens=max_tokens, messages=messages, **c)


def parse_completion(body: dict) -> GenRequest:
    c = _common(body, COMPLETION_FIELDS, "completion")
    _refuse_unless(body, "logprobs", lambda v: v == 0)
    _refuse_unless(body, "echo", lambda v: v is False)
    _refuse_unless(body, "best_of", lambda v: v == 1)
    _refuse_unless(body, "suffix", lambda v: v == "")
    p = body.get("prompt")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], (str, list)):
        p = p[0]  # one prompt in a batch of one
    if isinstance(p, str):
        prompt = p
    elif isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
        prompt = list(p)  # token ids (range-checked against the vocabulary by the app)
    elif isinstance(p, list) and len(p) > 1:
        raise bad("a batch of several prompts is not supported; send one request per prompt", "prompt")
    else:
        raise bad("'prompt' must be a string, or a non-empty list of token ids", "prompt")
    max_tokens = integer(body, "max_tokens", COMPLETIONS_DEFAULT_MAX_TOKENS, 0)
    return GenRequest(max_tokens=max_tokens, prompt=prompt, **c)


# ---------------------------------------------------------------------------------------------
# responses

def new_id(kind: str) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + secrets.token_hex(12)


def finish_reason(stop: str) -> str:
    """ggq's stop reasons -> OpenAI's: eos and stop strings "stop"; length and context "length"."""
    return "length" if stop in ("length", "context") else "stop"


def usage(stats) -> dict:
    return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.gen_tokens,
            "total_tokens": stats.prompt_tokens + stats.gen_tokens,
            "prompt_tokens_details": {"cached_tokens": stats.prompt_reused}}


def timings(stats, queued_s: float) -> dict:
    """llama.cpp-style figures (milliseconds) beside OpenAI's usage."""
    return {"queued_ms": round(queued_s * 1000, 3), "prompt_n": stats.prompt_evaluated,
            "prompt_cached_n": stats.prompt_reused, "prompt_ms": round(stats.prompt_s * 1000, 3),
            "first_token_ms": round(stats.first_token_s * 1000, 3), "predicted_n": stats.gen_tokens,
            "predicted_ms": round(stats.decode_s * 1000, 3)}


def full_response(req: GenRequest, rid: str, model_id: str, text: str, stop: str, stats, queued_s: float) -> dict:
    created = int(time.time())
    if req.kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                  "finish_reason": finish_reason(stop)}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason(stop)}
        obj = "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": model_id, "choices": [choice],
            "usage": usage(stats), "system_fingerprint": "ggq", "timings": timings(stats, queued_s)}


def chunk(req: GenRequest, rid: str, model_id: str, created: int, text: str | None = None,
          role: bool = False, finish: str | None = None) -> dict:
    """One streamed event: a text piece, the chat's opening role delta, or the finish."""
    if req.kind == "chat":
        delta = {}
        if role:
            delta = {"role": "assistant", "content": ""}
        elif text is not None:
            delta = {"content": text}
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        obj = "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": model_id, "choices": [choice],
            "system_fingerprint": "ggq"}


def usage_chunk(req: GenRequest, rid: str, model_id: str, created: int, stats, queued_s: float) -> dict:
    obj = "chat.completion.chunk" if req.kind == "chat" else "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": model_id, "choices": [],
            "usage": usage(stats), "system_fingerprint": "ggq", "timings": timings(stats, queued_s)}
