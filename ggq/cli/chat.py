"""`ggq chat`: a conversation with a model in the terminal.

The whole conversation is rendered with the model's chat template each turn; the KV cache
(runtime.session) keeps the previous turns, so only the new text is evaluated. When the
conversation no longer fits the context, the oldest turns are dropped (the system message
stays) and a note says so. Ctrl-C stops the current answer (at the next token, so the cache
stays consistent) without leaving; /exit or end of input leaves.
"""
from __future__ import annotations

import signal
import sys

import click

from ..errors import GGQError, UsageError
from . import cli
from ._gpu import gpu_options
from .run import no_mmap_option

HELP = "/reset clears the conversation, /system TEXT sets the system message (/system alone removes it), /exit leaves"


def _note(msg: str) -> None:
    click.echo(f"ggq: {msg}", err=True)


class Conversation:
    """Messages plus the session whose cache holds their tokens."""

    def __init__(self, model, session, system: str | None, max_tokens: int):
        self.model = model
        self.tok = model.tokenizer
        self.session = session
        self.system = system
        self.turns: list[dict] = []   # user/assistant messages, alternating, oldest first
        self.max_tokens = max_tokens
        n_ctx = session.n_ctx
        # room kept for the answer when older turns have to go: the answer's limit, or a quarter
        # of the context when answers run until it is full; never more than half of it
        want = max_tokens if max_tokens >= 0 else n_ctx // 4
        self.reserve = max(1, min(want, n_ctx // 2))

    def messages(self) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system is not None else []
        return head + self.turns

    def prompt_ids(self) -> tuple[list[int], int]:
        """Token ids of the conversation with the assistant's turn opened, after dropping the
        oldest user/assistant pairs until it leaves `reserve` tokens free; (ids, pairs dropped).
        UsageError if even the newest message alone does not fit."""
        limit = self.session.n_ctx - self.reserve
        dropped = 0
        while True:
            ids = self.tok.messages_ids(self.messages(), True)
            if len(ids) <= limit:
                return ids, dropped
            if len(self.turns) <= 1:
                n = len(ids)
                self.turns.clear()
                raise UsageError(f"the message is {n} tokens with the chat template; the context of "
                                 f"{self.session.n_ctx} holds at most {limit} with room for an answer "
                                 f"(use a larger --ctx-size)")
            del self.turns[:2]
            dropped += 1


def _answer(conv: Conversation, ids, sampler, out, show_stats: bool) -> None:
    """Stream one answer to out; Ctrl-C stops it at the next token. The answer (all of it or
    the part before Ctrl-C) joins the conversation."""
    from ..runtime.session import TurnStats

    stop = []

    def on_sigint(signum, frame):
        stop.append(True)

    stats = TurnStats()
    previous = signal.signal(signal.SIGINT, on_sigint)
    text = []
    try:
        dec = conv.tok.stream()
        for t in conv.session.generate(ids, sampler, conv.max_tokens, conv.tok.eog_ids, stats,
                                       cancelled=lambda: bool(stop)):
            piece = dec.put(t)
            if piece:
                text.append(piece)
                out.write(piece)
                out.flush()
        if not stop:
            rest = dec.flush()
            if rest:
                text.append(rest)
                out.write(rest)
    finally:
        signal.signal(signal.SIGINT, previous)
    out.write("\n")
    out.flush()
    conv.turns.append({"role": "assistant", "content": "".join(text)})
    if stats.stop == "cancelled":
        _note("answer stopped (Ctrl-C)")
    elif stats.stop == "context":
        _note(f"the answer filled the context ({conv.session.n_ctx} tokens); the oldest turns will be "
              f"dropped from the next message on")
    if show_stats:
        _note(f"prompt {stats.prompt_tokens} tok ({stats.prompt_reused} reused, {stats.prompt_evaluated} "
              f"evaluated in {stats.prompt_s * 1000:.0f} ms) | answer {stats.gen_tokens} tok "
              f"{stats.gen_tps:.1f} tok/s | first token {stats.first_token_s * 1000:.0f} ms | "
              f"stop: {stats.stop}")


def _warm_kernels(m) -> None:
    """Load (or compile) the prompt's and the decode step's kernels in a thread while the user
    types the first message, so the first answer does not wait for them."""
    import threading

    try:
        from ..kernels import warm
        from .run import _kernel_tasks

        prompt, decode = _kernel_tasks(m.llama, 64)
    except Exception:  # pragma: no cover - a model class without matrices(): kernels load on use
        return
    threading.Thread(target=warm, args=(prompt + decode,), name="ggq-warm-kernels", daemon=True).start()


@cli.command()
@click.argument("model", required=False, type=click.Path(dir_okay=True))
@click.option("-c", "--ctx-size", type=int, help="Context size in tokens [default: model's, at most 4096].")
@click.option("-t", "--threads", type=int, help="Threads [default: all cores].")
@click.option("-n", "--max-tokens", default=-1, show_default=True, type=int,
              help="Most tokens per answer (-1: until the end of the turn or a full context).")
@click.option("--temp", "temperature", default=0.8, show_default=True, type=float, help="Temperature (0: greedy).")
@click.option("--top-k", default=40, show_default=True, type=int, help="Top-k (0: off).")
@click.option("--top-p", default=0.95, show_default=True, type=float, help="Top-p (1: off).")
@click.option("--min-p", default=0.05, show_default=True, type=float, help="Min-p (0: off).")
@click.option("--repeat-penalty", default=1.0, show_default=True, type=float,
              help="Repetition penalty over the last 64 tokens (1: off).")
@click.option("-s", "--seed", type=int, help="Random seed [default: random].")
@click.option("-sys", "--system", help="System message.")
@click.option("--stats", "show_stats", is_flag=True, help="After each answer, print its token counts and speed "
                                                         "(prompt tokens reused from the cache) to stderr.")
@no_mmap_option
@gpu_options
def chat(model, ctx_size, threads, max_tokens, temperature, top_k, top_p, min_p, repeat_penalty, seed, system,
         show_stats, no_mmap, n_gpu_layers, device):
    """Chat with MODEL in the terminal (default: SmolLM2-135M-Instruct), with its chat template.

    Type a message and Enter; the answer streams back. /reset clears the conversation,
    /system TEXT sets the system message, /exit (or end of input) leaves. Ctrl-C stops the
    current answer. The conversation stays in the KV cache between turns; when it outgrows
    the context, the oldest turns are dropped (the system message stays)."""
    from ..runtime.generate import check_max_tokens
    from ..runtime.session import PenaltySampler, Session
    from .run import _load

    check_max_tokens(max_tokens)
    sampler_args = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                        repeat_penalty=repeat_penalty, seed=seed)
    sampler = PenaltySampler(**sampler_args)  # settings checked before the load
    m = _load(model, ctx_size, threads, no_mmap, n_gpu_layers=n_gpu_layers, device=device)
    src = m.tokenizer.chat_template_source
    if src is None:
        m.tokenizer.apply_chat_template([{"role": "user", "content": ""}])  # raises: no template
    if src != "file":
        _note(f"{m.path.name} has no chat template; using the {src} one")
    _warm_kernels(m)
    conv = Conversation(m, Session(m.llama), system, max_tokens)
    interactive = sys.stdin.isatty()
    if interactive:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:  # pragma: no cover - platforms without readline
            pass
        _note(f"chatting with {m.name} (context {m.n_ctx}); {HELP}; Ctrl-C stops an answer")
    out = sys.stdout
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            if interactive:
                out.write("\n")
            break
        except KeyboardInterrupt:  # at the prompt: a fresh line, still chatting
            out.write("\n")
            _note("/exit or Ctrl-D leaves")
            continue
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            cmd, _, arg = text.partition(" ")
            if cmd in ("/exit", "/quit", "/bye"):
                break
            if cmd == "/reset":
                conv.turns.clear()
                _note("conversation cleared")
            elif cmd == "/system":
                conv.system = arg.strip() or None
                _note(f"system message {'set' if conv.system else 'removed'}")
            else:
                _note(f"unknown command {cmd}; {HELP}")
            continue
        conv.turns.append({"role": "user", "content": line})
        try:
            ids, dropped = conv.prompt_ids()
        except GGQError as e:  # too long alone, or a template that refuses the conversation
            if conv.turns and conv.turns[-1]["role"] == "user":
                conv.turns.pop()
            _note(f"{e}; message not sent")
            continue
        if dropped:
            _note(f"the context ({m.n_ctx} tokens) is full: dropped the {dropped} oldest "
                  f"turn{'s' if dropped > 1 else ''} (message and answer){'; the system message stays' if conv.system else ''}")
        _answer(conv, ids, sampler, out, show_stats)
