"""`ggq serve` driven over a loopback port with the official `openai` client (and raw HTTP for
malformed requests). Expected outputs come from a second, independently loaded copy of the
model through ggq.api's own generation loop (runtime.generate.generate_ids, no prefix reuse), or
from plain NumPy over its logits."""
from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import ggq
from tiny_model import make_tiny_hf_dir

from optional import needed  # noqa: E402

openai = needed("openai")
needed("starlette")
needed("uvicorn")

from ggq.server import Server, bind, create_app  # noqa: E402

N_CTX = 2048  # room for the long answer the killed client asks for


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    from ggq.convert import convert_model

    base = tmp_path_factory.mktemp("serve")
    out = base / "tiny.ggq"
    convert_model(make_tiny_hf_dir(base / "hf"), out, preset="q8_0", progress=False)
    return out


@pytest.fixture(scope="module")
def ref(tiny_path):
    """The reference: the same file loaded again (its own KV cache), generating with ggq.api."""
    return ggq.load(tiny_path, n_ctx=N_CTX, threads=1)


def start_server(path, api_key=None, n_ctx=N_CTX):
    m = ggq.load(path, n_ctx=n_ctx, threads=1)
    logs = []
    app = create_app(m, "tiny", api_key=api_key, log=logs.append)
    app.state.engine.warm()
    srv = Server(app, bind("127.0.0.1", 0)).start()
    return srv, app, logs


@pytest.fixture(scope="module")
def server(tiny_path):
    srv, app, logs = start_server(tiny_path)
    yield srv, app, logs
    srv.stop()
    app.state.engine.close()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0].url + "/v1", api_key="unused", max_retries=0, timeout=60)


def greedy(ref, ids, n, **sampling):
    toks = list(ref.generate_tokens(list(ids), n, temperature=sampling.pop("temperature", 0), **sampling))
    return toks, ref.tokenizer.decode(toks), ref.stats.stop


def raw(server, method, path, body=None, headers=None):
    """(status, parsed JSON body) of one plain HTTP request; body: bytes, or an object sent as JSON."""
    url = server[0].url
    host, port = url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    r = conn.getresponse()
    text = r.read()
    conn.close()
    return r.status, json.loads(text) if text else None


CONVERSATION = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "the cat sat on the mat"},
    {"role": "assistant", "content": "and then it left"},
    {"role": "user", "content": "where did it go?"},
]


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    status, body = raw(server, "GET", "/health")
    assert status == 200 and body["status"] == "ok" and body["n_ctx"] == N_CTX


def test_chat_matches_reference(server, client, ref):
    ids = ref.tokenizer.messages_ids(CONVERSATION, True)
    toks, text, stop = greedy(ref, ids, 12)
    r = client.chat.completions.create(model="tiny", messages=CONVERSATION, max_tokens=12, temperature=0)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == text
    assert r.choices[0].finish_reason == ("length" if stop == "length" else "stop")
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(ids), len(toks))
    assert r.usage.total_tokens == len(ids) + len(toks)
    # streamed: the same text in pieces, the role first, usage last
    chunks = list(client.chat.completions.create(model="tiny", messages=CONVERSATION, max_tokens=12, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == r.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(toks)
    # the same prompt again: all but its last token come from the cache
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == len(ids) - 1


def test_completion_matches_reference(server, client, ref):
    prompt = "once upon a time there was"
    ids = ref.tokenizer.encode(prompt)
    toks, text, _ = greedy(ref, ids, 10)
    r = client.completions.create(model="tiny", prompt=prompt, max_tokens=10, temperature=0)
    assert r.choices[0].text == text and r.usage.completion_tokens == len(toks)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny", prompt=prompt, max_tokens=10, temperature=0, stream=True))
    assert streamed == text
    # a prompt of token ids
    r = client.completions.create(model="tiny", prompt=ids, max_tokens=10, temperature=0)
    assert r.choices[0].text == text and r.usage.prompt_tokens == len(ids)


def test_seed_reproduces(client, ref):
    kw = dict(model="tiny", prompt="the dog", max_tokens=24, temperature=1.5, top_k=0, top_p=1.0, min_p=0.0)
    kw["extra_body"] = {k: kw.pop(k) for k in ("top_k", "min_p")}
    a = client.completions.create(seed=11, **kw).choices[0].text
    b = client.completions.create(seed=11, **kw).choices[0].text
    c = client.completions.create(seed=12, **kw).choices[0].text
    assert a == b and a != c
    # the same draws as ggq.api's generator with that seed
    _, want, _ = greedy(ref, ref.tokenizer.encode("the dog"), 24, temperature=1.5, top_k=0, top_p=1.0, min_p=0.0,
                        seed=11)
    assert a == want


def test_stop_strings(client, ref):
    prompt = "she sells sea shells"
    _, text, _ = greedy(ref, ref.tokenizer.encode(prompt), 40)
    stop = text[6:9]
    want = text[:text.find(stop)]
    assert len(want) < len(text)
    for stream in (False, True):
        r = client.completions.create(model="tiny", prompt=prompt, max_tokens=40, temperature=0, stop=[stop, "\x00"],
                                      stream=stream)
        if stream:
            chunks = list(r)
            got = "".join(c.choices[0].text for c in chunks)
            finish = chunks[-1].choices[0].finish_reason
        else:
            got, finish = r.choices[0].text, r.choices[0].finish_reason
        assert got == want and finish == "stop"
    # a stop string that never appears changes nothing
    r = client.completions.create(model="tiny", prompt=prompt, max_tokens=40, temperature=0, stop="\x00\x01")
    assert r.choices[0].text == text


def test_frequency_and_presence_penalties(client, ref):
    """Against plain NumPy on the reference's logits: logit - count * frequency - (count > 0) *
    presence over the last 64 tokens of prompt and output, then argmax."""
    prompt = "a a a a the the"
    ids = ref.tokenizer.encode(prompt)
    fp, pp = 0.7, 0.4
    seq = list(ids)
    for _ in range(12):
        lg = ref.logits(seq)[-1].astype(np.float64)
        recent, counts = np.unique(np.array(seq[-64:]), return_counts=True)
        lg[recent] -= counts * fp + pp
        seq.append(int(np.argmax(lg)))
    want = ref.tokenizer.decode(seq[len(ids):])
    r = client.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0, frequency_penalty=fp,
                                  presence_penalty=pp)
    assert r.choices[0].text == want
    _, plain, _ = greedy(ref, ids, 12)
    assert plain != want  # the penalties made a difference here


def test_concurrent_clients(server, client, ref):
    """24 clients at once (half streaming): every answer equals its prompt's reference, none lost."""
    n_clients = 24
    prompts = [f"client {i} says {'ab' * (i % 5)} hello" for i in range(n_clients)]
    want = [greedy(ref, ref.tokenizer.encode(p), 16)[1] for p in prompts]
    engine = server[1].state.engine
    done_before = len(engine.finished)
    got, errors = [None] * n_clients, []
    peak, running = [0], [True]
    barrier = threading.Barrier(n_clients)

    def watch():  # how many requests the engine holds at once
        while running[0]:
            peak[0] = max(peak[0], engine.pending)
            time.sleep(0.002)

    def one(i):
        try:
            c = openai.OpenAI(base_url=server[0].url + "/v1", api_key="unused", max_retries=0, timeout=120)
            barrier.wait()
            if i % 2:
                got[i] = "".join(ch.choices[0].text for ch in c.completions.create(
                    model="tiny", prompt=prompts[i], max_tokens=16, temperature=0, stream=True))
            else:
                got[i] = c.completions.create(model="tiny", prompt=prompts[i], max_tokens=16, temperature=0).choices[0].text
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n_clients)]
    watcher = threading.Thread(target=watch)
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    dt = time.perf_counter() - t0
    running[0] = False
    watcher.join()
    assert errors == []
    assert got == want
    served = list(engine.finished)[done_before:]
    assert len(served) == n_clients and all(s[2] == "length" for s in served)
    assert peak[0] >= 2  # requests did wait in the queue
    print(f"\nconcurrency: {n_clients} clients, {n_clients} requests, {n_clients - got.count(None)} answered, "
          f"{len(errors)} failures, at most {peak[0]} held at once, {dt:.2f} s")


KILLED_CLIENT = r"""
import sys, openai
c = openai.OpenAI(base_url=sys.argv[1], api_key="unused", max_retries=0)
for ch in c.completions.create(model="tiny", prompt=sys.argv[2], max_tokens=int(sys.argv[3]), temperature=0, stream=True):
    if ch.choices and ch.choices[0].text:
        print("streaming", flush=True)
        sys.stdin.read()   # wait to be killed
"""


def test_client_killed_mid_stream(server, client, ref):
    srv, app, logs = server
    engine = app.state.engine
    n_before = len(engine.finished)
    p = subprocess.Popen([sys.executable, "-c", KILLED_CLIENT, srv.url + "/v1", "the long story", "1900"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "streaming"
        p.kill()  # SIGKILL: the kernel closes the connection under the server
        p.wait(10)
    finally:
        if p.poll() is None:
            p.kill()
    t0 = time.perf_counter()
    ids = ref.tokenizer.encode("after the kill")
    _, want, _ = greedy(ref, ids, 8)
    r = client.completions.create(model="tiny", prompt="after the kill", max_tokens=8, temperature=0)
    assert r.choices[0].text == want
    waited = time.perf_counter() - t0
    killed = list(engine.finished)[n_before]
    assert killed[2] == "cancelled" and 0 < killed[3].gen_tokens < 1900
    assert waited < 30
    assert any("stop: cancelled" in line for line in logs)


def test_client_gone_while_queued(server, client):
    """A request whose client leaves while it waits in the queue never runs."""
    srv, app, _ = server
    engine = app.state.engine
    n_before = len(engine.finished)
    host, port = srv.url.split("//")[1].split(":")
    # a long stream holds the engine while the second request queues
    long = http.client.HTTPConnection(host, int(port), timeout=60)
    long.request("POST", "/v1/completions", body=json.dumps(
        {"prompt": "hold the engine", "max_tokens": 2000, "temperature": 0, "stream": True}),
        headers={"Content-Type": "application/json"})
    resp = long.getresponse()
    assert resp.status == 200 and resp.readline().startswith(b"data: ")
    queued = http.client.HTTPConnection(host, int(port), timeout=60)
    queued.request("POST", "/v1/completions", body=json.dumps({"prompt": "never run", "max_tokens": 4}),
                   headers={"Content-Type": "application/json"})

    def wait_for(cond, what):
        for _ in range(3000):
            if cond():
                return
            time.sleep(0.01)
        raise AssertionError(f"timed out waiting for {what}")

    wait_for(lambda: engine.waiting(), "the second request to queue")
    job = engine.waiting()[0]
    queued.sock.close()   # the queued client leaves
    queued.close()
    wait_for(job.cancel.is_set, "the server to notice")
    long.sock.close()     # and the streaming one
    long.close()
    wait_for(lambda: len(engine.finished) >= n_before + 2, "both requests to end")
    runs = list(engine.finished)[n_before:]
    assert runs[0][2] in ("cancelled", "length")   # a fast machine may finish it first
    assert runs[1][0] == job.number and runs[1][2] == "cancelled"
    assert runs[1][3].prompt_s == 0 and runs[1][3].gen_tokens == 0  # never evaluated


def test_malformed_requests(server, client):
    """Each bad request gets a 4xx with an OpenAI error body naming the problem; the server lives on."""
    chat = "/v1/chat/completions"
    ok_msgs = [{"role": "user", "content": "hi"}]
    cases = [
        ("POST", chat, b"{not json", 400, "not valid JSON"),
        ("POST", chat, b"\xff\xfe", 400, "UTF-8"),
        ("POST", chat, b"[1, 2]", 400, "JSON object"),
        ("POST", chat, {"messages": "hi"}, 400, "'messages'"),
        ("POST", chat, {"messages": []}, 400, "'messages'"),
        ("POST", chat, {"messages": [{"role": "wizard", "content": "x"}]}, 400, "role"),
        ("POST", chat, {"messages": [{"role": "user", "content": 5}]}, 400, "content"),
        ("POST", chat, {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "text parts"),
        ("POST", chat, {"messages": ok_msgs, "temperature": "hot"}, 400, "'temperature'"),
        ("POST", chat, {"messages": ok_msgs, "temperature": -1}, 400, "'temperature'"),
        ("POST", chat, {"messages": ok_msgs, "top_p": 0}, 400, "'top_p'"),
        ("POST", chat, {"messages": ok_msgs, "max_tokens": -5}, 400, "'max_tokens'"),
        ("POST", chat, {"messages": ok_msgs, "max_tokens": 2.5}, 400, "'max_tokens'"),
        ("POST", chat, {"messages": ok_msgs, "stream": "yes"}, 400, "'stream'"),
        ("POST", chat, {"messages": ok_msgs, "stop": 5}, 400, "'stop'"),
        ("POST", chat, {"messages": ok_msgs, "seed": -3}, 400, "'seed'"),
        ("POST", chat, {"messages": ok_msgs, "n": 2}, 400, "'n'"),
        ("POST", chat, {"messages": ok_msgs, "logit_bias": {"5": 10}}, 400, "'logit_bias'"),
        ("POST", chat, {"messages": ok_msgs, "logprobs": True}, 400, "'logprobs'"),
        ("POST", chat, {"messages": ok_msgs, "tools": [{"type": "function"}]}, 400, "'tools'"),
        ("POST", chat, {"messages": ok_msgs, "frobnicate": 1}, 400, "'frobnicate'"),
        ("POST", chat, {"messages": ok_msgs, "model": "gpt-4"}, 404, "gpt-4"),
        ("POST", chat, {"messages": [{"role": "user", "content": "word " * 3000}]}, 400, "context"),
        ("POST", "/v1/completions", {"prompt": ["a", "b"]}, 400, "several prompts"),
        ("POST", "/v1/completions", {"prompt": [1, 99999]}, 400, "99999"),
        ("POST", "/v1/completions", {"prompt": ""}, 400, "empty"),
        ("POST", "/v1/completions", {"prompt": "x", "echo": True}, 400, "'echo'"),
        ("POST", "/v1/completions", b"x" * (9 << 20), 413, "limit"),
        ("GET", chat, None, 405, "Method Not Allowed"),
        ("GET", "/v1/nothing", None, 404, "Not Found"),
    ]
    for method, path, body, status, needle in cases:
        got, err = raw(server, method, path, body)
        assert got == status, (body if not isinstance(body, bytes) else body[:40], got, err)
        assert set(err) == {"error"} and needle in err["error"]["message"], err
        assert err["error"]["type"] == "invalid_request_error"
    _, err = raw(server, "POST", chat, {"messages": [{"role": "user", "content": "word " * 3000}]})
    assert err["error"]["code"] == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="other", messages=ok_msgs)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=ok_msgs, temperature="warm")
    # still serving
    r = client.chat.completions.create(model="tiny", messages=ok_msgs, max_tokens=3, temperature=0)
    assert r.usage.completion_tokens <= 3


def test_api_key(tiny_path):
    srv, app, _ = start_server(tiny_path, api_key="s3cret", n_ctx=256)
    try:
        url = srv.url + "/v1"
        good = openai.OpenAI(base_url=url, api_key="s3cret", max_retries=0)
        assert good.completions.create(model="tiny", prompt="hi", max_tokens=2, temperature=0).usage.completion_tokens >= 0
        assert [m.id for m in good.models.list().data] == ["tiny"]
        for key in ("wrong", "s3cret "[:-1] + "x"):
            with pytest.raises(openai.AuthenticationError):
                openai.OpenAI(base_url=url, api_key=key, max_retries=0).models.list()
        status, err = raw((srv,), "POST", "/v1/completions", {"prompt": "hi"})
        assert status == 401 and err["error"]["code"] == "invalid_api_key"
        assert raw((srv,), "GET", "/health")[0] == 200   # health needs no key
    finally:
        srv.stop()
        app.state.engine.close()


def test_serve_command(tiny_path):
    """`ggq serve` as a user starts it: listens on the port it prints, answers, refuses a port in
    use with one line, stops on Ctrl-C."""
    import signal

    env = {**os.environ, "GGQ_PRECOMPILE": "0"}
    cmd = [sys.executable, "-m", "ggq", "serve", str(tiny_path), "--port", "0", "-t", "1", "-c", "128"]
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = ""
        for _ in range(50):
            line = p.stderr.readline()
            if "serving" in line or not line:
                break
        m = re.search(r"serving tiny on (http://127\.0\.0\.1:(\d+)/v1)", line)
        assert m, line
        c = openai.OpenAI(base_url=m.group(1), api_key="unused", max_retries=0)
        r = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
        assert r.usage.completion_tokens <= 3
        busy = subprocess.run([sys.executable, "-m", "ggq", "serve", str(tiny_path), "--port", m.group(2)],
                              capture_output=True, text=True, env=env, timeout=120)
        assert busy.returncode == 1
        assert busy.stderr.strip().splitlines() == [f"ggq: error: cannot listen on 127.0.0.1:{m.group(2)}: "
                                                    f"Address already in use"]
        p.send_signal(signal.SIGINT)
        assert p.wait(30) == 130
    finally:
        if p.poll() is None:
            p.kill()


def test_missing_extra_is_one_line():
    """Without starlette/uvicorn, `ggq serve` says how to install them."""
    code = ("import importlib.util, sys\n"
            "orig = importlib.util.find_spec\n"
            "importlib.util.find_spec = lambda n, *a: None if n == 'uvicorn' else orig(n, *a)\n"
            "from ggq.cli import main\nsys.exit(main(['serve']))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip() == "ggq: error: `ggq serve` needs uvicorn: pip install 'ggq[serve]'"


# ---------------------------------------------------------------------------------------------
# the real model

@pytest.mark.smollm2
def test_greedy_equals_ggq_run(smollm2_gguf):
    """Greedy text through the server equals `ggq run --temp 0` for the same prompt, raw and chat."""
    m = ggq.load(threads=1)  # the default model, as `ggq run` loads it
    app = create_app(m, "smollm2")
    app.state.engine.warm()
    srv = Server(app, bind("127.0.0.1", 0)).start()
    try:
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        env = {**os.environ, "GGQ_PRECOMPILE": "0"}
        for chat in (False, True):
            prompt = "What is the capital of France?" if chat else "The three primary colors are"
            run = subprocess.run([sys.executable, "-m", "ggq", "run", "-p", prompt, "-n", "24", "--temp", "0", "-t", "1"]
                                 + (["--chat"] if chat else []), capture_output=True, text=True, env=env, timeout=300)
            assert run.returncode == 0, run.stderr
            want = run.stdout[:-1]  # ggq run ends with a newline
            if chat:
                r = c.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": prompt}],
                                              max_tokens=24, temperature=0)
                got = r.choices[0].message.content
            else:
                got = c.completions.create(model="smollm2", prompt=prompt, max_tokens=24, temperature=0).choices[0].text
            assert got == want and len(got) > 10
    finally:
        srv.stop()
        app.state.engine.close()


def test_random_requests_never_break_the_server(server):
    """A few hundred seeded random bodies (known and unknown fields, values of every JSON type):
    each gets a 200 or a 4xx with an error body, never a 500; the server answers afterwards."""
    rng = np.random.default_rng(1234)
    fields = ["messages", "prompt", "model", "temperature", "top_p", "top_k", "min_p", "seed", "stop", "stream",
              "stream_options", "n", "logprobs", "logit_bias", "frequency_penalty", "presence_penalty",
              "repeat_penalty", "repeat_last_n", "cache_prompt", "max_completion_tokens", "echo", "tools",
              "response_format", "user", "bogus"]

    def value(depth=0):
        k = int(rng.integers(0, 11 if depth < 2 else 9))
        if k == 9:
            return [value(depth + 1) for _ in range(rng.integers(0, 3))]
        if k == 10:
            return {str(rng.choice(["role", "content", "type", "text", "include_usage"])): value(depth + 1)
                    for _ in range(rng.integers(0, 3))}
        return [None, True, int(rng.integers(-3, 5)), float(rng.normal() * 3), "", "tiny",
                "x" * int(rng.integers(1, 40)), 10 ** 30, float("nan")][k]

    def message():
        return {"role": str(rng.choice(["user", "system", "assistant", "tool", "developer"])),
                "content": str(rng.choice(["hi", "", "the cat"])) if rng.random() < 0.8 else value(1)}

    statuses = {}
    for i in range(300):
        body = {f: value() for f in rng.choice(fields, size=int(rng.integers(0, 5)), replace=False)}
        if rng.random() < 0.6:
            body["messages"] = [message() for _ in range(rng.integers(1, 4))]
        if rng.random() < 0.4:
            body["prompt"] = str(rng.choice(["the", "a b c", ""])) if rng.random() < 0.7 else value()
        body["max_tokens"] = int(rng.integers(0, 3)) if rng.random() < 0.9 else value()
        path = "/v1/chat/completions" if rng.random() < 0.5 else "/v1/completions"
        text = json.dumps(body, allow_nan=True).encode()
        if rng.random() < 0.1:  # broken JSON too
            text = text[:int(rng.integers(0, len(text)))]
        host, port = server[0].url.split("//")[1].split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        conn.request("POST", path, body=text, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        payload = r.read()
        conn.close()
        statuses[r.status] = statuses.get(r.status, 0) + 1
        assert r.status in (200, 400, 404), (r.status, path, text[:300], payload[:300])
        if r.status != 200:
            err = json.loads(payload)["error"]
            assert err["message"] and err["type"] == "invalid_request_error"
    assert statuses.get(200, 0) >= 5 and statuses.get(400, 0) > 100  # both paths exercised
    status, _ = raw(server, "POST", "/v1/completions", {"prompt": "still here", "max_tokens": 2})
    assert status == 200
    status, _ = raw(server, "POST", "/v1/chat/completions", b"[" * 100000)
    assert status == 400
