"""Measure `ggq serve`: time to first token against `ggq run`, the prefix-reuse saving on a
multi-turn chat, and many concurrent clients. Prints a Markdown report (docs/server.md quotes it).

    python tools/bench_server.py [--model M] [--threads 1] [--turns 6] [--clients 24]

The server runs in this process on a loopback port (as tests/test_server.py starts it) and is
driven with the `openai` client; `ggq run` runs as a subprocess (warm Numba cache: it is run once
before the timed runs)."""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import threading
import time

PROMPT = "Write a short poem about the sea."
TURNS = ["Hi! Who are you?", "What can you tell me about the moon?", "How far away is it?",
         "And how long would it take to get there by car?", "What about by plane?",
         "Thanks. Can you sum up what we talked about?", "One more: why is the sky blue?",
         "Thank you, goodbye!"]


def ttft(client, model_id, messages, reuse: bool) -> tuple[float, dict]:
    """Seconds from sending the request to the first streamed text, and the usage/timings."""
    t0 = time.perf_counter()
    first, last = None, None
    for ch in client.chat.completions.create(model=model_id, messages=messages, max_tokens=8, temperature=0,
                                             stream=True, stream_options={"include_usage": True},
                                             extra_body={"cache_prompt": reuse}):
        if first is None and ch.choices and ch.choices[0].delta.content:
            first = time.perf_counter() - t0
        last = ch
    return first, last.model_extra.get("timings", {})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--clients", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()

    import openai

    import ggq
    from ggq.server import Server, bind, create_app

    m = ggq.load(a.model, threads=a.threads)
    model_id = "m"
    app = create_app(m, model_id)
    app.state.engine.warm()
    srv = Server(app, bind("127.0.0.1", 0)).start()
    c = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=600)
    print(f"# ggq serve measurements: {m.path.name}, threads {a.threads}, context {m.n_ctx}\n")
    try:
        # -- time to first token --------------------------------------------------------------
        msgs = [{"role": "user", "content": PROMPT}]
        n_prompt = len(m.tokenizer.messages_ids(msgs))
        cold = [ttft(c, model_id, msgs, False)[0] for _ in range(a.repeats)]
        ttft(c, model_id, msgs, True)
        warm = [ttft(c, model_id, msgs, True)[0] for _ in range(a.repeats)]
        env = {**os.environ}
        cmd = [sys.executable, "-m", "ggq", "run", "--chat", "-p", PROMPT, "-n", "8", "--temp", "0",
               "-t", str(a.threads)] + ([a.model] if a.model else [])
        subprocess.run(cmd, capture_output=True, env=env)  # Numba cache warm
        run_first, run_wall = [], []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True, env=env)
            run_wall.append(time.perf_counter() - t0)
            run_first.append(float(re.search(r"first text after (\d+) ms", r.stderr).group(1)) / 1000)
        med = statistics.median
        print(f"## Time to first token ({n_prompt}-token chat prompt, median of {a.repeats})\n")
        print("| path | first token |")
        print("|---|---:|")
        print(f"| server, prompt evaluated (cache_prompt false) | {med(cold) * 1000:.0f} ms |")
        print(f"| server, same prompt again (prefix reused) | {med(warm) * 1000:.0f} ms |")
        print(f"| `ggq run` (in-process: from command start, load included) | {med(run_first) * 1000:.0f} ms |")
        print(f"| `ggq run` (whole process: start to exit, 8 tokens) | {med(run_wall) * 1000:.0f} ms |")
        print()

        # -- multi-turn chat: prefix reuse ----------------------------------------------------
        print(f"## Prefix reuse on a {a.turns}-turn chat (greedy, 48-token answers)\n")
        rows = {}
        for reuse in (False, True):
            c.completions.create(model=model_id, prompt="reset", max_tokens=1)  # a different cache
            conv, per = [], []
            for text in TURNS[:a.turns]:
                conv.append({"role": "user", "content": text})
                r = c.chat.completions.create(model=model_id, messages=conv, max_tokens=48, temperature=0,
                                              extra_body={"cache_prompt": reuse})
                t = r.model_extra["timings"]
                per.append((r.usage.prompt_tokens, t["prompt_n"], t["prompt_ms"], r.choices[0].message.content))
                conv.append({"role": "assistant", "content": r.choices[0].message.content})
            rows[reuse] = per
        print("| turn | without reuse: prompt tokens | evaluated | ms | with reuse: prompt tokens | evaluated | ms |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for i, (no, yes) in enumerate(zip(rows[False], rows[True])):
            print(f"| {i + 1} | {no[0]} | {no[1]} | {no[2]:.0f} | {yes[0]} | {yes[1]} | {yes[2]:.0f} |")
        tot = {k: (sum(x[0] for x in v), sum(x[1] for x in v), sum(x[2] for x in v)) for k, v in rows.items()}
        print(f"| all | {tot[False][0]} | {tot[False][1]} | {tot[False][2]:.0f} | {tot[True][0]} | {tot[True][1]} | "
              f"{tot[True][2]:.0f} |")
        same = sum(x[3] == y[3] for x, y in zip(rows[False], rows[True]))
        print(f"\nAnswers identical with and without reuse: {same} of {a.turns} turns.")
        print(f"Prompt tokens evaluated: {tot[True][1]} instead of {tot[False][1]} "
              f"({100 * (1 - tot[True][1] / tot[False][1]):.0f}% fewer); prompt time {tot[True][2]:.0f} ms instead "
              f"of {tot[False][2]:.0f} ms.\n")

        # -- concurrency ----------------------------------------------------------------------
        n = a.clients
        prompts = [f"Question {i}: name a color and a number ({i})." for i in range(n)]
        alone = [c.chat.completions.create(model=model_id, messages=[{"role": "user", "content": p}], max_tokens=16,
                                           temperature=0).choices[0].message.content for p in prompts]
        got, errors = [None] * n, []
        barrier = threading.Barrier(n)

        def one(i):
            try:
                cl = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=600)
                barrier.wait()
                kw = dict(model=model_id, messages=[{"role": "user", "content": prompts[i]}], max_tokens=16,
                          temperature=0)
                if i % 2:
                    got[i] = "".join(ch.choices[0].delta.content or "" for ch in cl.chat.completions.create(
                        stream=True, **kw) if ch.choices)
                else:
                    got[i] = cl.chat.completions.create(**kw).choices[0].message.content
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))

        t0 = time.perf_counter()
        th = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in th:
            t.start()
        for t in th:
            t.join()
        dt = time.perf_counter() - t0
        same = sum(g == w for g, w in zip(got, alone))
        print(f"## Concurrency\n\n{n} clients at once (half streaming), {n} requests of 16 tokens: "
              f"{n - got.count(None)} answered, {len(errors)} failures, {same}/{n} identical to the answer the "
              f"same prompt gets alone; {dt:.1f} s in all.")
    finally:
        srv.stop()
        app.state.engine.close()


if __name__ == "__main__":
    main()
