"""IQ4_NL / IQ4_XS: bytes vs gguf-py's dequantizers and llama.cpp's own quantizer, the search
mode against the reference, imatrix, errors, and the fused kernels against NumPy.

References are independent of our code: gguf-py's numpy dequantizers, llama.cpp's ggml-quants.c
compiled with the system C compiler (the ggml_ref fixture of test_quants_kquants), and plain
NumPy products of the dequantized weights."""
from __future__ import annotations

import ctypes

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize
from numba import njit, prange

from ggq.errors import QuantError
from ggq.kernels import BLOCK, DEQUANT, INT8_ACTIVATIONS, MATVEC
from ggq.kernels import iquants as K
from ggq.kernels.common import HAS_VNNI, NR, act8, put_rows
from ggq.quants import get_type
from ggq.quants.iquants import KVALUES_IQ4NL
from ggq.runtime.linear import dequantize_rows, linear
from test_quants_kquants import ggml_ref  # noqa: F401  (fixture: llama.cpp's ggml-quants.c built once)

NAMES = ["IQ4_NL", "IQ4_XS"]
LAYOUT = {"IQ4_NL": (20, 32, 18), "IQ4_XS": (23, 256, 136)}  # ggml id, block, bytes (ggml-common.h)


def _data(kind, shape, seed):
    rng = np.random.default_rng(seed)
    if kind == "gauss":
        return rng.standard_normal(shape).astype(np.float32)
    return rng.standard_t(3, shape).astype(np.float32)


def _random_blocks(name, rows, nblocks, rng):
    """Random bytes with the fp16 d replaced by a random finite fp16 (any exponent)."""
    _, _, size = LAYOUT[name]
    data = rng.integers(0, 256, (rows, nblocks, size), dtype=np.uint8)
    h = rng.integers(0, 1 << 16, (rows, nblocks), dtype=np.uint16)
    h[(h & 0x7C00) == 0x7C00] ^= 0x4000  # inf/nan exponent -> finite
    data[:, :, 0:2] = h.view(np.uint8).reshape(rows, nblocks, 2)
    return data.reshape(rows, nblocks * size)


def _gguf(qt, q, cols):
    return gguf_dequantize(q, GGMLQuantizationType(qt.ggml_id)).reshape(q.shape[0], cols)


@pytest.mark.parametrize("name", NAMES)
def test_registry(name):
    gid, bs, size = LAYOUT[name]
    qt = get_type(name)
    assert (qt.ggml_id, qt.block_size, qt.type_size) == (gid, bs, size)
    assert get_type(gid) is qt and BLOCK[name] == (bs, size)
    assert name in MATVEC and name in DEQUANT and name in INT8_ACTIVATIONS
    assert qt.bits_per_weight == {"IQ4_NL": 4.5, "IQ4_XS": 4.25}[name]
    # the table is ggml-common.h's kvalues_iq4nl, as gguf-py has it too
    from gguf.quants import IQ4_NL as G
    assert KVALUES_IQ4NL.tolist() == list(G.kvalues)


@pytest.mark.parametrize("name", NAMES)
def test_dequantize_random_blocks_bit_exact(name):
    qt = get_type(name)
    rng = np.random.default_rng(11)
    nb = 3 if name == "IQ4_XS" else 7
    q = _random_blocks(name, 9, nb, rng)
    cols = nb * qt.block_size
    y = qt.dequantize(q, cols)
    assert np.array_equal(y.view(np.uint32), _gguf(qt, q, cols).view(np.uint32))
    # the runtime's decode (tiles for --exact, embeddings) too
    assert np.array_equal(dequantize_rows(name, q, cols, 2, 7), y[2:7])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("search", [False, True])
def test_own_output_bit_exact_and_error_bound(name, search):
    qt = get_type(name)
    for kind, bound in (("gauss", 0.105), ("t3", 0.125)):
        x = _data(kind, (32, 512), 1)
        q = qt.quantize(x, search=search)
        y = qt.dequantize(q, 512)
        assert np.array_equal(y.view(np.uint32), _gguf(qt, q, 512).view(np.uint32))
        rel = np.sqrt(np.mean((x - y) ** 2) / np.mean(x ** 2))
        assert rel < bound, (kind, rel)


@pytest.mark.parametrize("name", NAMES)
def test_quantize_matches_llamacpp(ggml_ref, name):  # noqa: F811
    """search=False reproduces llama.cpp's quantize_iq4_nl / quantize_iq4_xs bytes (what
    llama-quantize writes), plain and with an importance matrix, on odd data too."""
    qt = get_type(name)
    fn = getattr(ggml_ref, "quantize_" + name.lower())
    fn.restype = ctypes.c_size_t
    rng = np.random.default_rng(3)
    imp = (rng.random(512).astype(np.float32) ** 3) * 10
    sparse = np.zeros((2, 512), np.float32)
    sparse[0, :40] = rng.standard_normal(40)  # zero blocks after a non-zero one
    xs = [_data("gauss", (16, 512), 5), _data("t3", (16, 512), 6),
          np.abs(_data("gauss", (4, 512), 8)), _data("gauss", (4, 512), 9) * np.float32(1e-3),
          np.zeros((2, 512), np.float32), sparse]
    for x in xs:
        for w in (None, imp):
            ref = np.zeros((x.shape[0], qt.row_bytes(512)), np.uint8)
            fn(x.ctypes.data_as(ctypes.c_void_p), ref.ctypes.data_as(ctypes.c_void_p),
               ctypes.c_int64(x.shape[0]), ctypes.c_int64(512),
               None if w is None else w.ctypes.data_as(ctypes.c_void_p))
            assert np.array_equal(qt.quantize(x, imatrix=w), ref)


def _werr_blocks(x, y, w, n):
    return (w * (x - y) ** 2).reshape(x.shape[0], -1, n).sum(axis=2)


@pytest.mark.parametrize("name", NAMES)
def test_search_never_worse_than_reference_per_block(name):
    """The search keeps the reference block unless it found a lower weighted error, measured on
    the decoded values: block by block, in the search's own weights (with and without imatrix)."""
    qt = get_type(name)
    n = qt.block_size
    rng = np.random.default_rng(21)
    x = _data("t3", (24, 512), 2)
    imp = (rng.random(512).astype(np.float32) ** 4) * 5
    for w in (None, imp):
        ref = qt.dequantize(qt.quantize(x, imatrix=w), 512)
        srch = qt.dequantize(qt.quantize(x, imatrix=w, search=True), 512)
        xb = x.reshape(x.shape[0], -1, n)
        sigma2 = 2 * (xb.astype(np.float64) ** 2).mean(axis=2, keepdims=True)
        ww = np.sqrt(sigma2 + xb.astype(np.float64) ** 2)
        if w is not None:
            ww = ww * w.reshape(1, -1, n)
        ww = ww.reshape(x.shape)
        er, es = _werr_blocks(x, ref, ww, n), _werr_blocks(x, srch, ww, n)
        assert (es <= er * (1 + 1e-5) + 1e-12).all()
        assert es.sum() < 0.97 * er.sum()  # and better overall by a clear margin


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("search", [False, True])
def test_imatrix_lowers_weighted_error(name, search):
    """On skewed importances, the importance-weighted error is lower with the matrix than without."""
    qt = get_type(name)
    rng = np.random.default_rng(4)
    x = _data("gauss", (32, 512), 7)
    imp = np.exp(rng.standard_normal(512) * 2).astype(np.float32)

    def werr(q):
        return float((imp * (x - qt.dequantize(q, 512)) ** 2).sum())

    assert werr(qt.quantize(x, imatrix=imp, search=search)) < 0.9 * werr(qt.quantize(x, search=search))


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_raises_quant_error(name):
    qt = get_type(name)
    with pytest.raises(QuantError, match="multiple"):
        qt.quantize(np.zeros((2, qt.block_size + 16), np.float32))
    x = np.zeros((2, 256), np.float32)
    with pytest.raises(QuantError, match="importance"):
        qt.quantize(x, imatrix=np.ones(255, np.float32))
    with pytest.raises(QuantError, match="importance"):
        qt.quantize(x, imatrix=-np.ones(256, np.float32))
    x[1, 3] = np.nan
    with pytest.raises(QuantError, match="NaN"):
        qt.quantize(x)
    with pytest.raises(QuantError):
        qt.dequantize(np.zeros((2, qt.type_size + 1), np.uint8), qt.block_size)
    with pytest.raises(QuantError):
        qt.dequantize(np.zeros((2, qt.type_size), np.float32), qt.block_size)


# --------------------------------------------------------------------------- kernels

def _act_ref(a):
    """The activations as the kernels see them: int8 per 32, round(x / d), d = absmax / 127."""
    b = a.reshape(-1, 32).astype(np.float32)
    d = np.abs(b).max(axis=1) / np.float32(127)
    inv = np.where(d > 0, np.float32(1) / np.where(d > 0, d, 1), 0).astype(np.float32)
    return (np.round(b * inv[:, None]).astype(np.float64) * d[:, None]).reshape(-1)


# the portable lookup (a select chain instead of SSSE3's pshufb), compiled here, uncached
_rows_sel = {(n, v): K._iq4_rows_intrinsic(n.lower(), v, pshufb=False) for n in NAMES for v in (False, True)}


def _sel_kernel(name, vnni):
    rows_fn = _rows_sel[(name, vnni)]
    per = 32 if name == "IQ4_NL" else 256

    @njit(parallel=True)
    def mv(w, x, y):
        rows, rb = w.shape
        xq, xd, xp, xs = act8(x)
        wf = w.reshape(-1)
        for g in prange((rows + NR - 1) // NR):
            put_rows(y, g * NR, rows, rows_fn(wf, g * NR, rows, rb, x.size // per, xq, xd, xp, xs))
    return mv


@pytest.mark.parametrize("name", NAMES)
def test_matvec_all_flavours_match_numpy(name):
    """Every flavour of the decode matvec equals the float64 product of gguf's dequantized
    weights with the int8-rounded activations, on odd shapes (rows not a multiple of NR)."""
    qt = get_type(name)
    rng = np.random.default_rng(5)
    kernels = [("generic", K.MATVEC_GENERIC[name])]
    if HAS_VNNI:
        kernels.append(("vnni", K.MATVEC_VNNI[name]))
    kernels += [("generic-select", _sel_kernel(name, False))]
    if HAS_VNNI:
        kernels.append(("vnni-select", _sel_kernel(name, True)))
    for rows, cols in ((37, 2 * qt.block_size if name == "IQ4_XS" else 160), (3, 768), (1, 256)):
        w = qt.quantize(_data("t3", (rows, cols), rows))
        w.flags.writeable = False
        W = _gguf(qt, w, cols).astype(np.float64)
        x = rng.standard_normal(cols).astype(np.float32)
        x[:32] *= 1e-3   # a tiny block
        x[40] = 30.0     # an outlier
        ref = W @ _act_ref(x)
        tol = 1e-5 * np.abs(W).sum(axis=1).max() * np.abs(x).max()
        for label, mv in kernels:
            y = np.zeros(rows, np.float32)
            mv(w, x, y)
            assert np.abs(y - ref).max() <= tol, (label, rows, cols, np.abs(y - ref).max() / tol)


@pytest.mark.parametrize("name", NAMES)
def test_linear_exact_and_int8_paths(name):
    """runtime.linear: exact=True is float math on the decoded weights; the default int8 path
    (matvec per row, and the GEMM for longer batches) agrees with it within int8 rounding."""
    qt = get_type(name)
    rng = np.random.default_rng(8)
    rows, cols = 45, 512
    w = qt.quantize(_data("gauss", (rows, cols), 3), search=True)
    W = _gguf(qt, w, cols).astype(np.float64)
    x = rng.standard_normal((13, cols)).astype(np.float32)
    ref = x.astype(np.float64) @ W.T
    scale = np.abs(ref).max()
    np.testing.assert_allclose(linear(name, w, cols, x, exact=True), ref, rtol=0, atol=1e-5 * scale)
    for n in (1, 3, 13):
        y = linear(name, w, cols, x[:n])
        assert np.abs(y - ref[:n]).max() < 3e-2 * scale


def test_spec_worked_examples():
    """spec/QUANTS-IQ.md section 4: the listed block bytes are what the reference mode (and
    llama.cpp) produce, and the listed sha256 of the decoded block matches both our decoder and
    gguf-py's."""
    import hashlib
    import math
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "spec" / "QUANTS-IQ.md").read_text()
    x = np.array([math.sin(0.37 * i) * (1 + i / 128.0) for i in range(256)], dtype=np.float32)
    sections = re.split(r"^### 4\.\d (IQ4_\w\w)\n", text, flags=re.M)[1:]
    assert sections[0::2] == NAMES
    for name, body in zip(sections[0::2], sections[1::2]):
        qt = get_type(name)
        n = qt.block_size
        dump = re.search(r"```\n(.*?)```", body, re.S).group(1)
        listed = bytes(int(h, 16) for line in dump.strip().splitlines() for h in line.split(":")[1].split())
        ours = qt.quantize(x[:n].reshape(1, -1))
        assert ours.tobytes() == listed, name
        sha = re.search(r"sha256 `([0-9a-f]{64})`", body).group(1)
        for y in (qt.dequantize(ours, n), _gguf(qt, ours, n)):
            assert hashlib.sha256(y.astype("<f4").tobytes()).hexdigest() == sha


# --------------------------------------------------------------------------- presets

def _smollm2_shapes(n_layers=30):
    """SmolLM2-135M's tensors (numpy shapes): 576-wide rows everywhere but ffn_down (1536)."""
    s = {"token_embd.weight": (49152, 576), "output_norm.weight": (576,)}
    for i in range(n_layers):
        s.update({f"blk.{i}.attn_norm.weight": (576,), f"blk.{i}.attn_q.weight": (576, 576),
                  f"blk.{i}.attn_k.weight": (192, 576), f"blk.{i}.attn_v.weight": (192, 576),
                  f"blk.{i}.attn_output.weight": (576, 576), f"blk.{i}.ffn_norm.weight": (576,),
                  f"blk.{i}.ffn_gate.weight": (1536, 576), f"blk.{i}.ffn_up.weight": (1536, 576),
                  f"blk.{i}.ffn_down.weight": (576, 1536)})
    return s


def _plan(preset, shapes, **kw):
    from ggq.convert.presets import plan_types
    return plan_types(shapes, preset, n_layers=30, n_head=9, n_head_kv=3, tied=True, **kw)


def test_iq4_presets_follow_llamacpp():
    """llama_tensor_get_type for LLAMA_FTYPE_MOSTLY_IQ4_NL / _XS (what llama-quantize chose for
    SmolLM2: IQ4_NL x207 + Q5_K x3 + Q8_0 x1; IQ4_XS x27 + IQ4_NL x180 + Q5_K x3 + Q8_0 x1)."""
    from collections import Counter
    s = _smollm2_shapes()
    nl, xs = _plan("iq4_nl", s), _plan("iq4_xs", s)
    assert Counter(nl.values()) == {"F32": 61, "IQ4_NL": 207, "Q5_K": 3, "Q8_0": 1}
    assert Counter(xs.values()) == {"F32": 61, "IQ4_NL": 180, "IQ4_XS": 27, "Q5_K": 3, "Q8_0": 1}
    # ffn_down of the first eighth of the layers: Q5_K without an imatrix, the base type with one
    assert [xs[f"blk.{i}.ffn_down.weight"] for i in range(4)] == ["Q5_K"] * 3 + ["IQ4_XS"]
    assert _plan("iq4_xs", s, has_imatrix=True)["blk.0.ffn_down.weight"] == "IQ4_XS"
    # attn_v: Q5_K once n_head / n_head_kv >= 4
    from ggq.convert.presets import plan_types
    gqa4 = plan_types({"blk.0.attn_v.weight": (64, 512)}, "iq4_xs", n_layers=8, n_head=8, n_head_kv=2, tied=False)
    assert gqa4["blk.0.attn_v.weight"] == "Q5_K"


def test_fit_presets_keep_the_budget_and_change_nothing_that_fits():
    """*_fit presets: identical to the llama.cpp preset where 256 divides every row; on 576-wide
    rows Q4_K -> IQ4_NL (4.5 bpw) instead of Q5_0 (5.5), and the plan says why."""
    from ggq.convert.presets import FIT_PRESETS
    wide = {n: (sh[0], 1024) if len(sh) == 2 else (1024,) for n, sh in _smollm2_shapes().items()}
    for p in FIT_PRESETS:
        assert _plan(p + "_fit", wide) == _plan(p, wide), p
    s = _smollm2_shapes()
    notes = {}
    fit, lc = _plan("q4_k_m_fit", s, notes=notes), _plan("q4_k_m", s)
    assert lc["blk.3.attn_q.weight"] == "Q5_0" and fit["blk.3.attn_q.weight"] == "IQ4_NL"
    assert lc["token_embd.weight"] == "Q8_0" and fit["token_embd.weight"] == "Q5_1"
    assert fit["blk.3.ffn_down.weight"] == lc["blk.3.ffn_down.weight"]  # 1536 columns: untouched
    assert "576 columns" in notes["blk.3.attn_q.weight"] and "IQ4_NL" in notes["blk.3.attn_q.weight"]
    assert "blk.3.ffn_down.weight" not in notes

    def bpw(plan):
        tot = sum(np.prod(s[n]) * get_type(t).bits_per_weight for n, t in plan.items())
        return tot / sum(np.prod(v) for v in s.values())
    assert bpw(lc) > 6.1 and bpw(fit) < 5.05 and bpw(_plan("q4_k_s_fit", s)) < 4.9


def _bpw(plan, shapes):
    tot = sum(np.prod(shapes[n]) * get_type(t).bits_per_weight for n, t in plan.items())
    return tot / sum(np.prod(v) for v in shapes.values())


def test_fit_presets_with_an_imatrix_respend_where_rows_fall_back():
    """With an importance matrix, FIT_IMATRIX_RULES re-spend a *_fit preset's budget where rows
    fall back: SmolLM2's q4_k_m_fit at most 5.0 bits per weight (the issue's really-4-bit file)
    with attn_v/attn_k Q8_0 and ffn_down IQ4_XS; without an imatrix, or where every row fits,
    nothing changes."""
    from ggq.convert.presets import FIT_IMATRIX_RULES
    wide = {n: (sh[0], 1024) if len(sh) == 2 else (1024,) for n, sh in _smollm2_shapes().items()}
    s = _smollm2_shapes()
    for p in FIT_IMATRIX_RULES:
        assert _plan(p + "_fit", wide, has_imatrix=True) == _plan(p, wide, has_imatrix=True), p
        ruled, plain = _plan(p + "_fit", s, has_imatrix=True), _plan(p + "_fit", s)
        assert ruled != plain and abs(_bpw(ruled, s) - _bpw(plain, s)) < 0.07, p
        assert all(get_type(t).supports(s[n][-1]) for n, t in ruled.items()), p
    notes = {}
    km = _plan("q4_k_m_fit", s, has_imatrix=True, notes=notes)
    assert _bpw(km, s) <= 5.0 < _bpw(_plan("q4_k_m_fit", s), s)
    # --dry-run says why: the rule (from the plain fit type) and the fallback
    assert notes["blk.0.attn_v.weight"].startswith("Q5_1 -> Q8_0: q4_k_m_fit's rule for attn_v")
    assert notes["blk.3.attn_k.weight"].startswith("IQ4_NL -> Q8_0: q4_k_m_fit's rule for attn_k")
    assert "rule" not in notes["blk.3.attn_q.weight"] and "576 columns" in notes["blk.3.attn_q.weight"]
    assert {km[f"blk.{i}.{c}.weight"] for i in range(30) for c in ("attn_v", "attn_k")} == {"Q8_0"}
    assert {km[f"blk.{i}.ffn_down.weight"] for i in range(30)} == {"IQ4_XS"}
    assert km["token_embd.weight"] == "Q5_1" and km["blk.3.attn_q.weight"] == "IQ4_NL"
    assert _plan("q4_k_m_fit", s)["blk.0.attn_v.weight"] == "Q5_1"  # no imatrix: the plain fit recipe
    assert _plan("q4_k_s_fit", s, has_imatrix=True)["token_embd.weight"] == "IQ4_NL"
    # a rule changes only tensors the importance matrix covers: none covered, nothing changes;
    # a matrix without the output product's statistics leaves the tied embedding alone
    for p in FIT_IMATRIX_RULES:
        assert _plan(p + "_fit", s, has_imatrix=True, calibrated=set()) == _plan(p + "_fit", s), p
    blocks_only = {n for n in s if n.startswith("blk.")}
    ks = _plan("q4_k_s_fit", s, has_imatrix=True, calibrated=blocks_only)
    assert ks["token_embd.weight"] == _plan("q4_k_s_fit", s)["token_embd.weight"] == "Q5_1"
    assert ks["blk.3.attn_v.weight"] == "Q8_0"
    # the llama.cpp presets and the *_mix ones do not depend on it
    for p in ("q4_k_m", "q4_k_s", "q2_k", "q4_k_m_mix", "q4_k_s_mix", "q6_k_mix"):
        assert _plan(p, s, has_imatrix=True) == _plan(p, s), p


def test_mix_presets_keep_llamacpp_size_and_change_nothing_that_fits():
    """*_mix presets: identical to the llama.cpp preset where no tensor falls back; on SmolLM2's
    576-wide rows a different mixture at llama.cpp's bits per weight (within 0.02), every rule's
    type fitting its rows, and the tied embedding's rule leaving an untied token_embd and
    output.weight alone."""
    from ggq.convert.presets import MIX_RULES, _mix_rule, plan_types
    wide = {n: (sh[0], 1024) if len(sh) == 2 else (1024,) for n, sh in _smollm2_shapes().items()}
    s = _smollm2_shapes()
    for p in MIX_RULES:
        assert _plan(p + "_mix", wide) == _plan(p, wide), p
        mix, lc = _plan(p + "_mix", s), _plan(p, s)
        assert mix != lc, p
        assert abs(_bpw(mix, s) - _bpw(lc, s)) <= 0.02, (p, _bpw(mix, s), _bpw(lc, s))
        for name in s:  # the rules' own types (before plan_types' fallback could mend them)
            ruled = _mix_rule(MIX_RULES[p], name, "-", 30, True)
            assert ruled == "-" or get_type(ruled).supports(s[name][-1]), (p, name, ruled)
    km, lc = _plan("q4_k_m_mix", s), _plan("q4_k_m", s)
    assert lc["token_embd.weight"] == "Q8_0" and km["token_embd.weight"] == "Q5_1"
    assert [km[f"blk.{i}.ffn_down.weight"] for i in range(30)] == ["Q6_K"] * 30
    assert km["blk.3.attn_v.weight"] == "Q8_0" and lc["blk.3.attn_v.weight"] == "Q5_0"
    assert km["blk.3.ffn_gate.weight"] == "Q5_0" and km["blk.29.ffn_gate.weight"] == "Q5_1"  # "ends"
    untied_shapes = {**s, "output.weight": (49152, 576)}
    for p in MIX_RULES:  # the tied-embedding rule touches neither an untied embedding nor output
        untied = plan_types(untied_shapes, p + "_mix", n_layers=30, n_head=9, n_head_kv=3, tied=False)
        lc = plan_types(untied_shapes, p, n_layers=30, n_head=9, n_head_kv=3, tied=False)
        assert untied["token_embd.weight"] == lc["token_embd.weight"], p
        assert untied["output.weight"] == lc["output.weight"], p


# --------------------------------------------------------------------------- end to end

@pytest.mark.parametrize("preset", ["iq4_xs", "q4_k_m_fit"])
def test_convert_run_and_gguf_export(tmp_path, preset):
    """A model with 256-wide rows and 576-wide ffn_down rows converted with an IQ4 preset (the
    fit preset's fallback is IQ4_NL there): the file holds IQ4 tensors
    close to the float weights, runs (logits near the float model's), and its GGUF export carries
    the same bytes with GGML's type ids (what llama.cpp reads)."""
    import gguf

    import ggq
    from ggq.convert.converter import convert_model
    from ggq.format import GGQReader
    from ggq.gguf_io import export_gguf
    from tiny_model import make_tiny_hf_dir

    d = make_tiny_hf_dir(tmp_path / "hf", hidden=256, intermediate=576, heads=4, kv_heads=2, layers=2)
    f32, out = tmp_path / "f.ggq", tmp_path / "q.ggq"
    convert_model(d, f32, preset="f32", progress=False)
    rep = convert_model(d, out, preset=preset, progress=False)
    with GGQReader(out) as f, GGQReader(f32) as ref:
        types = {f.tensors[n].qtype.name for n in f.tensors if len(f.tensors[n].shape) == 2}
        assert ({"IQ4_XS", "IQ4_NL"} if preset == "iq4_xs" else {"Q4_K", "IQ4_NL"}) <= types
        for n in f.tensors:
            if len(f.tensors[n].shape) == 2:
                a, x = ref.dequantize(n), f.dequantize(n)
                assert np.sqrt(np.mean((x - a) ** 2) / np.mean(a ** 2)) < 0.12, n
        raw = {n: np.array(f.raw(n)) for n in f.tensors}
    assert 4.2 < rep.bits_per_weight < 6.0
    toks = list(range(3, 40))
    lf, lq = ggq.load(str(f32)).logits(toks), ggq.load(str(out)).logits(toks)
    assert np.corrcoef(lf.ravel(), lq.ravel())[0, 1] > 0.98
    g = export_gguf(out, tmp_path / "q.gguf")
    r = gguf.GGUFReader(str(g))
    seen = set()
    for t in r.tensors:
        name = t.tensor_type.name
        if name in ("IQ4_NL", "IQ4_XS"):
            seen.add(name)
            assert int(t.tensor_type) == get_type(name).ggml_id
            if not t.name.endswith(("attn_q.weight", "attn_k.weight")):  # rows permuted for llama.cpp
                assert np.array_equal(np.asarray(t.data).reshape(raw[t.name].shape), raw[t.name])
    assert seen
