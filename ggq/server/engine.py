"""The engine queue: one worker thread owns the model and serves requests one at a time.

The Numba kernels and the single KV cache are not re-entrant, so no two requests ever run at
once: the asyncio side validates and tokenizes a request, puts a Job on the queue and reads the
job's events (text pieces, then the finish) from an asyncio.Queue that the worker fills with
loop.call_soon_threadsafe. A job whose client has gone (job.cancel set) is skipped if it is
still queued and stopped at its next token if it runs. Each job evaluates its prompt on the
session's cache from the first position where it differs from the previous job's tokens (prefix
reuse); positions beyond that are overwritten, so every request sees only its own K/V.
"""
from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from ..runtime.session import PenaltySampler, Session, TurnStats


class StopText:
    """Cuts generated text at the first stop string. Text that could be the start of a stop
    string is held back until the next piece shows whether it is one."""

    def __init__(self, stops):
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, piece: str) -> tuple[str, bool]:
        """(text safe to emit, whether a stop string was found: then the text ends before it)."""
        if not self.stops:
            return piece, False
        buf = self.pending + piece
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.pending = ""
            return buf[:min(hits)], True
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), hold, -1):
                if buf.endswith(s[:k]):
                    hold = k
                    break
        self.pending = buf[len(buf) - hold:] if hold else ""
        return buf[:len(buf) - hold], False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


@dataclass
class Job:
    ids: list[int]
    sampler: PenaltySampler
    max_tokens: int
    stops: list[str]
    reuse: bool
    loop: asyncio.AbstractEventLoop
    kind: str = "completion"
    number: int = 0
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)
    stats: TurnStats = field(default_factory=TurnStats)
    submitted: float = field(default_factory=time.perf_counter)
    started: float = 0.0
    stop: str = ""        # eos | stop | length | context | cancelled | error
    text: str = ""        # everything emitted

    @property
    def queued_s(self) -> float:
        return max(0.0, self.started - self.submitted) if self.started else 0.0

    def push(self, item) -> None:
        """Hand an event to the asyncio side (a closed loop: nobody listens, stop the job)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:
            self.cancel.set()


class Engine:
    """Owns a loaded ggq Model and its Session; serves Jobs in submission order."""

    def __init__(self, model, log=None, history: int = 1024):
        self.model = model
        self.session = Session(model.llama)
        self.log = log
        self._queue: queue.Queue = queue.Queue()
        self._numbers = itertools.count(1)
        self._pending = 0           # submitted and not finished
        self._lock = threading.Lock()
        self.current: Job | None = None
        self.finished: deque = deque(maxlen=history)   # (number, kind, stop, stats) of recent jobs
        self._thread = threading.Thread(target=self._run, name="ggq-engine", daemon=True)
        self._thread.start()

    # -- the asyncio side ------------------------------------------------------------------------
    def submit(self, job: Job) -> Job:
        job.number = next(self._numbers)
        with self._lock:
            self._pending += 1
        self._queue.put(job)
        return job

    @property
    def pending(self) -> int:
        """Jobs submitted and not finished (the running one included)."""
        return self._pending

    def waiting(self) -> list[Job]:
        """A snapshot of the jobs in the queue, oldest first (not the running one)."""
        with self._queue.mutex:
            return [j for j in self._queue.queue if isinstance(j, Job)]

    def close(self, timeout: float = 10.0) -> None:
        """Stop: queued jobs are cancelled, the running one stops at its next token."""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(job, Job):  # (not the shutdown marker, nor a queued callable such as warm-up)
                job.cancel.set()
                self._finish(job, "cancelled")
                job.push(("done", job))  # its handler is waiting for this
        cur = self.current
        if cur is not None:
            cur.cancel.set()
        self._queue.put(None)
        self._thread.join(timeout)

    # -- the worker ------------------------------------------------------------------------------
    def warm(self) -> None:
        """Run each kind of pass once (prompt batch, a few rows, one token) so the first request
        does not wait for kernels to load or compile; the cache is left empty."""
        vocab = self.model.llama.vocab_size
        n = min(32, self.session.n_ctx - 1)
        if n < 1:  # a context of one position: every request is refused anyway
            return
        ids = [i % vocab for i in range(n)]
        done = threading.Event()
        err = []

        def run():
            try:
                self.session.prefill(ids, reuse=False)
                if n >= 4:
                    self.session.prefill(ids[:n - 3], reuse=False)   # the per-row matvec path
                    self.session.prefill(ids[:n - 3] + [ids[0]] * 3)  # 3 new rows, then one token
                self.session.prefill(ids[:1] + ids[:1], reuse=True)
            except Exception as e:  # noqa: BLE001 - reported by the caller
                err.append(e)
            finally:
                self.session.reset()
                done.set()

        self._queue.put(run)
        done.wait()
        if err:
            raise err[0]

    def _run(self) -> None:
        from ..api import set_threads

        # Numba's thread count belongs to the thread that sets it: this one runs the kernels
        set_threads(self.model.threads)
        while True:
            job = self._queue.get()
            if job is None:
                return
            if callable(job):
                job()
                continue
            self.current = job
            try:
                self._serve(job)
            except BaseException as e:  # noqa: BLE001 - the worker must outlive any request
                job.push(("error", f"{type(e).__name__}: {e}"))
                self._finish(job, "error")
            finally:
                self.current = None

    def _serve(self, job: Job) -> None:
        job.started = time.perf_counter()
        if job.cancel.is_set():  # the client left while its request was queued
            self._finish(job, "cancelled")
            job.push(("done", job))
            return
        tok = self.model.tokenizer
        dec = tok.stream()
        stopper = StopText(job.stops)
        hit = False
        gen = self.session.generate(job.ids, job.sampler, job.max_tokens, tok.eog_ids, job.stats,
                                    cancelled=job.cancel.is_set, reuse=job.reuse)
        try:
            for t in gen:
                out, hit = stopper.feed(dec.put(t))
                if out:
                    job.text += out
                    job.push(("text", out))
                if hit:
                    break
        finally:
            gen.close()
        if hit:
            stop = "stop"
        else:
            stop = job.stats.stop
            if stop != "cancelled":
                out, hit = stopper.feed(dec.flush())
                out += "" if hit else stopper.flush()
                if hit:
                    stop = "stop"
                if out:
                    job.text += out
                    job.push(("text", out))
        self._finish(job, stop)
        job.push(("done", job))

    def _finish(self, job: Job, stop: str) -> None:
        job.stop = stop
        with self._lock:
            self._pending -= 1
        self.finished.append((job.number, job.kind, stop, job.stats))
        if self.log is not None:
            st = job.stats
            if stop == "cancelled" and not st.prompt_s:
                self.log(f"#{job.number} {job.kind}: cancelled before it ran (client gone)")
                return
            self.log(f"#{job.number} {job.kind}: prompt {st.prompt_tokens} tok ({st.prompt_reused} reused, "
                     f"{st.prompt_evaluated} evaluated in {st.prompt_s * 1000:.0f} ms) | "
                     f"{st.gen_tokens} tok {st.gen_tps:.1f} tok/s | first token {st.first_token_s * 1000:.0f} ms "
                     f"after {job.queued_s * 1000:.0f} ms queued | stop: {stop}")
