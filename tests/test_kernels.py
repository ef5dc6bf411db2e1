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
    if name in INT8_ACTIVATIONS:  # block types quantize activations (matvec, GEMM) unless exact
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


LEGACY = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")


@pytest.mark.parametrize("name", LEGACY)
def test_legacy_vnni_and_generic_kernels_agree(name, rng):
    """The AVX512-VNNI matvec and the generic one build the same int32 lanes, so they give
    bit-identical results (random bytes include Q8_0's -128); both match the reference."""
    from ggq.kernels import common, legacy
    gen = getattr(legacy, "matvec_" + name.lower())
    vnni = getattr(legacy, "matvec_" + name.lower() + "_vnni")
    assert legacy.MATVEC[name] is (vnni if common.HAS_VNNI else gen)
    for rows, cols in [(1, 32), (3, 64), (13, 96), (1001, 576)]:
        w = random_weights(name, rows, cols, rng)
        x = rng.standard_normal((1, cols), dtype=np.float32)
        x[0, :32] *= 1e3
        x[0, 32:64] = 0.0  # zero activation block (d = 0)
        y = np.empty(rows, np.float32)
        gen(w, x[0], y)
        check(name, w, cols, x, y[None])
        if common._host_has_vnni():
            y2 = np.full(rows, np.nan, np.float32)
            vnni(w, x[0], y2)
            np.testing.assert_array_equal(y2, y)


def test_no_vnni_env_forces_generic_kernels(rng, tmp_path):
    import subprocess
    import os
    name, rows, cols = "Q5_1", 37, 96
    w = random_weights(name, rows, cols, rng)
    x = rng.standard_normal((1, cols), dtype=np.float32)
    np.save(tmp_path / "w.npy", w)
    np.save(tmp_path / "x.npy", x)
    code = ("import sys, numpy as np\n"
            "from ggq.kernels import common, kquants, legacy\n"
            "from ggq.runtime.linear import linear\n"
            "assert not common.HAS_VNNI and legacy.MATVEC is legacy.MATVEC_GENERIC\n"
            "assert kquants.MATVEC is kquants.MATVEC_GENERIC\n"
            "d = sys.argv[1]\n"
            f"np.save(d + '/y.npy', linear({name!r}, np.load(d + '/w.npy'), {cols}, np.load(d + '/x.npy')))\n"
            f"np.save(d + '/yk.npy', linear('Q6_K', np.load(d + '/wk.npy'), 512, np.load(d + '/xk.npy')))\n")
    wk = random_weights("Q6_K", 9, 512, rng)
    xk = rng.standard_normal((1, 512), dtype=np.float32)
    np.save(tmp_path / "wk.npy", wk)
    np.save(tmp_path / "xk.npy", xk)
    env = dict(os.environ, GGQ_NO_VNNI="1")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, check=True,
                   cwd=str(Path(__file__).resolve().parents[1]))
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), linear(name, w, cols, x))
    np.testing.assert_array_equal(np.load(tmp_path / "yk.npy"), linear("Q6_K", wk, 512, xk))


KQUANTS = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
DMIN_AT = {"Q2_K": 82, "Q4_K": 2, "Q5_K": 2}  # offset of the f16 dmin field (types with mins)


def kquant_int8_reference(name, w, cols, x):
    """float64 reference of the k-quant int8 matvec semantics: activations rounded to int8 per
    32 (d = absmax / 127, q = round(x / d) in float32, as quantize_act), sub-block scales and
    codes exactly; the min terms use the exact activations (dmin * min * sum x)."""
    nb = cols // 32
    xb = x.reshape(nb, 32)
    d = np.abs(xb).max(axis=1) / np.float32(127.0)
    inv = np.where(d > 0, np.float32(1.0) / np.where(d > 0, d, 1), 0).astype(np.float32)
    xdeq = (np.round(xb * inv[:, None]) * d[:, None]).astype(np.float64).reshape(cols)
    w_a = np.array(w)
    if name in DMIN_AT:
        o = DMIN_AT[name]
        w_a.reshape(w.shape[0], -1, INFO[name][0])[:, :, o:o + 2] = 0
    W_a = ref_dequant(name, w_a, cols)
    W_m = W_a - ref_dequant(name, w, cols)  # dmin * min per element (0 without mins)
    ref = W_a @ xdeq - W_m @ x.astype(np.float64)
    mag = np.abs(W_a) @ np.abs(xdeq) + np.abs(W_m) @ np.abs(x.astype(np.float64))
    return ref, mag


@pytest.mark.parametrize("name", KQUANTS)
def test_kquant_vnni_and_generic_kernels_agree(name, rng):
    """k-quant matvec: the AVX512-VNNI and the generic kernels give bit-identical results, and
    both keep the integer semantics of the int8 path (checked against a float64 reference)."""
    from ggq.kernels import common, kquants
    gen = getattr(kquants, "matvec_" + name.lower())
    vnni = getattr(kquants, "matvec_" + name.lower() + "_vnni")
    assert kquants.MATVEC[name] is (vnni if common.HAS_VNNI else gen)
    for rows, cols in [(1, 256), (3, 512), (13, 768), (1001, 1024)]:
        w = random_weights(name, rows, cols, rng)
        x = rng.standard_normal((1, cols), dtype=np.float32)
        x[0, :32] *= 1e3
        x[0, 32:64] = 0.0  # zero activation block (d = 0)
        y = np.full(rows, np.nan, np.float32)
        gen(w, x[0], y)
        check(name, w, cols, x, y[None])
        ref, mag = kquant_int8_reference(name, w, cols, x[0])
        assert (np.abs(y - ref) <= 1e-5 * mag + 1e-30).all(), f"{name}: {(np.abs(y - ref) / mag).max():.3g}"
        if common._host_has_vnni():
            y2 = np.full(rows, np.nan, np.float32)
            vnni(w, x[0], y2)
            np.testing.assert_array_equal(y2, y)


def test_quantize_act8_matches_quantize_act(rng):
    from numba import njit
    from ggq.kernels.common import quantize_act, quantize_act8

    @njit
    def both(x, xq, xd, xs, xq8, xd8, xp, xs8):
        quantize_act(x, xq, xd, xs)
        quantize_act8(x, xq8, xd8, xp, xs8)

    x = rng.standard_normal(96 * 4, dtype=np.float32)
    x[:32] = 0.0
    x[32:64] *= 1e-30
    nb = x.size // 32
    xq, xd, xs = np.empty(x.size, np.int16), np.empty(nb, np.float32), np.empty(2 * nb, np.float32)
    xq8, xd8, xp, xs8 = (np.empty(x.size, np.int8), np.empty(nb, np.float32), np.empty(8 * nb, np.int32),
                         np.empty(nb, np.float32))
    both(x, xq, xd, xs, xq8, xd8, xp, xs8)
    np.testing.assert_array_equal(xq8.astype(np.int16), xq)
    np.testing.assert_array_equal(xd8, xd)
    np.testing.assert_array_equal(xp, xq.reshape(-1, 4).sum(axis=1))
    np.testing.assert_array_equal(xs8, xs[0::2] + xs[1::2])
    ref_d = np.abs(x.reshape(nb, 32)).max(axis=1) / np.float32(127.0)
    np.testing.assert_array_equal(xd8, ref_d)


def test_f16_ir_software_path_exact_all_values():
    from numba import njit, types
    from numba.extending import intrinsic
    from llvmlite import ir
    from ggq.kernels.common import _f16_ir

    @intrinsic
    def soft(typingctx, h):
        def codegen(context, builder, sig, args):
            return _f16_ir(builder, builder.trunc(args[0], ir.IntType(16)), soft=True)
        return types.float32(types.uint16), codegen

    @njit
    def conv(a, out):
        for i in range(a.size):
            out[i] = soft(a[i])

    h = np.arange(65536, dtype=np.uint16)
    ref = h.view(np.float16).astype(np.float32)
    got = np.empty(65536, np.float32)
    conv(h, got)
    same = (got.view(np.uint32) == ref.view(np.uint32)) | (np.isnan(got) & np.isnan(ref))
    assert same.all()


def test_q8_0_embedding_rows_equal_the_kernel_and_gguf(rng):
    """embedding_rows decodes Q8_0 rows with NumPy: the same bits as the DEQUANT kernel, for
    every scale (subnormal, inf, NaN halves included), and gguf's values."""
    rows, cols = 40, 96
    w = np.array(random_weights("Q8_0", rows, cols, rng))
    d = w.reshape(rows, cols // 32, 34)[:, :, :2]
    for i, h in enumerate((0x0001, 0x03FF, 0x7C00, 0xFC00, 0x7E00, 0x0000, 0x8000)):
        d[i, 0] = np.array([h], np.uint16).view(np.uint8)
    w.flags.writeable = False
    ids = np.array([0, 1, 2, 3, 4, 5, 6, 7, 39, 3, 0])
    got = embedding_rows("Q8_0", w, cols, ids)
    kernel = dequantize_rows("Q8_0", w, cols, 0, rows)[ids]
    assert got.dtype == np.float32 and got.shape == (ids.size, cols)
    assert np.array_equal(np.isnan(got), np.isnan(kernel))
    assert np.array_equal(np.where(np.isnan(got), 0, got).view(np.uint32),
                          np.where(np.isnan(kernel), 0, kernel).view(np.uint32))
    np.testing.assert_array_equal(got, ref_dequant("Q8_0", w, cols)[ids].astype(np.float32))
    with pytest.raises(GGQError):
        embedding_rows("Q8_0", w[:, :-1], cols, [0])
    with pytest.raises(GGQError):
        embedding_rows("Q8_0", w, cols, [rows])
