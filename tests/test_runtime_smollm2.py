"""The real SmolLM2-135M-Instruct against transformers (outputs recorded by
tools/transformers_reference.py into tests/fixtures/smollm2_transformers_greedy.json)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import ggq
from ggq.cli.run import nll_of_window, ppl_with_error

pytestmark = pytest.mark.smollm2

FIXTURE = Path(__file__).parent / "fixtures" / "smollm2_transformers_greedy.json"
EVAL = Path(__file__).resolve().parents[1].parent / "shared" / "eval_dev.txt"


@pytest.fixture(scope="module")
def rec():
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def f32_model(smollm2_gguf):
    """The F32 conversion of the default GGUF, made once into the cache (540 MB)."""
    from ggq.convert import convert_model
    from ggq.default_model import cache_dir

    out = cache_dir() / "test" / "SmolLM2-135M-Instruct.f32.ggq"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        convert_model(smollm2_gguf, out, preset="f32", force=True, progress=False)
    return ggq.load(out, n_ctx=1024)


def test_greedy_generation_equals_transformers(f32_model, rec):
    m = f32_model
    for case in rec["greedy"]:
        ids = m.prompt_ids(case["text"], chat=case["chat"])
        assert ids == case["prompt_ids"], case["text"]  # tokenizer + chat template as transformers
        got = list(m.generate_tokens(ids, len(case["new_ids"]), temperature=0))
        want = case["new_ids"]
        if want and want[-1] in m.tokenizer.eog_ids:  # transformers keeps the eos it stopped on
            want = want[:-1]
            assert m.stats.stop == "eos"
        assert got == want, case["text"]
        assert m.tokenizer.decode(got) + ("<|im_end|>" if m.stats.stop == "eos" else "") == case["new_text"]


def test_perplexity_first_windows_equal_transformers(f32_model, rec):
    m = f32_model
    tokens = np.array(m.tokenizer.encode(EVAL.read_text(encoding="utf-8"), add_bos=False))
    assert len(tokens) == rec["perplexity"]["n_tokens"]
    full, half = rec["perplexity"]["full"], rec["perplexity"]["half"]
    c = full["ctx"]
    sums = {"full": [0.0, 0.0, 0], "half": [0.0, 0.0, 0]}
    for w in range(full["windows"]):
        win = tokens[w * c:(w + 1) * c]
        lg = m.logits(win)
        for name, first in (("full", 0), ("half", c // 2)):
            nll = nll_of_window(lg, win, first)
            s = sums[name]
            s[0] += nll.sum()
            s[1] += (nll * nll).sum()
            s[2] += nll.size
    for name, want in (("full", full), ("half", half)):
        ppl, se = ppl_with_error(*sums[name])
        assert sums[name][2] == want["scored"]
        assert ppl == pytest.approx(want["ppl"], rel=2e-5), name
        assert se == pytest.approx(want["ppl_se"], rel=1e-3), name


def test_default_model_answers(capsys):
    """The README's first command: default model (q4_k_m), greedy."""
    from ggq.cli import main

    rc = main(["run", "-p", "The capital of France is", "-n", "8", "--temp", "0"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "Paris" in out
