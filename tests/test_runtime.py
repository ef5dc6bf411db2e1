"""The engine against the plain NumPy reference (tests/reference_forward.py) on tiny random llamas,
plus the run/bench/perplexity commands and their errors."""
from __future__ import annotations

import math

import numpy as np
import pytest

import ggq
from ggq.cli import main
from ggq.errors import ModelError, UsageError
from reference_forward import inv_frequencies, load_weights, reference_logits
from tiny_model import make_tiny_hf_dir

# name -> (tiny model kwargs, presets to convert it with)
MODELS = {
    # GQA 4/2 heads, tied embeddings, rows of 64/128: 32-element types
    "tied": (dict(), ["f32", "f16", "q8_0", "q4_0", "q4_1", "q5_1"]),
    # untied output, llama3 rope scaling, rows of 256/512 so k-quants fit
    "untied_llama3": (dict(hidden=256, intermediate=512, heads=4, kv_heads=1, tied=False, seed=1,
                           rope_theta=500000.0,
                           rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                         "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
                      ["f32", "q4_k_m", "q6_k", "q2_k"]),
    # linear rope scaling, no GQA
    "linear": (dict(heads=4, kv_heads=4, seed=2, rope_scaling={"rope_type": "linear", "factor": 2.0}),
               ["f32"]),
}
CASES = [(m, p) for m, (_, presets) in MODELS.items() for p in presets]


@pytest.fixture(scope="session")
def tiny_ggq(tmp_path_factory):
    from ggq.convert import convert_model

    made = {}

    def get(model: str, preset: str):
        key = (model, preset)
        if key not in made:
            base = tmp_path_factory.mktemp(f"{model}_{preset}")
            hf = make_tiny_hf_dir(base / "hf", **MODELS[model][0])
            out = base / f"{model}.{preset}.ggq"
            convert_model(hf, out, preset=preset, progress=False)
            made[key] = out
        return made[key]

    return get


def _tokens(n, vocab=300, seed=0):
    return np.random.default_rng(seed).integers(3, vocab, size=n)


def _tol(preset, exact=True):
    # float types: only float32 rounding separates engine from the float64 reference; block
    # types in exact mode: float math on the dequantized weights; by default their activations
    # are quantized to 8 bits per 32 (~0.5% per matmul, compounded over the layers)
    if preset in ("f32", "f16"):
        return 2e-5
    return 2e-3 if exact else 6e-2


@pytest.mark.parametrize("model,preset", CASES)
def test_prompt_logits_match_reference(tiny_ggq, model, preset):
    path = tiny_ggq(model, preset)
    w, md = load_weights(path)
    toks = _tokens(48)
    ref = reference_logits(w, md, toks)
    m = ggq.load(path, n_ctx=64)
    scale = np.abs(ref).max()
    for exact in (True, False):
        m.llama.set_exact(exact)
        tol = _tol(preset, exact) * scale
        # a long batch (BLAS attention, int8 GEMM), a short one (Numba attention kernel, GEMM)
        # and a very short one (the matvec kernel per row)
        got = m.logits(toks)
        assert got.dtype == np.float32 and got.shape == ref.shape
        assert np.abs(got - ref).max() <= tol
        short = m.logits(toks[:7])
        assert np.abs(short - ref[:7]).max() <= tol
        tiny = m.logits(toks[:3])
        assert np.abs(tiny - ref[:3]).max() <= tol


@pytest.mark.parametrize("model,preset", [("tied", "f32"), ("tied", "q8_0"), ("tied", "q4_0"),
                                          ("untied_llama3", "q4_k_m"), ("untied_llama3", "q6_k")])
def test_incremental_decode_equals_batch(tiny_ggq, model, preset):
    path = tiny_ggq(model, preset)
    m = ggq.load(path, n_ctx=64)
    toks = _tokens(40, seed=3)

    def decode(full, tol):
        last = m.llama.forward(toks[:24], 0)            # prefix as a batch: last position only
        assert last.shape == (1, full.shape[1])
        assert np.abs(last[0] - full[23]).max() <= tol * scale
        return np.array([m.llama.forward(toks[i:i + 1], i)[0] for i in range(24, 40)])

    # float activations: cache, rope offsets and attention are exactly those of the batch
    m.llama.set_exact(True)
    full = m.logits(toks)
    scale = np.abs(full).max()
    np.testing.assert_allclose(decode(full, 1e-4), full[24:], atol=1e-4 * scale)
    # by default batch and decode both quantize activations to 8 bits (as llama.cpp), alike
    # (but a float-order difference can flip the rounding of an activation code, and that
    # compounds): close to each other and to the float result
    m.llama.set_exact(False)
    full8 = m.logits(toks)
    tol = 1e-4 if preset in ("f32", "f16") else 6e-2  # ~0.5% per matmul, compounded
    steps = decode(full8, tol)
    assert np.abs(steps - full8[24:]).max() <= tol * scale
    assert np.abs(steps - full[24:]).max() <= tol * scale
    w, md = load_weights(path)
    ref = reference_logits(w, md, toks)[24:]
    assert np.abs(steps - ref).max() <= tol * scale


def test_batched_prefill_equals_single_batch(tiny_ggq):
    from ggq.runtime.generate import prefill

    m = ggq.load(tiny_ggq("tied", "f32"), n_ctx=64)
    toks = _tokens(50, seed=4)
    full = m.logits(toks)
    chunked = prefill(m.llama, toks, 0, all_logits=True, n_batch=17)
    np.testing.assert_allclose(chunked, full, atol=1e-5 * np.abs(full).max())


@pytest.mark.parametrize("preset", ["q8_0", "q4_0"])
def test_no_mmap_copies_weights_and_gives_identical_logits(tiny_ggq, preset, capsys):
    path = tiny_ggq("tied", preset)
    mapped, copied = ggq.load(path, n_ctx=64), ggq.load(path, n_ctx=64, use_mmap=False)
    toks = _tokens(20, seed=5)
    np.testing.assert_array_equal(copied.logits(toks), mapped.logits(toks))
    np.testing.assert_array_equal(copied.llama.forward(toks[:1], 0), mapped.llama.forward(toks[:1], 0))
    assert all(m.raw.base is not None and not isinstance(m.raw.base, np.memmap) for m in copied.llama.matrices())
    raw_mapped = [m.raw for m in mapped.llama.matrices()]
    assert not any(np.shares_memory(m.raw, r) for m, r in zip(copied.llama.matrices(), raw_mapped))
    rc, out, _ = _cli(capsys, "run", path, "-p", "the cat", "-n", 4, "--temp", 0, "-c", 64, "--no-mmap")
    assert rc == 0 and out == "".join(mapped.generate("the cat", 4, temperature=0)) + "\n"


def test_rope_frequencies_match_transformers_formula():
    from ggq.models.llama import rope_inv_freq

    md = {"llama.rope.scaling.type": "llama3", "llama.rope.scaling.factor": 8.0,
          "llama.rope.scaling.low_freq_factor": 1.0, "llama.rope.scaling.high_freq_factor": 4.0,
          "llama.rope.scaling.original_context_length": 8192}
    got = rope_inv_freq(128, 500000.0, {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                         "high_freq_factor": 4.0, "original_context_length": 8192})
    np.testing.assert_allclose(got, inv_frequencies(128, 500000.0, md), rtol=1e-12)
    plain = inv_frequencies(128, 500000.0, {})
    assert (got <= plain * (1 + 1e-12)).all() and got[-1] == pytest.approx(plain[-1] / 8)
    lin = rope_inv_freq(64, 10000.0, {"type": "linear", "factor": 4.0})
    np.testing.assert_allclose(lin, inv_frequencies(64, 10000.0, {}) / 4, rtol=1e-12)


def test_greedy_generation_follows_reference_argmax(tiny_ggq):
    path = tiny_ggq("tied", "f32")
    w, md = load_weights(path)
    m = ggq.load(path, n_ctx=64)
    prompt = m.tokenizer.encode("the cat sat on the mat")
    got = list(m.generate_tokens(prompt, 12, temperature=0))
    seq = list(prompt)
    for _ in range(12):
        nxt = int(np.argmax(reference_logits(w, md, seq)[-1]))
        if nxt in m.tokenizer.eog_ids:
            break
        seq.append(nxt)
    assert got == seq[len(prompt):]
    assert m.stats.prompt_tokens == len(prompt) and m.stats.gen_tokens == len(got)


def test_generate_text_and_seed(tiny_ggq):
    m = ggq.load(tiny_ggq("tied", "q8_0"), n_ctx=64)
    a = "".join(m.generate("hello there", 20, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=7))
    b = "".join(m.generate("hello there", 20, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=7))
    assert a == b
    ids = list(m.generate_tokens("hello there", 20, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=7))
    assert a == m.tokenizer.decode(ids)


def test_same_seed_same_tokens_across_thread_counts(tiny_ggq):
    import numba

    path = tiny_ggq("untied_llama3", "q4_k_m")
    kw = dict(temperature=0.9, top_k=20, top_p=0.9, min_p=0.01, seed=123)
    runs = []
    for t in sorted({1, numba.config.NUMBA_NUM_THREADS}):
        m = ggq.load(path, n_ctx=64, threads=t)
        runs.append(list(m.generate_tokens("on the hill", 24, **kw)))
    assert all(r == runs[0] for r in runs)


def test_chat_prompt_uses_template(tiny_ggq):
    m = ggq.load(tiny_ggq("tied", "f32"), n_ctx=128)
    ids = m.prompt_ids("hi", chat=True, system="be brief")
    text = m.tokenizer.decode(ids)
    assert text == "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert ids[0] == m.tokenizer.token_to_id("<|im_start|>")


def test_prompt_longer_than_context(tiny_ggq):
    m = ggq.load(tiny_ggq("tied", "f32"), n_ctx=16)
    with pytest.raises(UsageError, match="context"):
        m.generate("the " * 40, 4)
    with pytest.raises(UsageError):
        m.logits(_tokens(17))
    # max_tokens is clipped to the room left in the context
    toks = list(m.generate_tokens(list(_tokens(10)), 100, temperature=0))
    assert len(toks) <= 6


def test_gguf_input_is_imported_once(tiny_ggq, tmp_path, monkeypatch):
    from ggq.gguf_io import export_gguf

    monkeypatch.setenv("GGQ_CACHE", str(tmp_path / "cache"))
    src = tiny_ggq("tied", "q8_0")
    gg = export_gguf(src, tmp_path / "tiny.gguf")
    toks = _tokens(20)
    a = ggq.load(src, n_ctx=32).logits(toks)
    m = ggq.load(gg, n_ctx=32)
    assert m.path.parent == tmp_path / "cache" / "imported"
    np.testing.assert_array_equal(m.logits(toks), a)
    mtime = m.path.stat().st_mtime_ns
    assert ggq.load(gg, n_ctx=32).path.stat().st_mtime_ns == mtime  # cached, not imported again


# ----------------------------------------------------------------------------------------------
# commands

def _cli(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_run_command_streams_text(tiny_ggq, capsys):
    path = tiny_ggq("tied", "f32")
    rc, out, err = _cli(capsys, "run", path, "-p", "the cat", "-n", 8, "--temp", 0, "-c", 64, "-t", 1)
    assert rc == 0
    m = ggq.load(path, n_ctx=64)
    assert out == "".join(m.generate("the cat", 8, temperature=0)) + "\n"
    assert "tok/s" in err and "load" in err


def test_run_command_chat_and_file(tiny_ggq, capsys, tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("hello")
    rc, out, err = _cli(capsys, "run", tiny_ggq("tied", "f32"), "-f", f, "-n", 4, "--chat",
                        "-sys", "be kind", "--temp", 0.7, "-s", 1)
    assert rc == 0, err


@pytest.mark.parametrize("args,msg", [
    (["--temp", "-1"], "temperature"),
    (["--top-p", "0"], "top-p"),
    (["--top-p", "1.5"], "top-p"),
    (["--min-p", "2"], "min-p"),
    (["--top-k", "-3"], "top-k"),
    (["--repeat-penalty", "0"], "repeat-penalty"),
    (["-n", "-5"], "max-tokens"),
    (["-t", "999"], "threads"),
    (["-c", "0"], "context"),
])
def test_run_invalid_values_one_line_error(tiny_ggq, capsys, args, msg):
    rc, out, err = _cli(capsys, "run", tiny_ggq("tied", "f32"), "-p", "hi", *args)
    assert rc == 1
    assert err.startswith("ggq: error:") and msg in err and err.count("\n") == 1


def test_run_prompt_too_long_error(tiny_ggq, capsys):
    rc, out, err = _cli(capsys, "run", tiny_ggq("tied", "f32"), "-p", "the " * 100, "-c", 32)
    assert rc == 1 and err.startswith("ggq: error:") and "context" in err and err.count("\n") == 1


def test_not_a_model_file_error(tmp_path, capsys):
    bad = tmp_path / "junk.ggq"
    bad.write_bytes(b"hello, this is not a model" * 10)
    rc, out, err = _cli(capsys, "run", bad, "-p", "hi")
    assert rc == 1 and err.startswith("ggq: error:") and "not a .ggq" in err and err.count("\n") == 1
    rc, out, err = _cli(capsys, "run", tmp_path / "missing.ggq", "-p", "hi")
    assert rc == 1 and "no such file" in err


def test_missing_tensor_error(tiny_ggq, tmp_path, capsys):
    from ggq.format import GGQReader, GGQWriter

    src = tiny_ggq("tied", "q8_0")
    out = tmp_path / "broken.ggq"
    with GGQReader(src) as r, GGQWriter(out) as w:
        for k, v in r.metadata.items():
            w.add_metadata(k, v, r.metadata_types.get(k) if hasattr(r, "metadata_types") else None)
        names = [n for n in r.tensors if n != "blk.1.ffn_up.weight"]
        for n in names:
            w.add_tensor(n, r.tensors[n].qtype, r.tensors[n].shape)
        for n in names:
            w.write_tensor(n, r.raw(n))
    with pytest.raises(ModelError, match="blk.1.ffn_up.weight"):
        ggq.load(out)
    rc, _, err = _cli(capsys, "run", out, "-p", "hi")
    assert rc == 1 and "missing tensor blk.1.ffn_up.weight" in err and err.count("\n") == 1


def test_bench_command_table(tiny_ggq, capsys):
    rc, out, err = _cli(capsys, "bench", tiny_ggq("tied", "q4_0"), "-p", 16, "-n", 4, "-r", 2, "-t", 1)
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert lines[0].startswith("| model") and "t/s" in lines[0]
    assert any("pp16" in l for l in lines) and any("tg4" in l for l in lines)
    assert "±" in lines[-1]


def _reference_ppl(path, text, c, first):
    w, md = load_weights(path)
    m = ggq.load(path, n_ctx=c)
    toks = np.array(m.tokenizer.encode(text, add_bos=False))
    nll = []
    for s in range(0, len(toks) - c + 1, c):
        win = toks[s:s + c]
        lg = reference_logits(w, md, win)
        for i in range(first, c - 1):
            row = lg[i]
            mx = row.max()
            nll.append(mx + math.log(np.exp(row - mx).sum()) - row[win[i + 1]])
    nll = np.array(nll)
    mean = nll.mean()
    err = math.sqrt(((nll * nll).mean() - mean * mean) / (len(nll) - 1))
    return math.exp(mean), math.exp(mean) * err


@pytest.mark.parametrize("protocol", ["full", "half"])
def test_perplexity_command_matches_reference(tiny_ggq, capsys, tmp_path, protocol):
    path = tiny_ggq("tied", "f32")
    text = ("the theory of the thing is that one sees what one wants to see, and at the end "
            "of it there is only the sea. ") * 6
    f = tmp_path / "t.txt"
    f.write_text(text)
    c = 32
    rc, out, err = _cli(capsys, "perplexity", path, "-f", f, "-c", c, "--protocol", protocol)
    assert rc == 0, err
    ppl, se = _reference_ppl(path, text, c, 0 if protocol == "full" else c // 2)
    final = out.strip().splitlines()[-1]
    got_ppl = float(final.split("PPL = ")[1].split()[0])
    got_se = float(final.split("+/- ")[1].split()[0])
    assert got_ppl == pytest.approx(ppl, rel=1e-4)
    assert got_se == pytest.approx(se, rel=1e-3)
    assert out.startswith("[1]")


def test_perplexity_text_too_short(tiny_ggq, capsys, tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("tiny")
    rc, out, err = _cli(capsys, "perplexity", tiny_ggq("tied", "f32"), "-f", f, "-c", 64)
    assert rc == 1 and "fewer than one window" in err


# ---------------------------------------------------------------------------------------------
# the sampler's fast paths against the plain computation (a full float64 sort of every id)

def _reference_candidates(logits, top_k, top_p, min_p, temperature):
    x = np.asarray(logits, dtype=np.float64)
    ids = np.lexsort((np.arange(x.size), -x))  # decreasing logit, ties by id
    if 0 < top_k < x.size:
        ids = ids[:top_k]
    lg = x[ids]
    if top_p < 1.0:
        p = np.exp(lg - lg[0])
        p /= p.sum()
        keep = int(np.searchsorted(np.cumsum(p), top_p, side="left")) + 1
        ids, lg = ids[:keep], lg[:keep]
    if min_p > 0.0:
        keep = lg >= lg[0] + math.log(min_p)
        ids, lg = ids[keep], lg[keep]
    p = np.exp((lg - lg[0]) / temperature)
    return ids, p / p.sum()


@pytest.mark.parametrize("top_k", [1, 3, 40, 999, 1000, 0])
def test_sampler_candidates_equal_full_sort(top_k):
    from ggq.runtime.sampler import Sampler

    rng = np.random.default_rng(top_k)
    for case in range(6):
        lg = (rng.standard_normal(1000) * 3).astype(np.float32)
        if case % 2:  # ties, also at the k-th place: the lower ids come first
            lg = np.round(lg).astype(np.float32)
        if case == 4:
            lg[:] = lg[0]
        for top_p, min_p in ((1.0, 0.0), (0.9, 0.05)):
            s = Sampler(temperature=0.7, top_k=top_k, top_p=top_p, min_p=min_p)
            ids, p = s.candidates(lg)
            ref_ids, ref_p = _reference_candidates(lg, top_k, top_p, min_p, 0.7)
            assert ids.tolist() == ref_ids.tolist()
            assert np.array_equal(p, ref_p)


def test_sampler_nan_logits_still_give_k_candidates():
    from ggq.runtime.sampler import Sampler

    lg = np.random.default_rng(0).standard_normal(500).astype(np.float32)
    lg[7] = np.nan
    ids, p = Sampler(temperature=1.0, top_k=10, top_p=1.0, min_p=0.0).candidates(lg)
    assert ids.shape[0] == 10 and p.shape[0] == 10


def test_sampler_greedy_fast_path_and_penalty():
    from ggq.runtime.sampler import Sampler

    rng = np.random.default_rng(5)
    for _ in range(5):
        lg = np.round(rng.standard_normal(300) * 2).astype(np.float32)  # ties: the first id wins
        assert Sampler(temperature=0)(lg, [1, 2, 3]) == int(np.argmax(lg.astype(np.float64)))
        s = Sampler(temperature=0, repeat_penalty=1.3)
        hist = [int(np.argmax(lg))]
        assert s(lg, hist) == int(np.argmax(s.penalize(lg, hist)))
        assert s(lg, []) == int(np.argmax(lg))
