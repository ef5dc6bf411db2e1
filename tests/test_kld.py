"""ggq kld: KL divergence against a float reference, checked against a float64 NumPy forward
pass and SciPy's log-softmax; saved references; bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import log_softmax

from ggq.cli import main as cli_main
from ggq.convert import convert_model
from ggq.quality.kld import RefReader, compare_logits

TEXT = ("the cat sat on the mat and the dog ran in the park while it rained on the old barn. " * 12)


@pytest.fixture(scope="module")
def models(tiny_hf_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("kld")
    ref = d / "f32.ggq"
    q = d / "q4_0.ggq"
    convert_model(tiny_hf_dir, ref, preset="f32", progress=False)
    convert_model(tiny_hf_dir, q, preset="q4_0", progress=False)
    txt = d / "text.txt"
    txt.write_text(TEXT)
    return ref, q, txt


def _kld_json(capsys, *args) -> dict:
    capsys.readouterr()
    assert cli_main(["kld", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_float64_where_float32_fails():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 4, size=(8, 49152)).astype(np.float32)
    targets = rng.integers(0, z.shape[1], 8)
    # the same distribution (a constant shift): KLD 0 in float64, not in float32
    kld, same, nll, nll_ref = compare_logits(z + np.float32(64), z, targets)
    assert np.all(np.abs(kld) < 1e-9)
    assert same.all()
    z32 = z - z.max(axis=1, keepdims=True)
    lp32 = z32 - np.log(np.exp(z32).sum(axis=1, keepdims=True, dtype=np.float32))
    zs = z + np.float32(64)
    zs32 = zs - zs.max(axis=1, keepdims=True)
    lq32 = zs32 - np.log(np.exp(zs32).sum(axis=1, keepdims=True, dtype=np.float32))
    naive = (np.exp(lp32) * (lp32 - lq32)).sum(axis=1)
    assert np.abs(naive).max() > 1e-8  # the float32 way is visibly off, so the test means something
    # against SciPy on a perturbed copy
    zq = z + rng.normal(0, 0.3, size=z.shape).astype(np.float32)
    kld, same, nll, nll_ref = compare_logits(zq, z, targets)
    a, b = log_softmax(zq.astype(np.float64), axis=1), log_softmax(z.astype(np.float64), axis=1)
    np.testing.assert_allclose(kld, (np.exp(b) * (b - a)).sum(axis=1), rtol=1e-10)
    np.testing.assert_allclose(nll, -a[np.arange(8), targets], rtol=1e-12)
    np.testing.assert_array_equal(same, zq.argmax(1) == z.argmax(1))


def test_kld_against_numpy_forward(models, capsys):
    from reference_forward import load_weights, reference_logits

    ref, q, txt = models
    ctx = 32
    for protocol, first in (("half", ctx // 2), ("full", 0)):
        got = _kld_json(capsys, q, "--ref", ref, "-f", txt, "-c", ctx, "--exact", "--protocol", protocol)
        from ggq.api import load

        toks = np.array(load(ref).tokenizer.encode(TEXT))
        wq, md = load_weights(q)
        wr, _ = load_weights(ref)
        kl, nq, nr, same = [], [], [], []
        for w in range(len(toks) // ctx):
            win = toks[w * ctx:(w + 1) * ctx]
            a = log_softmax(reference_logits(wq, md, win)[first:-1], axis=1)
            b = log_softmax(reference_logits(wr, md, win)[first:-1], axis=1)
            kl.append((np.exp(b) * (b - a)).sum(axis=1))
            nq.append(-a[np.arange(len(a)), win[first + 1:]])
            nr.append(-b[np.arange(len(b)), win[first + 1:]])
            same.append(a.argmax(1) == b.argmax(1))
        kl = np.concatenate(kl)
        assert got["tokens"] == kl.size == (len(toks) // ctx) * (ctx - 1 - first)
        assert kl.mean() > 1e-4  # q4_0 of random weights is far from the float model
        assert got["kld_mean"] == pytest.approx(kl.mean(), rel=2e-3)
        assert got["kld_percentiles"]["90"] == pytest.approx(np.percentile(kl, 90), rel=5e-3)
        assert got["ppl"] == pytest.approx(np.exp(np.concatenate(nq).mean()), rel=1e-4)
        assert got["ppl_ref"] == pytest.approx(np.exp(np.concatenate(nr).mean()), rel=1e-4)
        assert got["same_top"] == pytest.approx(np.concatenate(same).mean(), abs=2.5 / kl.size)


def test_model_against_itself_is_zero(models, capsys):
    ref, _, txt = models
    got = _kld_json(capsys, ref, "--ref", ref, "-f", txt, "-c", 32, "--exact")
    assert got["kld_mean"] == 0.0 and got["same_top"] == 1.0 and got["ppl_ratio"] == 1.0


def test_saved_reference_reused(models, capsys, tmp_path):
    ref, q, txt = models
    saved = tmp_path / "ref.bin"
    a = _kld_json(capsys, q, "--ref", ref, "-f", txt, "-c", 32, "--save-ref", saved)
    rr = RefReader(saved)
    assert rr.header.windows == a["tokens"] // 15 and rr.header.first == 16
    b = _kld_json(capsys, q, "--ref", saved, "-f", txt, "-c", 32)
    assert a == b
    c = _kld_json(capsys, q, "--ref", saved, "-f", txt, "-c", 32, "--chunks", 2)
    assert c["tokens"] == 2 * 15
    assert not list(tmp_path.glob("*.tmp-*"))


def test_bad_input_is_one_line(models, capsys, tmp_path):
    ref, q, txt = models
    saved = tmp_path / "ref.bin"
    assert cli_main(["kld", str(q), "--ref", str(ref), "-f", str(txt), "-c", "32", "--save-ref", str(saved)]) == 0
    other = tmp_path / "other.txt"
    other.write_text(TEXT.replace("cat", "fox"))
    capsys.readouterr()
    assert cli_main(["kld", str(q), "--ref", str(saved), "-f", str(other), "-c", "32"]) == 1
    assert "tokens differ" in capsys.readouterr().err
    assert cli_main(["kld", str(q), "--ref", str(saved), "-f", str(txt), "-c", "64"]) == 1
    assert "-c 32" in capsys.readouterr().err
    cut = tmp_path / "cut.bin"
    cut.write_bytes(saved.read_bytes()[:-100])
    assert cli_main(["kld", str(q), "--ref", str(cut), "-f", str(txt), "-c", "32"]) == 1
    err = capsys.readouterr().err
    assert "cut.bin" in err and "header describes" in err and err.count("\n") == 1
    short = tmp_path / "short.txt"
    short.write_text("the cat")
    assert cli_main(["kld", str(q), "--ref", str(ref), "-f", str(short), "-c", "32"]) == 1
    assert "fewer than one window" in capsys.readouterr().err
