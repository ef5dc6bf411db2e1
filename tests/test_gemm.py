"""The int8 prompt GEMM (ggq.kernels.gemm) against independent references: gguf's dequantizers
(float64 products, with the int8 rounding bound), the decode matvec kernels (same activation
codes, summed another way), and itself across flavours and thread counts."""
from __future__ import annotations

import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from ggq.kernels import MATVEC
from ggq.kernels import gemm as G
from ggq.kernels.common import HAS_VNNI, quantize_act8
from ggq.runtime.linear import MATVEC_ROWS_MAX, linear

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from bench_kernels import INFO as _BENCH_INFO, random_weights as _bench_random_weights  # noqa: E402

T = gguf.GGMLQuantizationType
# the IQ4 types' (bytes per block, block, fp16 offsets) where the bench tool does not list them
INFO = {"IQ4_NL": (18, 32, (0,)), "IQ4_XS": (136, 256, (0,)), **_BENCH_INFO}


def random_weights(name, rows, cols, rng):
    """Valid random blocks (the bench tool's, or the same recipe for the types it lacks):
    random bytes with small finite fp16 scales; for IQ4_XS random 6-bit sub-block scales."""
    if name in _BENCH_INFO:
        return _bench_random_weights(name, rows, cols, rng)
    nbytes, bs, f16o = INFO[name]
    nb = cols // bs
    w = rng.integers(0, 256, size=(rows, nb, nbytes), dtype=np.uint8)
    for o in f16o:
        w[:, :, o:o + 2] = (rng.random((rows, nb), dtype=np.float32) * 0.01 + 0.001
                            ).astype(np.float16).view(np.uint8).reshape(rows, nb, 2)
    return np.ascontiguousarray(w.reshape(rows, nb * nbytes))
TYPES = list(G.GEMM)


def ref_dequant(name, w, cols):
    return gguf.quants.dequantize(np.asarray(w), T[name]).astype(np.float64).reshape(w.shape[0], cols)


def activations(rng, n, cols):
    x = rng.standard_normal((n, cols), dtype=np.float32)
    x[1] = 0.0                        # an all-zero row: scale 0
    x[2, 5] = 40.0                    # an outlier dominating its block's scale
    x[3, :32] = -1e-3                 # a tiny block
    return x


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(77)


@pytest.mark.parametrize("name", TYPES)
def test_gemm_matches_dequantized_reference_and_matvec(name, rng):
    rows = 37                                   # not a multiple of the 16-row group
    cols = 2 * INFO[name][1] if INFO[name][1] > 32 else 160
    w = random_weights(name, rows, cols, rng)
    x = activations(rng, 11, cols)              # not a multiple of NT rows
    act = G.Activations(x)
    y = G.gemm(name, w, act)
    assert y.shape == (16, 48) and y.dtype == np.float32
    y = y[:11, :rows]

    # 1. float64 products with gguf's dequantized weights, within the int8 rounding bound
    W = ref_dequant(name, w, cols)
    ref = x.astype(np.float64) @ W.T
    amax = np.abs(x.reshape(11, -1, 32)).max(axis=2)
    bound = np.repeat(amax / 254.0, 32, axis=1) @ np.abs(W).T * 1.001 \
        + 1e-5 * (np.abs(x).astype(np.float64) @ np.abs(W).T) + 1e-30
    assert (np.abs(y - ref) <= bound).all(), f"{name}: {(np.abs(y - ref) / bound).max():.3g} x bound"
    assert np.array_equal(y[1], np.zeros(rows, np.float32)) or np.abs(y[1]).max() < 1e-30

    # 2. the decode matvec quantizes each row the same way: equal up to float summation order
    for i in range(11):
        mv = np.empty(rows, np.float32)
        MATVEC[name](w, x[i], mv)
        np.testing.assert_allclose(y[i], mv, rtol=0, atol=2e-6 * max(np.abs(mv).max(), 1e-30))


@pytest.mark.parametrize("name", TYPES)
def test_flavours_and_thread_splits_agree(name, rng):
    rows, cols = 70, 2 * INFO[name][1] if INFO[name][1] > 32 else 96
    w = random_weights(name, rows, cols, rng)
    act = G.Activations(activations(rng, 9, cols))
    generic = G.gemm(name, w, act, G.FLAVOUR_GENERIC, threads=1)
    assert np.array_equal(generic, G.gemm(name, w, act, G.FLAVOUR_GENERIC, threads=3))
    if HAS_VNNI:  # the integer sums are exact in both: identical floats
        assert np.array_equal(generic, G.gemm(name, w, act, G.FLAVOUR_VNNI, threads=2))


def test_quantize_rows_matches_the_decode_quantizer(rng):
    x = activations(rng, 5, 256)
    act = G.Activations(x)
    assert act.xq.shape == (G.NT, 256) and not act.xq[5:].any() and not act.xd[5:].any()
    for i in range(5):
        xq, xd = np.empty(256, np.int8), np.empty(8, np.float32)
        xp, xs = np.empty(64, np.int32), np.empty(8, np.float32)
        quantize_act8(x[i], xq, xd, xp, xs)
        assert np.array_equal(act.xq[i], xq) and np.array_equal(act.xd[i], xd)
        np.testing.assert_allclose(act.xs32[i], xs, rtol=1e-5, atol=1e-6)  # float sums: any order
        assert np.array_equal(act.xb32[i], xp.reshape(8, 8).sum(axis=1))
        assert np.array_equal(act.xb16[i], xq.astype(np.int64).reshape(16, 16).sum(axis=1))
        np.testing.assert_allclose(act.xs16[i], x[i].reshape(16, 16).sum(axis=1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["Q4_0", "Q4_K", "Q6_K", "IQ4_NL", "IQ4_XS"])
def test_linear_dispatch_short_and_long_batches(name, rng):
    """linear(): one row per matvec call up to MATVEC_ROWS_MAX rows, the GEMM above; exact=True
    is float math on the dequantized weights."""
    rows, cols = 50, 256
    w = random_weights(name, rows, cols, rng)
    x = rng.standard_normal((MATVEC_ROWS_MAX + 5, cols), dtype=np.float32)
    long = linear(name, w, cols, x)
    short = linear(name, w, cols, x[:MATVEC_ROWS_MAX])
    scale = np.abs(long).max()
    np.testing.assert_allclose(short, long[:MATVEC_ROWS_MAX], rtol=0, atol=2e-6 * scale)
    exact = linear(name, w, cols, x, exact=True)
    ref = x.astype(np.float64) @ ref_dequant(name, w, cols).T
    np.testing.assert_allclose(exact, ref, rtol=0, atol=1e-5 * scale)
    assert 1e-5 * scale < np.abs(long - ref).max() < 3e-2 * scale  # int8 rounding: real, small
