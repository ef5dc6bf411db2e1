"""GPTQ error feedback: a random layer with correlated inputs, output error ||XW^T - XŴ^T||
against plain rounding and against imatrix-weighted rounding; the blocks stay the type's own
(decoded by gguf-py's dequantizer where it knows the type)."""
from __future__ import annotations

import numpy as np
import pytest

from ggq.quality.gptq import gptq_quantize, output_error
from ggq.quants import get_type


@pytest.fixture(scope="module")
def layer():
    rng = np.random.default_rng(5)
    cols, rows, n = 512, 32, 1024
    scale = np.exp(rng.normal(0, 0.7, cols))
    # low-rank plus noise: strongly correlated columns, as a transformer's activations are
    x = (rng.normal(size=(n, 48)) @ rng.normal(size=(48, cols)) + 0.3 * rng.normal(size=(n, cols))) * scale
    w = rng.normal(0, 0.05, size=(rows, cols)).astype(np.float32)
    return x, w, x.T @ x / n


@pytest.mark.parametrize("name,gain", [("Q4_0", 0.5), ("Q8_0", 0.5), ("Q4_K", 0.85), ("Q6_K", 0.85)])
def test_gptq_lowers_output_error(layer, name, gain):
    import gguf

    x, w, h = layer
    qt = get_type(name)
    cols = w.shape[1]
    kw = {"search": True} if name in ("Q4_0", "Q8_0") else {}
    rtn = output_error(x, w, qt.dequantize(qt.quantize(w), cols))
    imp = output_error(x, w, qt.dequantize(qt.quantize(w, imatrix=np.diag(h).astype(np.float32), **kw), cols))
    blocks = gptq_quantize(qt, w, h)
    assert blocks.shape == (w.shape[0], qt.row_bytes(cols)) and blocks.dtype == np.uint8
    ref = gguf.quants.dequantize(blocks, getattr(gguf.GGMLQuantizationType, name)).reshape(w.shape)
    got = qt.dequantize(blocks, cols)
    np.testing.assert_array_equal(got, ref)
    g = output_error(x, w, got)
    assert g < imp < rtn
    assert g < gain * imp, (name, rtn, imp, g)


def test_identity_hessian_is_plain_weighted_rounding(layer):
    """With uncorrelated inputs of equal power there is nothing to feed back: GPTQ is the
    quantizer itself (up to the tiny damping)."""
    _, w, _ = layer
    qt = get_type("Q4_K")
    np.testing.assert_array_equal(gptq_quantize(qt, w, np.eye(w.shape[1])),
                                  qt.quantize(w, imatrix=np.ones(w.shape[1], np.float32)))


@pytest.mark.parametrize("name", ["IQ4_NL", "IQ4_XS", "Q8_0"])
def test_in_block_feedback_on_the_fixed_grid(layer, name, monkeypatch):
    """The grid a block's scales leave (QuantType.fixed_grid) holds every decoded value and
    with_codes writes codes back bit for bit; GPTQ's column loop inside each block on that grid
    gives a lower output error than feeding back whole blocks (the same search picks the scales)."""
    x, w, h = layer
    qt = get_type(name)
    cols = w.shape[1]
    q = qt.quantize(w).reshape(-1, qt.type_size)  # one block per row
    deq = qt.dequantize(q, qt.block_size)
    scale, offset, table = qt.fixed_grid(q)
    codes = np.abs(deq[..., None] - (scale[..., None] * table + offset[..., None])).argmin(-1)
    np.testing.assert_array_equal(scale * table[codes] + offset, deq)
    np.testing.assert_array_equal(qt.with_codes(q, codes), q)
    import gguf

    blocks = gptq_quantize(qt, w, h)
    got = qt.dequantize(blocks, cols)
    ref = gguf.quants.dequantize(blocks, getattr(gguf.GGMLQuantizationType, name)).reshape(w.shape)
    np.testing.assert_array_equal(got, ref)  # the codes written back are the type's own layout
    in_block = output_error(x, w, got)
    monkeypatch.setattr(type(qt), "fixed_grid", None)
    whole = output_error(x, w, qt.dequantize(gptq_quantize(qt, w, h), cols))
    assert in_block < whole, (name, in_block, whole)


def test_blocks_in_order_of_importance():
    from ggq.quality.gptq import quantization_order

    diag = np.array([1.0, 1.0, 5.0, 0.0, 2.0, 2.0])  # blocks of 2: importance 2, 5, 4
    assert quantization_order(diag, 2).tolist() == [2, 3, 4, 5, 0, 1]
    assert quantization_order(np.ones(6), 2).tolist() == list(range(6))  # ties: the file's order


@pytest.mark.parametrize("name", ["IQ4_NL", "IQ4_XS", "Q8_0", "Q4_0", "Q5_0", "Q4_1", "Q5_1"])
def test_scale_refit_lowers_every_rows_error(layer, name, monkeypatch):
    """Re-fitting each row's block scales to the final codes (refit_grid_scales) lowers the
    output error of the whole layer and raises no row's (rows whose re-fit loses keep theirs);
    the codes are untouched (and for Q4_1/Q5_1 their min m re-fitted with d)."""
    x, w, h = layer
    qt = get_type(name)
    cols = w.shape[1]
    refit = gptq_quantize(qt, w, h)
    scales = [qt.grid_f16_at, qt.grid_min_f16_at]
    monkeypatch.setattr(type(qt), "grid_f16_at", None)
    plain = gptq_quantize(qt, w, h)

    def row_errors(blocks):
        return np.sum(np.square(x @ (w - qt.dequantize(blocks, cols)).astype(np.float64).T), axis=0)

    a, b = row_errors(plain), row_errors(refit)
    assert np.all(b <= a * (1 + 1e-6)), (name, np.max(b / a))
    assert b.sum() < 0.99 * a.sum(), (name, a.sum(), b.sum())
    nb = cols // qt.block_size
    same = np.ones(qt.type_size, bool)
    for at in scales:  # d (and m): the only bytes the re-fit writes
        if at is not None:
            same[at:at + 2] = False
    np.testing.assert_array_equal(refit.reshape(-1, nb, qt.type_size)[..., same],
                                  plain.reshape(-1, nb, qt.type_size)[..., same])


@pytest.mark.parametrize("name", ["IQ4_NL", "Q8_0", "Q5_1"])
def test_scale_refit_ignores_dead_inputs(layer, name, monkeypatch):
    """An input that is always 0 leaves its weights free: with small activations elsewhere the
    re-fit must not chase those weights (it would if the dead column weighed like a live one)."""
    x, w, _ = layer
    x = x * 0.01
    x[:, 5] = 0.0
    h = x.T @ x / x.shape[0]
    qt = get_type(name)
    cols = w.shape[1]
    refit = output_error(x, w, qt.dequantize(gptq_quantize(qt, w, h), cols))
    monkeypatch.setattr(type(qt), "grid_f16_at", None)
    plain = output_error(x, w, qt.dequantize(gptq_quantize(qt, w, h), cols))
    assert refit < plain, (name, refit, plain)


def test_scale_refit_keeps_a_flat_block_finite():
    """A block whose values are all equal quantizes to d = 0 (Q5_1: its value in m); the re-fit
    keeps d = 0, may move m, and writes finite values."""
    rng = np.random.default_rng(3)
    w = rng.normal(0, 0.05, size=(8, 64)).astype(np.float32)
    w[:, :32] = 0.3
    x = rng.normal(size=(256, 64))
    h = x.T @ x / 256
    qt = get_type("Q5_1")
    blocks = gptq_quantize(qt, w, h)
    assert np.all(qt.block_f16(blocks[:, :qt.type_size]) == 0)
    got = qt.dequantize(blocks, 64)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got[:, :32], 0.3, atol=2e-3)
