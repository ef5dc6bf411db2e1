"""The decode fast path (ggq.models.base): Matrix calls its matvec kernel directly for one row,
Stacked multiplies matrices that lie back to back in memory in one kernel call, add_rmsnorm
fuses the residual add with the next norm. All of it must give the very same bits as the plain
path (linear() per matrix, numpy add, rmsnorm), and exact mode must stay float math."""
from __future__ import annotations

import numpy as np
import pytest

import ggq
from ggq.models.base import NO_NORM, Matrix, Stacked, add_rmsnorm, rmsnorm
from ggq.runtime.linear import linear
from tiny_gemma3 import make_tiny_gemma3
from tiny_model import make_tiny_hf_dir


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    from ggq.convert import convert_model

    base = tmp_path_factory.mktemp("decode_fast")
    out = {}
    hf = make_tiny_hf_dir(base / "hf", hidden=256, intermediate=512, heads=4, kv_heads=2, tied=False, seed=3)
    for preset in ("q8_0", "q4_k_m", "f32"):
        out[preset] = base / f"llama.{preset}.ggq"
        convert_model(hf, out[preset], preset=preset, progress=False)
    out["gemma3"] = make_tiny_gemma3(base / "gemma3.ggq", qtype="Q8_0")
    return out


def _plain_forward_outputs(model, tokens):
    """Logits of a prompt then single-token steps, with every fast path switched off: each
    Matrix through linear() (Stacked falls back to its members)."""
    def slow(self, x):
        return linear(self.qtype, self.raw, self.cols, x, exact=self.exact)

    orig = Matrix.__call__, Stacked.__call__
    Matrix.__call__ = slow
    Stacked.__call__ = lambda self, x: tuple(m(x) for m in self.mats)
    try:
        return _outputs(model, tokens)
    finally:
        Matrix.__call__, Stacked.__call__ = orig


def _outputs(model, tokens):
    lm = model.llama
    outs = [lm.forward(tokens[:3], 0, all_logits=True)]
    for i in range(3, len(tokens)):
        outs.append(lm.forward(tokens[i:i + 1], i))
    return outs


@pytest.mark.parametrize("which", ["q8_0", "q4_k_m", "f32", "gemma3"])
@pytest.mark.parametrize("use_mmap", [True, False])
def test_fast_decode_gives_the_same_bits(tiny_files, which, use_mmap):
    tokens = np.random.default_rng(0).integers(3, 250, size=10)
    with ggq.load(tiny_files[which], n_ctx=32, use_mmap=use_mmap) as a, \
            ggq.load(tiny_files[which], n_ctx=32, use_mmap=use_mmap) as b:
        fast = _outputs(a, tokens)
        plain = _plain_forward_outputs(b, tokens)
    for f, p in zip(fast, plain):
        assert np.array_equal(f, p)


def test_stacked_runs_follow_memory_and_type(tiny_files):
    with ggq.load(tiny_files["q8_0"], n_ctx=16) as m:
        L = m.llama.layers[0]
        x = np.random.default_rng(1).standard_normal((1, L.wq.cols)).astype(np.float32)
        q, k, v = L.qkv(x)
        runs = L.qkv._runs
        # the writer stores attn_q, attn_k, attn_v back to back with one type: one kernel call
        assert len(runs) == 1 and runs[0][1].shape[0] == L.wq.rows + L.wk.rows + L.wv.rows
        assert not runs[0][1].flags.writeable and not runs[0][1].flags.owndata  # a view, no copy
        for mat, y in zip((L.wq, L.wk, L.wv), (q, k, v)):
            assert np.array_equal(y, linear(mat.qtype, mat.raw, mat.cols, x))
        # not adjacent (wo lies between v and gate): separate calls, same numbers
        s = Stacked(L.wq, L.gate)
        yq, yg = s(x)
        assert len(s._runs) == 2
        assert np.array_equal(yq, q) and np.array_equal(yg, linear(L.gate.qtype, L.gate.raw, L.gate.cols, x))


def test_stacked_never_mixes_types(tiny_files):
    with ggq.load(tiny_files["q4_k_m"], n_ctx=16) as m:
        for L in m.llama.layers:
            x = np.random.default_rng(2).standard_normal((1, L.wq.cols)).astype(np.float32)
            outs = L.qkv(x)
            for kernel, w, spans in L.qkv._runs:
                names = {L.qkv.mats[i].qtype.name for i, _, _ in spans}
                assert len(names) == 1
            for mat, y in zip((L.wq, L.wk, L.wv), outs):
                assert np.array_equal(y, linear(mat.qtype, mat.raw, mat.cols, x))


@pytest.mark.parametrize("which", ["q8_0", "q4_k_m"])
@pytest.mark.parametrize("n", [3, 9])
def test_stacked_prompt_batches_give_the_same_bits(tiny_files, which, n):
    """Prompt rows: one quantization of x, one GEMM per run of stacked members (or the matvec
    per row for short batches): each member's product equals its own linear() call."""
    with ggq.load(tiny_files[which], n_ctx=16) as m:
        for L in m.llama.layers:
            x = np.random.default_rng(4).standard_normal((n, L.wq.cols)).astype(np.float32)
            for st, mats in ((L.qkv, (L.wq, L.wk, L.wv)), (L.gate_up, (L.gate, L.up))):
                for mat, y in zip(mats, st(x)):
                    assert y.shape == (n, mat.rows)
                    assert np.array_equal(y, linear(mat.qtype, mat.raw, mat.cols, x))


def test_exact_mode_stays_float_math(tiny_files):
    with ggq.load(tiny_files["q8_0"], n_ctx=16) as m:
        m.llama.set_exact(True)
        L = m.llama.layers[0]
        x = np.random.default_rng(3).standard_normal((1, L.wq.cols)).astype(np.float32)
        for mat, y in zip((L.wq, L.wk, L.wv), L.qkv(x)):
            assert np.array_equal(y, linear(mat.qtype, mat.raw, mat.cols, x, exact=True))
        y = L.wo(np.ascontiguousarray(x[:, :L.wo.cols]))
        assert np.array_equal(y, linear(L.wo.qtype, L.wo.raw, L.wo.cols, x[:, :L.wo.cols], exact=True))


def test_matrix_falls_back_for_other_inputs(tiny_files):
    with ggq.load(tiny_files["q8_0"], n_ctx=16) as m:
        W = m.llama.layers[0].wq
        rng = np.random.default_rng(4)
        x64 = rng.standard_normal((1, W.cols))  # float64: linear() converts
        assert np.array_equal(W(x64), linear(W.qtype, W.raw, W.cols, x64))
        xs = rng.standard_normal((3, W.cols)).astype(np.float32)  # a batch
        assert np.array_equal(W(xs), linear(W.qtype, W.raw, W.cols, xs))
        ro = rng.standard_normal((1, W.cols)).astype(np.float32)
        ro.flags.writeable = False
        assert np.array_equal(W(ro), linear(W.qtype, W.raw, W.cols, ro))


def test_add_rmsnorm_is_add_then_rmsnorm():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 96)).astype(np.float32)
    y = rng.standard_normal((3, 96)).astype(np.float32)
    w = rng.standard_normal(96).astype(np.float32)
    wp = rng.standard_normal(96).astype(np.float32)
    x1 = x.copy()
    h = add_rmsnorm(x1, y, w, 1e-5, NO_NORM)
    assert np.array_equal(x1, x + y) and np.array_equal(h, rmsnorm(x + y, w, 1e-5))
    x2 = x.copy()
    h = add_rmsnorm(x2, y, w, 1e-6, wp)  # Gemma: x += rmsnorm(y, wp)
    want = x + rmsnorm(y, wp, 1e-6)
    assert np.array_equal(x2, want) and np.array_equal(h, rmsnorm(want, w, 1e-6))
