import numpy as np
import pytest

from ggq.convert.permute import gguf_to_hf_rows, heads_for, hf_to_gguf_rows
from ggq.errors import ConvertError
from ggq.quants import get_type


def llama_cpp_permute(weights, n_head, n_head_kv=None):
    # verbatim from llama.cpp convert_hf_to_gguf.py LlamaModel.permute
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape))


@pytest.mark.parametrize("n_head,hd,cols", [(4, 16, 64), (9, 64, 32), (3, 64, 576)])
def test_matches_llama_cpp_and_round_trips(n_head, hd, cols):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((n_head * hd, cols)).astype(np.float32)
    g = hf_to_gguf_rows(w, n_head)
    assert np.array_equal(g, llama_cpp_permute(w, n_head))
    assert not np.array_equal(g, w)
    assert np.array_equal(gguf_to_hf_rows(g, n_head), w)


def test_rotary_pairs_become_adjacent():
    # HF split-half: row j pairs with j + hd/2; GGUF puts them at 2j, 2j+1
    hd, n_head = 8, 2
    w = np.arange(n_head * hd, dtype=np.float32)[:, None]
    g = hf_to_gguf_rows(w, n_head)[:, 0]
    assert list(g[:8]) == [0, 4, 1, 5, 2, 6, 3, 7]
    assert list(g[8:]) == [8, 12, 9, 13, 10, 14, 11, 15]


def test_attn_k_uses_kv_heads():
    rng = np.random.default_rng(1)
    k = rng.standard_normal((3 * 64, 32)).astype(np.float32)
    assert np.array_equal(hf_to_gguf_rows(k, heads_for("blk.0.attn_k.weight", 9, 3)),
                          llama_cpp_permute(k, 9, 3))
    assert heads_for("blk.0.attn_q.weight", 9, 3) == 9
    assert heads_for("blk.0.attn_v.weight", 9, 3) is None


@pytest.mark.parametrize("tname", ["Q4_1", "Q8_0", "Q4_0"])
def test_exact_on_quantized_bytes(tname):
    qt = get_type(tname)
    rng = np.random.default_rng(2)
    n_head, hd, cols = 4, 16, 96
    w_gguf = rng.standard_normal((n_head * hd, cols)).astype(np.float32)
    raw = qt.quantize(w_gguf)                       # GGUF-order bytes
    assert raw.dtype == np.uint8 and raw.shape == (n_head * hd, qt.row_bytes(cols))
    hf_bytes = gguf_to_hf_rows(raw, n_head)         # un-permute the bytes
    deq_then_perm = gguf_to_hf_rows(qt.dequantize(raw, cols), n_head)
    assert np.array_equal(qt.dequantize(hf_bytes, cols), deq_then_perm)
    assert np.array_equal(hf_to_gguf_rows(hf_bytes, n_head), raw)


def test_bad_row_count():
    with pytest.raises(ConvertError):
        hf_to_gguf_rows(np.zeros((10, 4), np.float32), 4)
