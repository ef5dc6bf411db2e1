"""Kernels vs an independent reference: gguf.quants.dequantize (float64 products)."""
from __future__ import annotations

import sys
from pathlib import Path

import gguf
import numba
import numpy as np
import pytest

from ggq.errors import GGQError
from ggq.kernels import INT8_ACTIVATIONS
from ggq.runtime.linear import dequantize_rows, embedding_rows, linear

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from bench_kernels import INFO, random_weights  # noqa: E402

ALL = list(INFO)
T = gguf.GGMLQuantizationType
GGUF_QUANTIZE = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")


def cols_for(name, nblocks):
    return INFO[name][1] * nblocks if INFO[name][1] > 1 else 32 * nblocks


def ref_dequant(name, w, cols):
    return gguf.quants.dequantize(np.asarray(w), T[name]).astype(np.float64).reshape(w.shape[0], cols)


def int8_bound(W, x):
    """Worst-case |error| per output from rounding x to int8 per 32 (|dx| <= amax/254),
    plus float32 accumulation slack."""
    n, cols = x.shape
    amax = np.abs(x.reshape(n, cols // 32, 32)).max(axis=2)
    per_elem = np.repeat(amax / 254.0, 32, axis=1)            # (n, cols)
    mag = np.abs(x).astype(np.float64) @ np.abs(W).T
    return per_elem @ np.abs(W).T * 1.001 + 1e-5 * mag + 1e-30


def check(name, w, cols, x, y):
    W = ref_dequant(name, w, cols)
    ref = x.astype(np.float64) @ W.T
    mag = np.abs(x).astype(np.float64) @ np.abs(W).T + 1e-30
    err = np.abs(y - ref)
    if x.shape[0] == 1 and name in INT8_ACTIVATIONS:
        bound = int8_bound(W, x)
        assert (err <= bound).all(), f"{name}: int8 path error {(err / bound).max():.3g} x bound"
        # and the error is not absurdly below the bound either way: it must be real int8 rounding
        assert err.max() / mag.max() < 2e-2
    else:
        assert (err <= 1e-5 * mag).all(), f"{name}: float path rel error {(err / mag).max():.3g}"


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(1234)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("rows,nblocks", [(13, 1), (6, 3), (1, 2)])
def test_linear_random_blocks(name, rows, nblocks, rng):
    cols = cols_for(name, nblocks)
    w = random_weights(name, rows, cols, rng)
    for n in (1, 5):
        x = rng.standard_normal((n, cols), dtype=np.float32)
        y = linear(name, w, cols, x)
        assert y.shape == (n, rows) and y.dtype == np.float32
        check(name, w, cols, x, y)


@pytest.mark.parametrize("name", GGUF_QUANTIZE)
def test_linear_gguf_quantized(name, rng):
    rows, cols = 37, 96
    W = rng.standard_normal((rows, cols), dtype=np.float32)
    w = np.ascontiguousarray(gguf.quants.quantize(W, T[name]))
    for n in (1, 5):
        x = rng.standard_normal((n, cols), dtype=np.float32)
        check(name, w, cols, x, linear(name, w, cols, x))


@pytest.mark.parametrize("name", ["Q8_0", "Q5_0", "Q4_K", "Q6_K", "F16"])
def test_many_tiles_and_exact_matvec(name, rng):
    rows = 1000  # several tiles in the batch path; not a multiple of the row group
    cols = 768 if INFO[name][1] == 256 else 576
    w = random_weights(name, rows, cols, rng)
    x = rng.standard_normal((3, cols), dtype=np.float32)
    check(name, w, cols, x, linear(name, w, cols, x))
    # exact float matvec (dequantized tiles + BLAS) for callers that need it
    y = linear(name, w, cols, x[:1], exact=True)
    W = ref_dequant(name, w, cols)
    ref = x[:1].astype(np.float64) @ W.T
    mag = np.abs(x[:1]).astype(np.float64) @ np.abs(W).T
    assert (np.abs(y - ref) <= 1e-5 * mag).all()


def test_int8_path_keeps_argmax_on_clear_winners(rng):
    """Greedy decoding: where the exact top-1 beats top-2 by more than the worst-case bound the
    int8 matvec must pick the same token; the actual error is a small fraction of the logit
    spread (the worst-case bound is ~10x looser: errors of 576 roundings mostly cancel)."""
    rows, cols = 2000, 576
    W = (rng.standard_normal((rows, cols), dtype=np.float32) * 0.05).astype(np.float32)
    w = np.ascontiguousarray(gguf.quants.quantize(W, T.Q8_0))
    Wd = ref_dequant("Q8_0", w, cols)
    agree = 0
    for _ in range(20):
        x = rng.standard_normal((1, cols), dtype=np.float32)
        exact = (x.astype(np.float64) @ Wd.T)[0]
        fast = linear("Q8_0", w, cols, x)[0]
        bound = int8_bound(Wd, x)[0]
        e = fast - exact
        assert np.abs(e).max() < 0.03 * exact.std() and np.sqrt((e * e).mean()) < 0.01 * exact.std()
        top2 = np.sort(exact)[-2:]
        if top2[1] - top2[0] > 2 * bound.max():
            assert np.argmax(fast) == np.argmax(exact)
        agree += np.argmax(fast) == np.argmax(exact)
    assert agree >= 18


def test_f16_decode_exact_all_values():
    from numba import njit
    from ggq.kernels.common import _f16_sw, f16

    @njit
    def conv(a, out, out2):
        for i in range(out.size):
            out[i] = f16(a[2 * i], a[2 * i + 1])
            out2[i] = _f16_sw(a[2 * i], a[2 * i + 1])

    h = np.arange(65536, dtype=np.uint16)
    ref = h.view(np.float16).astype(np.float32)
    got = np.empty(65536, np.float32)
    got2 = np.empty(65536, np.float32)
    conv(h.view(np.uint8), got, got2)
    for g in (got, got2):
        same = (g.view(np.uint32) == ref.view(np.uint32)) | (np.isnan(g) & np.isnan(ref))
        assert same.all()


def test_readonly_noncontiguous_inputs_and_out(rng):
    name, rows, cols = "Q4_K", 9, 512
    w = random_weights(name, rows, cols, rng)
    w_ro = np.frombuffer(w.tobytes(), dtype=np.uint8).reshape(w.shape)  # read-only like mmap
    assert not w_ro.flags.writeable
    big = rng.standard_normal((4, 2 * cols), dtype=np.float32)
    x_nc = big[:, ::2]                                   # strided
    x_f64 = np.asfortranarray(x_nc.astype(np.float64))   # wrong dtype and order
    ref = linear(name, w, cols, np.ascontiguousarray(x_nc))
    for x in (x_nc, x_f64):
        np.testing.assert_allclose(linear(name, w_ro, cols, x), ref, rtol=1e-6, atol=1e-6)
    out = np.full((4, rows), np.nan, np.float32)
    assert linear(name, w_ro, cols, x_nc, out=out) is out
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
    out1 = np.empty((1, rows), np.float32)
    x1 = x_nc[1:2]
    assert linear(name, w_ro, cols, x1, out=out1) is out1
    np.testing.assert_array_equal(out1, linear(name, w, cols, np.ascontiguousarray(x1)))
    # 1-D activation is one row
    assert linear(name, w, cols, np.ascontiguousarray(x1[0])).shape == (1, rows)


@pytest.mark.parametrize("name", ALL)
def test_dequantize_rows_and_embeddings(name, rng):
    rows = 11
    cols = cols_for(name, 2)
    w = random_weights(name, rows, cols, rng)
    W = ref_dequant(name, w, cols)
    np.testing.assert_allclose(dequantize_rows(name, w, cols, 3, 10), W[3:10], rtol=1e-6, atol=1e-30)
    assert dequantize_rows(name, w, cols, 4, 4).shape == (0, cols)
    ids = [5, 0, 10, 5]
    np.testing.assert_allclose(embedding_rows(name, w, cols, ids), W[ids], rtol=1e-6, atol=1e-30)


def test_thread_count_does_not_change_results(rng):
    name, rows, cols = "Q5_0", 300, 576
    w = random_weights(name, rows, cols, rng)
    x = rng.standard_normal((1, cols), dtype=np.float32)
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        a = linear(name, w, cols, x)
        numba.set_num_threads(old)
        b = linear(name, w, cols, x)
    finally:
        numba.set_num_threads(old)
    np.testing.assert_array_equal(a, b)


def test_bad_inputs(rng):
    w = random_weights("Q8_0", 4, 64, rng)
    x = rng.standard_normal((1, 64), dtype=np.float32)
    with pytest.raises(GGQError):
        linear("Q8_0", w, 96, rng.standard_normal((1, 96), dtype=np.float32))  # row bytes mismatch
    with pytest.raises(GGQError):
        linear("Q8_0", w, 64, rng.standard_normal((1, 32), dtype=np.float32))  # x cols
    with pytest.raises(GGQError):
        linear("Q8_0", w, 64, x, out=np.empty((1, 3), np.float32))
    with pytest.raises(GGQError):
        linear("NOPE", w, 64, x)
    with pytest.raises(GGQError):
        linear("Q8_0", w.astype(np.int16), 64, x)
    with pytest.raises(GGQError):
        embedding_rows("Q8_0", w, 64, [4])
    with pytest.raises(GGQError):
        dequantize_rows("Q8_0", w, 64, 3, 5)
