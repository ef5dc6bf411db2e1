"""runtime.session (KV-cache prefix reuse), multi-turn chat templates and `ggq chat`, piped and
through a pseudo-terminal. References: logits of the whole sequence evaluated from position 0
(Model.logits) and generation through runtime.generate.generate_ids on a fresh cache."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

import ggq
from ggq.errors import UsageError
from ggq.runtime.generate import generate_ids
from ggq.runtime.sampler import Sampler
from ggq.runtime.session import PenaltySampler, Session, TurnStats
from tiny_model import make_tiny_hf_dir


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    from ggq.convert import convert_model

    base = tmp_path_factory.mktemp("chat")
    out = base / "tiny.ggq"
    convert_model(make_tiny_hf_dir(base / "hf"), out, preset="q8_0", progress=False)
    return out


@pytest.fixture(scope="module")
def model(tiny_path):
    return ggq.load(tiny_path, n_ctx=256, threads=1)


def _ids(n, seed):
    return [int(t) for t in np.random.default_rng(seed).integers(3, 280, size=n)]


def _close(got, want):
    scale = float(np.abs(want).max())
    return float(np.abs(got - want).max()) <= 2e-3 * scale


# ---------------------------------------------------------------------------------------------
# the session

def test_prefix_reuse_gives_the_same_logits(model):
    s = Session(model.llama)
    a, b, c = _ids(40, 1), _ids(9, 2), _ids(5, 3)
    lg, reused = s.prefill(a)
    assert reused == 0 and s.tokens == a
    assert _close(lg, model.logits(a)[-1])
    lg, reused = s.prefill(a + b)          # a conversation that goes on
    assert reused == len(a) and s.tokens == a + b
    assert _close(lg, model.logits(a + b)[-1])
    lg, reused = s.prefill(a + c)          # parts from the previous one after a
    assert reused == len(a) and s.tokens == a + c
    assert _close(lg, model.logits(a + c)[-1])
    lg, reused = s.prefill(a + c)          # the same prompt: only its last token runs again
    assert reused == len(a + c) - 1
    assert _close(lg, model.logits(a + c)[-1])
    lg, reused = s.prefill(c)              # nothing in common
    assert reused == 0 and s.tokens == c
    assert _close(lg, model.logits(c)[-1])
    lg, reused = s.prefill(a + b, reuse=False)
    assert reused == 0 and s.tokens == a + b


def test_generation_with_reuse_equals_fresh_generation(model):
    """Three turns: each greedy answer with the cache reused equals generate_ids from scratch,
    and each turn evaluates only what follows the previous turn's tokens."""
    s = Session(model.llama)
    seq = _ids(30, 4)
    for turn in range(3):
        st = TurnStats()
        got = list(s.generate(seq, Sampler(temperature=0), 10, model.tokenizer.eog_ids, st))
        want = list(generate_ids(_fresh(model), seq, Sampler(temperature=0), 10, model.tokenizer.eog_ids))
        assert got == want
        if turn:
            # the previous prompt and all its answer but the last token (never fed back) were cached
            assert st.prompt_reused == prev_len + len(prev_answer) - 1
        assert st.prompt_evaluated == len(seq) - st.prompt_reused
        prev_len, prev_answer = len(seq), got
        seq = seq + got + _ids(6, 10 + turn)


_FRESH = {}


def _fresh(model):
    """A second copy of the model (its own KV cache) for reference generation."""
    key = str(model.path)
    if key not in _FRESH:
        _FRESH[key] = ggq.load(model.path, n_ctx=model.n_ctx, threads=1).llama
    return _FRESH[key]


def test_cancel_keeps_the_cache_consistent(model):
    s = Session(model.llama)
    prompt = _ids(20, 5)
    seen = []
    st = TurnStats()
    for t in s.generate(prompt, Sampler(temperature=0), 50, frozenset(), st, cancelled=lambda: len(seen) >= 3):
        seen.append(t)
    assert len(seen) == 3 and st.stop == "cancelled" and st.gen_tokens == 3
    assert s.tokens == prompt + seen[:-1]   # the last token was never fed back
    lg, reused = s.prefill(prompt + seen + [7])
    assert reused == len(prompt) + 2 and _close(lg, model.logits(prompt + seen + [7])[-1])
    # cancelled before it starts: nothing evaluated
    st = TurnStats()
    assert list(s.generate(prompt, Sampler(temperature=0), 5, frozenset(), st, cancelled=lambda: True)) == []
    assert st.stop == "cancelled" and st.prompt_s == 0


def test_a_pass_that_fails_midway_claims_no_positions(model):
    """If a forward pass raises (an interrupt, an error) the positions it may have half-written
    are not claimed, so the next prompt re-evaluates them."""
    class Flaky:
        def __init__(self, llama):
            self.llama, self.n_ctx, self.calls = llama, llama.n_ctx, 0

        def forward(self, tokens, start_pos=0, all_logits=False):
            self.calls += 1
            if self.calls == 2:
                self.llama.forward(tokens[:3], start_pos)  # half the batch written, then it fails
                raise KeyboardInterrupt
            return self.llama.forward(tokens, start_pos, all_logits)

    s = Session(Flaky(model.llama), n_batch=8)
    ids = _ids(20, 6)
    with pytest.raises(KeyboardInterrupt):
        s.prefill(ids)
    assert s.tokens == ids[:8]
    other = ids[:8] + _ids(12, 7)
    lg, reused = s.prefill(other)
    assert reused == 8 and _close(lg, model.logits(other)[-1])


def test_sampler_settings_are_checked():
    with pytest.raises(UsageError, match="frequency_penalty"):
        PenaltySampler(frequency_penalty=3.0)
    with pytest.raises(UsageError, match="presence_penalty"):
        PenaltySampler(presence_penalty="x")
    with pytest.raises(UsageError, match="temperature"):
        PenaltySampler(temperature=-1)


def test_session_refuses_what_does_not_fit(model):
    s = Session(model.llama)
    with pytest.raises(UsageError, match="context"):
        list(s.generate(_ids(256, 8), Sampler(temperature=0), 4))
    with pytest.raises(UsageError, match="empty"):
        list(s.generate([], Sampler(temperature=0), 4))


# ---------------------------------------------------------------------------------------------
# chat templates

CHATML = ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi there<|im_end|>\n"
          "<|im_start|>assistant\nhello!<|im_end|>\n<|im_start|>user\nand now?<|im_end|>\n")
TURNS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi there"},
         {"role": "assistant", "content": "hello!"}, {"role": "user", "content": "and now?"}]


def test_multi_turn_template(model):
    tok = model.tokenizer
    assert tok.messages_ids(TURNS, True) == tok.encode(CHATML + "<|im_start|>assistant\n", add_bos=False)
    assert tok.messages_ids(TURNS, False) == tok.encode(CHATML, add_bos=False)
    assert tok.chat_ids("hi there", "Be brief.") == tok.messages_ids(TURNS[:2], True)
    for bad, where in (([], "non-empty"), ([{"role": "user"}], r"messages\[0\]\.content"),
                       ([{"role": "user", "content": "x"}, "y"], r"messages\[1\]"),
                       ([{"role": 3, "content": "x"}], r"messages\[0\]\.role")):
        with pytest.raises(UsageError, match=where):
            tok.messages_ids(bad)


@pytest.mark.smollm2
def test_smollm2_multi_turn_template(smollm2_gguf):
    """SmolLM2's own template: ChatML, its default system message when none is given."""
    m = ggq.load(smollm2_gguf, n_ctx=64, threads=1)
    tok = m.tokenizer
    assert tok.chat_template_source == "file"
    default = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    assert tok.apply_chat_template(TURNS, True) == CHATML + "<|im_start|>assistant\n"
    assert tok.apply_chat_template(TURNS[1:], True) == default + CHATML[CHATML.index("<|im_start|>user"):] + \
        "<|im_start|>assistant\n"
    ids = tok.messages_ids(TURNS, True)
    assert ids[:3] == [tok.token_to_id("<|im_start|>"), tok.token_to_id("system"), tok.token_to_id("Ċ")]
    assert tok.decode(ids) == CHATML + "<|im_start|>assistant\n"


# ---------------------------------------------------------------------------------------------
# `ggq chat`

def _chat(path, lines, *args, timeout=600):  # a cold Numba cache compiles first
    cmd = [sys.executable, "-m", "ggq", "chat", str(path), "-t", "1", *args]
    return subprocess.run(cmd, input="".join(f"{x}\n" for x in lines), capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "GGQ_PRECOMPILE": "0"})


def _reference_answers(model, conversation_steps, n, seed):
    """Answers generated on a fresh cache with one sampler carried across the turns (as the chat
    does), for each conversation in turn; each answer joins its conversation."""
    sampler = Sampler(temperature=0.9, seed=seed)
    llama = _fresh(model)
    answers = []
    for build in conversation_steps:
        msgs = build(answers)
        ids = model.tokenizer.messages_ids(msgs, True)
        toks = list(generate_ids(llama, ids, sampler, n, model.tokenizer.eog_ids))
        answers.append(model.tokenizer.decode(toks))
    return answers


def test_chat_piped(tiny_path, model):
    lines = ["hello there", "how are you", "/system Be brief.", "again please", "/reset", "/nope",
             "the cat sat", "/exit", "never read"]
    r = _chat(tiny_path, lines, "-c", "256", "-n", "8", "--temp", "0.9", "-s", "5", "--stats")
    assert r.returncode == 0, r.stderr
    u = lambda t: {"role": "user", "content": t}  # noqa: E731
    a = lambda t: {"role": "assistant", "content": t}  # noqa: E731
    sysm = {"role": "system", "content": "Be brief."}
    steps = [
        lambda ans: [u("hello there")],
        lambda ans: [u("hello there"), a(ans[0]), u("how are you")],
        lambda ans: [sysm, u("hello there"), a(ans[0]), u("how are you"), a(ans[1]), u("again please")],
        lambda ans: [sysm, u("the cat sat")],   # /reset keeps the system message
    ]
    want = _reference_answers(model, steps, 8, 5)
    assert r.stdout == "".join(x + "\n" for x in want)
    stats = [tuple(map(int, s)) for s in re.findall(r"prompt (\d+) tok \((\d+) reused, (\d+) evaluated", r.stderr)]
    assert len(stats) == 4
    assert stats[0][1] == 0 and stats[1][1] > stats[0][0] // 2   # turn 2 reused turn 1's tokens
    assert all(p == reused + ev for p, reused, ev in stats)
    assert "system message set" in r.stderr and "conversation cleared" in r.stderr
    assert "unknown command /nope" in r.stderr


def test_chat_drops_oldest_turns_when_full(tiny_path, model):
    """-c 96 -n 8: the prompt may use 88 tokens; older pairs go, the system message stays."""
    msgs_in = [f"message number {i} " + "abc " * 6 for i in range(5)]
    r = _chat(tiny_path, ["/system keep me"] + msgs_in, "-c", "96", "-n", "8", "--temp", "0.9", "-s", "9")
    assert r.returncode == 0, r.stderr
    sysm = {"role": "system", "content": "keep me"}
    tok = model.tokenizer
    # the rule, replayed: the newest user message after the pairs that fit in 96 - 8 tokens
    sampler = Sampler(temperature=0.9, seed=9)
    llama = _fresh(model)
    turns, want, drops = [], [], 0
    for text in msgs_in:
        turns.append({"role": "user", "content": text})
        while len(tok.messages_ids([sysm] + turns, True)) > 88:
            del turns[:2]
            drops += 1
        toks = list(generate_ids(llama, tok.messages_ids([sysm] + turns, True), sampler, 8, tok.eog_ids))
        turns.append({"role": "assistant", "content": tok.decode(toks)})
        want.append(tok.decode(toks))
    assert drops >= 2
    assert r.stdout == "".join(x + "\n" for x in want)
    notes = re.findall(r"dropped the (\d+) oldest turns?", r.stderr)
    assert sum(map(int, notes)) == drops and "the system message stays" in r.stderr


def test_chat_message_too_long(tiny_path):
    r = _chat(tiny_path, ["word " * 200, "short one"], "-c", "64", "-n", "4", "--temp", "0")
    assert r.returncode == 0, r.stderr
    assert "message not sent" in r.stderr and "--ctx-size" in r.stderr
    assert len(r.stdout.splitlines()) == 1   # the short one was answered


def test_chat_bad_settings_are_one_line(tiny_path):
    r = _chat(tiny_path, [], "--top-p", "0")
    assert r.returncode == 1 and r.stderr.strip().splitlines() == ["ggq: error: top-p must be in (0, 1] (got 0.0); 1 disables it"]


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a POSIX pseudo-terminal")
def test_chat_ctrl_c_in_a_terminal(tiny_path):
    """Through a pseudo-terminal: Ctrl-C (the terminal's ^C, a SIGINT) stops a long answer,
    the chat goes on; Ctrl-C at the prompt does not leave either; /exit leaves."""
    import fcntl
    import select
    import termios

    master, slave = os.openpty()

    def become_terminal_owner():  # runs in the child: its own session, the pty as its terminal
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    # greedy, until the 4096-token context is full: several seconds of "sss..."
    cmd = [sys.executable, "-m", "ggq", "chat", str(tiny_path), "-t", "1", "-c", "4096", "--temp", "0"]
    p = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, preexec_fn=become_terminal_owner,
                         env={**os.environ, "GGQ_PRECOMPILE": "0", "TERM": "dumb"})
    os.close(slave)
    seen = b""

    def read_until(pattern: bytes, since: int = 0, timeout=600.0) -> int:  # 600: a cold Numba cache
        """Read until pattern appears after offset since; the offset just past it."""
        nonlocal seen
        end = time.time() + timeout
        while pattern not in seen[since:]:
            left = end - time.time()
            assert left > 0, (pattern, seen[since:][-800:])
            ready, _, _ = select.select([master], [], [], left)
            if ready:
                try:
                    seen += os.read(master, 4096)
                except OSError:
                    break
        return seen.index(pattern, since) + len(pattern)

    try:
        at = read_until(b"> ")
        os.write(master, b"hello there\r")
        at = read_until(b"hello there", at)   # the terminal's echo; the answer follows
        read_until(b"sssss", at)
        os.write(master, b"\x03")     # Ctrl-C
        end = read_until(b"answer stopped (Ctrl-C)", at)
        n_answer = seen[at:end].count(b"s")
        at = read_until(b"> ", end)
        # CPython's readline notices a SIGINT only while it waits in select(): one that lands
        # between the prompt's write and the wait is seen at the next key. A person's Ctrl-C
        # comes later than this test could send it.
        time.sleep(0.5)
        os.write(master, b"\x03")     # Ctrl-C at the prompt: a fresh line, still chatting
        at = read_until(b"/exit or Ctrl-D leaves", at)
        read_until(b"> ", at)
        os.write(master, b"/exit\r")
        assert p.wait(30) == 0
        assert n_answer < 4000          # the answer was cut short
    finally:
        if p.poll() is None:
            p.kill()
        os.close(master)
