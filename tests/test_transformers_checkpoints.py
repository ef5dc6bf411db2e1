"""Checkpoints written by transformers itself (tools/make_transformers_fixtures.py, transformers
5's save_pretrained: its config.json layout, its tensor names) and the logits transformers
computed for them: `ggq convert` + the runtime must reproduce them. The configs carry values
that differ from the defaults (rope bases, eps, query scale, sliding window), so a field read
wrongly or defaulted shows up here."""
import json
from pathlib import Path

import numpy as np
import pytest

import ggq
from ggq.convert import convert_model

FIX = Path(__file__).parent / "fixtures" / "transformers"


@pytest.mark.parametrize("name", ["llama", "gemma3"])
def test_logits_match_transformers(name, tmp_path):
    d = FIX / name
    out = tmp_path / f"{name}.ggq"
    rep = convert_model(d, out, preset="f32", progress=False)
    assert rep.config.defaulted() == []  # transformers 5 writes every field ggq reads
    tokens = json.loads((d / "tokens.json").read_text())["tokens"]
    want = np.load(d / "logits.npy")
    with ggq.load(out) as m:
        m.llama.set_exact(True)
        got = m.logits(tokens)                                  # prompt path (one batch)
        step = [m.llama.forward(tokens[:1], 0)[-1]]             # decode path, token by token
        for i, t in enumerate(tokens[1:], 1):
            step.append(m.llama.forward([t], i)[-1])
    scale = np.abs(want).max()
    assert np.abs(got - want).max() < 1e-4 * scale, np.abs(got - want).max()
    assert np.abs(np.stack(step) - want).max() < 1e-4 * scale
    assert (got.argmax(-1) == want.argmax(-1)).all()


def test_reading_the_rope_base_matters(tmp_path):
    """The transformers-5 bug this guards against: a reader that misses rope_parameters uses the
    default base and is visibly wrong here."""
    import shutil

    d = tmp_path / "llama"
    shutil.copytree(FIX / "llama", d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["rope_parameters"]["rope_theta"] = 10000.0
    (d / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "wrong.ggq"
    convert_model(d, out, preset="f32", progress=False)
    tokens = json.loads((d / "tokens.json").read_text())["tokens"]
    with ggq.load(out) as m:
        got = m.logits(tokens)
    want = np.load(d / "logits.npy")
    assert np.abs(got - want).max() > 1e-2 * np.abs(want).max()
