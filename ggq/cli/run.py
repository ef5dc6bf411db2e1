"""`ggq run`, `ggq bench`, `ggq perplexity`: thin shells over ggq.api."""
from __future__ import annotations

import math
import os
import sys
import time
from contextlib import contextmanager

import click

from ..errors import UsageError
from . import cli
from ._gpu import gpu_memory_line, gpu_options


def _log(msg: str) -> None:
    click.echo(f"ggq: {msg}", err=True)


@contextmanager
def _numba_without_yaml():
    """Numba imports PyYAML when it starts (10-20 ms here) only to read a .numba_config.yaml in
    the current folder; with no such file there, PyYAML reads as absent while Numba imports
    (Numba then reads its settings from the environment alone, as it would anyway). Nothing
    is masked when Numba or PyYAML is already imported or the file exists."""
    if "numba" in sys.modules or "yaml" in sys.modules or os.path.exists(".numba_config.yaml"):
        yield
        return
    sys.modules["yaml"] = None
    try:
        yield
    finally:
        if "yaml" in sys.modules and sys.modules["yaml"] is None:
            del sys.modules["yaml"]


def _load(model, ctx, threads, no_mmap=False, then=None, n_gpu_layers=0, device=None):
    """ggq.load, then then(model) if given, then Numba ready for kernels (jit_cache.numba_ready:
    rather than in the first kernel call), then the callable then() returned, if any.
    n_gpu_layers, device: -ngl and --device (ggq.cli._gpu). Kernels this process loads go in
    that last step: before numba_ready(fast_cache_loads=True), a load refreshes Numba's whole
    target context (0.1-0.4 s of imports under Numba's compiler lock); then() itself runs first
    so that a helper process compiling a cold cache starts as early as it can."""
    from ..api import load
    from ..jit_cache import numba_ready, numba_without_scipy

    with numba_without_scipy():  # this process is ours: spare Numba's SciPy imports
        with _numba_without_yaml():  # only while Numba itself imports: other libraries may want yaml
            import numba  # noqa: F401
        m = load(model, n_ctx=ctx, threads=threads, log=_log, use_mmap=not no_mmap, n_gpu_layers=n_gpu_layers,
                 device=device)
        after = then(m) if then is not None else None
        numba_ready(fast_cache_loads=True)
        if after is not None:
            after()
    return m


def _kernel_tasks(llama, n_prompt: int) -> tuple[list[str], list[str]]:
    """The weight kernels a run calls, in the order it first calls them, as ggq.kernels.warm's
    tasks: (the prompt's: "mm:TYPE" per layer matrix type, then "mv:" for the output row, all
    "mv:" for a prompt of a few rows, which runtime.linear runs row by row; the decode step's
    others: "mv:TYPE")."""
    from ..runtime import linear

    mats = list(llama.matrices())
    out = getattr(llama, "output", mats[0])
    layer = [x for x in mats if x is not mats[0] and x is not out]

    def name(m):
        return (m.qtype if isinstance(m.qtype, str) else m.qtype.name).upper()

    batch = "mv" if n_prompt <= getattr(linear, "MATVEC_ROWS_MAX", 1) else "mm"
    prompt = list(dict.fromkeys([f"{batch}:{name(m)}" for m in layer] + [f"mv:{name(out)}"]))
    decode = [t for t in dict.fromkeys(f"mv:{name(m)}" for m in layer) if t not in prompt]
    return prompt, decode


def _load_weight_kernels(m, n_prompt, decode: bool = True) -> int:
    """Warm cache: load every weight kernel the run calls before the prompt runs, then drop
    LLVM's code pages from the process (runtime.resident; returns the KiB dropped). The decode
    step's kernels ("mv:" tasks, every matrix type) load in a thread, the prompt's batch kernels
    ("mm:") here, once n_prompt() has the prompt's length (its first call builds the tokenizer). Loaded before any
    weight page is touched, LLVM's ~60 MB leave before the weights' pages come in, so the peak
    resident set holds one or the other, not both; the backend's small kernels (norms, the gated
    activation, decode attention: _load_small_kernels) load here too, before the drop."""
    import threading

    from ..kernels import warm
    from ..runtime.resident import drop_clean_library_pages

    def load(tasks):
        try:
            warm(tasks)
        except Exception:  # noqa: BLE001 - the forward pass compiles it again and says what is wrong
            pass

    mv = [t for t in dict.fromkeys(sum(_kernel_tasks(m.llama, 1), [])) if t.startswith("mv:")]
    th = None
    if decode:
        th = threading.Thread(target=load, args=(mv,), name="ggq-load-kernels", daemon=True)
        th.start()
    prompt, _ = _kernel_tasks(m.llama, n_prompt())
    load([t for t in prompt if t not in mv] if decode else prompt)
    _load_small_kernels(m.llama)
    if th is not None:
        th.join()
    if any(d != "cpu" for d in getattr(m.llama, "devices", ("cpu",))):
        return 0  # layers on another device (torch): not only these kernels run
    return drop_clean_library_pages("libllvmlite")


def _load_small_kernels(llama) -> None:
    """The CPU backend's small kernels (CpuOps.warm: norms, the gated activation, the decode
    step's attention), loaded here with the weight kernels rather than in the prompt and the
    first decode step, so that the ~11 MB of LLVM's pages their loading touches leave with the
    others (runtime.resident). A backend without them, or any failure: nothing done, the
    forward pass loads them as before."""
    layers = getattr(llama, "layers", None) or []
    ops = getattr(layers[0], "ops", None) if layers else None
    if ops is None or not hasattr(ops, "warm") or any(getattr(L, "ops", None) is not ops for L in layers):
        return
    try:
        ops.warm(llama.GATED_ACTIVATION)
    except Exception:  # noqa: BLE001 - the forward pass loads (or compiles) them and says what is wrong
        pass


def _precompile(m, n_prompt):
    """For a cold Numba cache (the caller has checked, _warm_cache), a helper process compiling
    the weight kernels of this run (wait() on it before the first decode step; n_prompt() gives
    the prompt's length), or None: one core only, or GGQ_PRECOMPILE=0. The helper takes the
    prompt's kernels in the reverse order of their first use while this process compiles them
    from the front (they meet in the middle), then the decode step's; when this process is done with the prompt, it compiles the decode
    kernels the helper has not started, from the other end (Precompiler.wait)."""
    import os

    if os.environ.get("GGQ_PRECOMPILE", "1") == "0":
        return None
    try:
        if len(os.sched_getaffinity(0)) < 2:
            return None
    except AttributeError:  # pragma: no cover - no sched_getaffinity (macOS, Windows)
        if (os.cpu_count() or 1) < 2:
            return None
    try:
        from ..jit_cache import Precompiler

        prompt, decode = _kernel_tasks(m.llama, n_prompt())
        return Precompiler(prompt[::-1] + decode[::-1])
    except Exception:  # pragma: no cover - a model class without matrices(): no helper
        return None


def _warm_cache(m) -> bool:
    """Every weight kernel this model's run calls is in Numba's disk cache."""
    try:
        from ..kernels import uncached_matvecs

        prompt, decode = _kernel_tasks(m.llama, 1)
        return not uncached_matvecs([t[3:] for t in prompt + decode])
    except Exception:  # pragma: no cover - a model class without matrices()
        return False


exact_option = click.option(
    "--exact", is_flag=True,
    help="Float activations in every matmul (by default the quantized types' matmuls, prompt and "
         "decode, quantize the activations to 8 bits per 32, as llama.cpp does; slower, closest to "
         "the float model).")

no_mmap_option = click.option(
    "--no-mmap", is_flag=True,
    help="Copy the weights into memory instead of reading them through mmap (slower load, faster decode).")


@cli.command()
@click.argument("model", required=False, type=click.Path(dir_okay=True))
@click.option("-p", "--prompt", help="Prompt text.")
@click.option("-f", "--file", "prompt_file", type=click.Path(dir_okay=False), help="Read the prompt from a file.")
@click.option("-n", "--max-tokens", default=256, show_default=True, type=int,
              help="Tokens to generate (-1: until the context is full).")
@click.option("-c", "--ctx-size", type=int, help="Context size in tokens [default: model's, at most 4096].")
@click.option("-t", "--threads", type=int, help="Threads [default: all cores].")
@click.option("--temp", "temperature", default=0.8, show_default=True, type=float, help="Temperature (0: greedy).")
@click.option("--top-k", default=40, show_default=True, type=int, help="Top-k (0: off).")
@click.option("--top-p", default=0.95, show_default=True, type=float, help="Top-p (1: off).")
@click.option("--min-p", default=0.05, show_default=True, type=float, help="Min-p (0: off).")
@click.option("--repeat-penalty", default=1.0, show_default=True, type=float, help="Repetition penalty over the last 64 tokens (1: off).")
@click.option("-s", "--seed", type=int, help="Random seed [default: random].")
@click.option("--chat", is_flag=True, help="Wrap the prompt in the model's chat template.")
@click.option("-sys", "--system", help="System message (with --chat).")
@exact_option
@no_mmap_option
@gpu_options
def run(model, prompt, prompt_file, max_tokens, ctx_size, threads, temperature, top_k, top_p, min_p,
        repeat_penalty, seed, chat, system, exact, no_mmap, n_gpu_layers, device):
    """Generate text from MODEL (.ggq or .gguf; default: SmolLM2-135M-Instruct as shipped, Q4_1).

    Text streams to stdout; load time, prompt and generation speed go to stderr at the end."""
    t_start = time.perf_counter()
    if prompt is not None and prompt_file is not None:
        raise UsageError("give either --prompt or --file, not both")
    if prompt_file is not None:
        try:
            with open(prompt_file, encoding="utf-8") as fh:
                prompt = fh.read()
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"{prompt_file}: cannot read the prompt ({getattr(e, 'strerror', None) or e})") from None
    if prompt is None:
        raise UsageError("no prompt: give -p TEXT or -f FILE")
    if system is not None and not chat:
        chat = True  # a system message only makes sense in a chat
    helpers = []

    def precompile(m):
        if not exact and max_tokens != 0:
            try:
                def n_prompt():
                    return len(m.prompt_ids(prompt, chat, system))

                warm = _warm_cache(m)
                helpers.append(None if warm else _precompile(m, n_prompt))
            except Exception:  # a bad prompt: generate() below says what is wrong
                return None
            if warm:  # load them here, once Numba is ready (a cold cache without a helper
                # process, one core or GGQ_PRECOMPILE=0, compiles on demand)
                def load_kernels():
                    try:
                        _load_weight_kernels(m, n_prompt, decode=max_tokens != 1)
                    except Exception:  # a bad prompt: generate() below says what is wrong
                        pass

                return load_kernels
        return None

    try:
        m = _load(model, ctx_size, threads, no_mmap, then=precompile, n_gpu_layers=n_gpu_layers, device=device)
        helper = helpers[0] if helpers else None
        m.llama.set_exact(exact)
        src = getattr(m.tokenizer, "chat_template_source", "file")
        if chat and src not in (None, "file"):
            _log(f"{m.path.name} has no chat template; using the {src} one")
        pieces = m.generate(prompt, max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                            min_p=min_p, repeat_penalty=repeat_penalty, seed=seed, chat=chat, system=system)
        out = sys.stdout
        first = None
        for piece in pieces:
            if first is None:
                first = time.perf_counter() - t_start
            out.write(piece)
            out.flush()
            if helper is not None:  # the next piece needs a decode step: its kernels are cached now
                helper.wait(steal=True)
                helper = None
        out.write("\n")
        out.flush()
    finally:
        for h in helpers:
            if h is not None:
                h.close()
    st = m.stats
    ttft = f"{first * 1000:.0f} ms" if first is not None else "-"
    _log(f"{m.path.name}: load {st.load_s * 1000:.0f} ms | prompt {st.prompt_tokens} tok "
         f"{st.prompt_tps:.1f} tok/s | generation {st.gen_tokens} tok {st.gen_tps:.1f} tok/s | "
         f"first text after {ttft} | stop: {st.stop or '-'} | threads {m.threads}")


def _human_size(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


def bench_model(m, n_prompt: int, n_gen: int, runs: int, seed: int = 0):
    """llama-bench's tests: pp = one batch of n_prompt random tokens on an empty cache;
    tg = n_gen single-token steps from an empty cache. Returns {test: [t/s per run]}."""
    import numpy as np

    rng = np.random.default_rng(seed)
    vocab = m.llama.vocab_size
    res = {}
    tests = []
    if n_prompt > 0:
        tests.append(("pp", n_prompt))
    if n_gen > 0:
        tests.append(("tg", n_gen))
    for kind, n in tests:
        if n > m.n_ctx:
            raise UsageError(f"{kind}{n} does not fit the context size {m.n_ctx}")
        speeds = []
        for r in range(runs + 1):  # one warm-up run
            toks = rng.integers(0, vocab, size=n)
            t0 = time.perf_counter()
            if kind == "pp":
                m.llama.forward(toks, 0)
            else:
                for i in range(n):
                    m.llama.forward(toks[i:i + 1], i)
            dt = time.perf_counter() - t0
            if r:
                speeds.append(n / dt)
        res[f"{kind}{n}"] = speeds
    return res


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-p", "--n-prompt", default=128, show_default=True, type=int, help="Prompt tokens (pp test; 0: skip).")
@click.option("-n", "--n-gen", default=64, show_default=True, type=int, help="Generated tokens (tg test; 0: skip).")
@click.option("-t", "--threads", type=int, help="Threads [default: all cores].")
@click.option("-r", "--repetitions", "runs", default=5, show_default=True, type=int, help="Runs per test (after one warm-up).")
@exact_option
@no_mmap_option
@gpu_options
def bench(model, n_prompt, n_gen, threads, runs, exact, no_mmap, n_gpu_layers, device):
    """Prompt processing (ppN) and generation (tgN) speed of MODEL, like llama-bench.

    ppN evaluates N random tokens in one batch; tgN generates N tokens one at a time, both from
    an empty context. Figures are tokens/s, mean ± standard deviation over the runs."""
    if runs < 1 or n_prompt < 0 or n_gen < 0:
        raise UsageError("repetitions must be >= 1 and token counts >= 0")
    m = _load(model, max(n_prompt, n_gen, 1), threads, no_mmap, n_gpu_layers=n_gpu_layers, device=device)
    m.llama.set_exact(exact)
    res = bench_model(m, n_prompt, n_gen, runs)
    backend = "+".join("numba" if d == "cpu" else d for d in m.llama.devices)
    preset = m.metadata.get("general.preset") or "?"
    rows = []
    for test, speeds in res.items():
        import numpy as np

        a = np.array(speeds)
        sd = a.std(ddof=1) if len(a) > 1 else 0.0
        rows.append((f"{m.name} {preset}", _human_size(m.file_size), f"{m.n_params / 1e6:.2f} M", backend,
                     str(m.threads), test, f"{a.mean():.2f} ± {sd:.2f}"))
    head = ("model", "size", "params", "backend", "threads", "test", "t/s")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    right = {1, 2, 4, 5, 6}

    def line(cells):
        return "| " + " | ".join(c.rjust(w) if i in right else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    click.echo(line(head))
    click.echo("| " + " | ".join(("-" * (w - 1) + ":") if i in right else "-" * w
                                 for i, w in enumerate(widths)) + " |")
    for r in rows:
        click.echo(line(r))
    mem = gpu_memory_line(m)
    if mem:
        n_off = sum(1 for L in m.llama.layers if not L.ops.is_cpu)
        click.echo(f"{n_off}/{len(m.llama.layers)} layers offloaded"
                   f"{', output matrix too' if not m.llama.head_ops.is_cpu else ''}; {mem}")


def nll_of_window(logits, tokens, first: int, rows: int = 64):
    """Negative log-likelihoods (float64 array) of tokens[first+1:] from logits[first:-1]
    (a few rows at a time: a float64 copy of a whole window's logits would be 200 MB)."""
    import numpy as np

    n = logits.shape[0] - 1 - first
    out = np.empty(n, dtype=np.float64)
    for s in range(0, n, rows):
        lg = logits[first + s:first + min(n, s + rows)].astype(np.float64)
        tgt = tokens[first + 1 + s:first + 1 + s + lg.shape[0]]
        m = lg.max(axis=1)
        lse = m + np.log(np.exp(lg - m[:, None]).sum(axis=1))
        out[s:s + lg.shape[0]] = lse - lg[np.arange(lg.shape[0]), tgt]
    return out


def ppl_with_error(nll_sum: float, nll2_sum: float, count: int) -> tuple[float, float]:
    """PPL and its standard error as llama-perplexity computes them: the standard error of the
    mean NLL, propagated through exp."""
    mean = nll_sum / count
    var = nll2_sum / count - mean * mean
    err = math.sqrt(var / (count - 1)) if var > 0 and count > 1 else 0.0
    ppl = math.exp(mean)
    return ppl, ppl * err


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-f", "--file", "text_file", required=True, type=click.Path(dir_okay=False), help="Text file (UTF-8).")
@click.option("-c", "--ctx-size", default=512, show_default=True, type=int, help="Window length in tokens.")
@click.option("--chunks", type=int, help="Evaluate only the first N windows.")
@click.option("--protocol", type=click.Choice(["full", "half", "both"]), default="full", show_default=True,
              help="full: score tokens 1..c-1 of each window; half: tokens c/2+1..c-1 "
                   "(llama-perplexity); both: report the two from the same pass.")
@click.option("-t", "--threads", type=int, help="Threads [default: all cores].")
@no_mmap_option
@gpu_options
def perplexity(model, text_file, ctx_size, chunks, protocol, threads, no_mmap, n_gpu_layers, device):
    """Perplexity of MODEL on a text file (.ggq or .gguf).

    Protocol (llama-perplexity's): the whole text is tokenized at once with no special tokens,
    after a BOS only if the model adds one; it is cut into non-overlapping windows of c tokens
    starting at token 0 (the remainder is dropped) and each window is evaluated alone from an
    empty cache, its first token replaced by BOS when the model adds one (Gemma; SmolLM2 adds
    none). `full` scores the predictions of tokens 1..c-1 of every window; `half` scores only
    tokens c/2+1..c-1 (c=512: 257..511), as llama-perplexity does. Prints the running PPL after
    each window and the final PPL ± its standard error (computed like llama-perplexity)."""
    if ctx_size < 4:
        raise UsageError(f"window size must be at least 4 tokens (got {ctx_size})")
    if chunks is not None and chunks < 1:
        raise UsageError(f"--chunks must be >= 1 (got {chunks})")
    try:
        with open(text_file, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{text_file}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    m = _load(model, ctx_size, threads, no_mmap, n_gpu_layers=n_gpu_layers, device=device)
    t0 = time.perf_counter()
    bos = m.tokenizer.bos_id if m.tokenizer.add_bos else None
    import numpy as np

    tokens = np.array(m.tokenizer.encode(text), dtype=np.int64)
    n_win = len(tokens) // ctx_size
    if n_win == 0:
        raise UsageError(f"{text_file}: {len(tokens)} tokens, fewer than one window of {ctx_size}")
    if chunks is not None:
        n_win = min(n_win, chunks)
    firsts = {"full": 0, "half": ctx_size // 2}
    names = ["full", "half"] if protocol == "both" else [protocol]
    scoring = ", ".join(f"{p}: tokens {firsts[p] + 1}..{ctx_size - 1}" for p in names)
    _log(f"{m.path.name}: {len(tokens)} tokens, {n_win} windows of {ctx_size}, "
         f"{'BOS first in each window' if bos is not None else 'no BOS'}, "
         f"scoring {scoring} of each window, threads {m.threads}")
    acc = {p: [0.0, 0.0, 0] for p in names}
    for w in range(n_win):
        win = tokens[w * ctx_size:(w + 1) * ctx_size].copy()
        if bos is not None:
            win[0] = bos
        lg = m.logits(win)
        for p in names:
            nll = nll_of_window(lg, win, firsts[p])
            a = acc[p]
            a[0] += float(nll.sum())
            a[1] += float((nll * nll).sum())
            a[2] += nll.size
        a = acc[names[0]]
        click.echo(f"[{w + 1}]{math.exp(a[0] / a[2]):.4f}", nl=(w + 1 == n_win))
        if w + 1 < n_win:
            click.echo(",", nl=False)
        sys.stdout.flush()
    for p in names:
        ppl, err = ppl_with_error(*acc[p])
        label = f" ({p})" if protocol == "both" else ""
        click.echo(f"Final estimate{label}: PPL = {ppl:.4f} +/- {err:.5f}  ({n_win} windows, {acc[p][2]} scored tokens)")
    dt = time.perf_counter() - t0
    _log(f"{dt:.1f} s, {n_win * ctx_size / dt:.0f} tok/s")
