"""The torch backend (-ngl N) against the Numba engine, on torch's CPU device (every machine) and
on CUDA where there is one.

- dequant: torch's decoding of GGML blocks equals gguf.quants.dequantize bit for bit, every type,
  on quantized values and on random bytes (every bit pattern of scales and codes).
- models: logits of 0, some and all layers offloaded (prompt and decode steps) against the
  Numba engine in exact mode (float math on the same dequantized weights) for every quant type,
  tiny llamas and a tiny Gemma 3; the real SmolLM2 at q4_k_m.
- resolving -ngl / --device: no CUDA -> one line and the CPU engine; bad values -> UsageError.
"""
from __future__ import annotations

import numpy as np
import pytest

from optional import needed  # noqa: E402

torch = needed("torch")

import ggq  # noqa: E402
from ggq.errors import UsageError  # noqa: E402
from ggq.quants import get_type  # noqa: E402
from ggq.torch_backend import NO_CUDA, resolve_offload  # noqa: E402
from ggq.torch_backend.dequant import DEQUANT, FLOAT_VIEW, dequantize_rows  # noqa: E402
from tiny_gemma3 import VOCAB as GEMMA_VOCAB, make_tiny_gemma3  # noqa: E402
from tiny_model import make_tiny_hf_dir  # noqa: E402

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA device on this machine (runs on the GPU machine)")
TYPES = sorted(DEQUANT) + sorted(FLOAT_VIEW)


# ---------------------------------------------------------------------------------------------
# dequantization

def _gguf_dequant(raw: np.ndarray, name: str) -> np.ndarray:
    import gguf

    with np.errstate(invalid="ignore", over="ignore"):  # random bytes: inf and NaN scales
        return gguf.quants.dequantize(raw, getattr(gguf.GGMLQuantizationType, name))


@pytest.mark.parametrize("name", TYPES)
def test_dequant_equals_gguf_bit_for_bit(name):
    qt = get_type(name)
    rng = np.random.default_rng(7)
    cols = 512
    x = (rng.standard_normal((6, cols)) * rng.uniform(0.01, 3, (6, 1))).astype(np.float32)
    quantized = qt.quantize(x)
    noise = rng.integers(0, 256, size=quantized.shape, dtype=np.uint8)  # every bit pattern
    for raw in (quantized, noise):
        ref = _gguf_dequant(raw, name).reshape(6, cols)
        got = dequantize_rows(name, torch.from_numpy(raw.copy()), cols).numpy()
        assert got.dtype == np.float32 and got.shape == (6, cols)
        np.testing.assert_array_equal(got.view(np.uint32)[np.isfinite(ref)], ref.view(np.uint32)[np.isfinite(ref)])
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
        np.testing.assert_array_equal(np.isinf(got), np.isinf(ref))


def test_dequant_refuses_a_wrong_row_size():
    from ggq.errors import QuantError

    with pytest.raises(QuantError, match="do not hold rows"):
        dequantize_rows("Q4_K", torch.zeros((2, 100), dtype=torch.uint8), 256)


@needs_cuda
@pytest.mark.parametrize("name", TYPES)
def test_dequant_on_cuda_equals_cpu(name):
    raw = np.random.default_rng(3).integers(0, 256, size=(4, get_type(name).row_bytes(512)), dtype=np.uint8)
    cpu = dequantize_rows(name, torch.from_numpy(raw), 512)
    gpu = dequantize_rows(name, torch.from_numpy(raw).cuda(), 512).cpu()
    # random bytes make NaN scales: CUDA writes its canonical NaN where the CPU keeps payloads
    nan = torch.isnan(cpu)
    assert torch.equal(nan, torch.isnan(gpu))
    assert torch.equal(cpu.view(torch.int32)[~nan], gpu.view(torch.int32)[~nan])


# ---------------------------------------------------------------------------------------------
# whole models

# preset -> tiny llama: rows of 64/128 for the 32-element types, 256/512 for the k-quants
LLAMA = {"small": dict(hidden=64, intermediate=128, heads=4, kv_heads=2, layers=3, seed=4),
         "wide": dict(hidden=256, intermediate=512, heads=4, kv_heads=1, layers=3, tied=False, seed=5)}
PRESETS = {"f32": "small", "f16": "small", "bf16": "small", "q8_0": "small", "q4_0": "small", "q4_1": "small",
           "q5_0": "small", "q5_1": "small", "q2_k": "wide", "q3_k_m": "wide", "q4_k_m": "wide",
           "q5_k_m": "wide", "q6_k": "wide", "iq4_nl": "small", "iq4_xs": "wide"}


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    from ggq.convert import convert_model

    made = {}

    def get(preset):
        if preset not in made:
            base = tmp_path_factory.mktemp(f"torch_{preset}")
            hf = make_tiny_hf_dir(base / "hf", **LLAMA[PRESETS[preset]])
            made[preset] = base / f"{preset}.ggq"
            convert_model(hf, made[preset], preset=preset, progress=False)
        return made[preset]

    return get


def _err(got, ref):
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def _run(m, toks, n_prompt):
    """Logits of a prompt of n_prompt tokens (every position), then of decode steps one token at
    a time over the rest: (n, vocab)."""
    out = [m.llama.forward(toks[:n_prompt], 0, all_logits=True)]
    for i in range(n_prompt, len(toks)):
        out.append(m.llama.forward(toks[i:i + 1], i))
    return np.concatenate(out)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_offloaded_layers_match_the_numba_engine(tiny_files, preset):
    path = tiny_files(preset)
    toks = np.random.default_rng(1).integers(3, 300, size=28)
    ref_model = ggq.load(path, n_ctx=32)
    ref_model.llama.set_exact(True)
    ref = _run(ref_model, toks, 20)
    n_layers = ref_model.config.n_layers
    for ngl in (1, n_layers, 99):
        m = ggq.load(path, n_ctx=32, n_gpu_layers=ngl, device="cpu")
        on_torch = [L.ops.name != "cpu" for L in m.llama.layers]
        assert on_torch == [i >= n_layers - ngl for i in range(n_layers)]
        assert (m.llama.head_ops.name != "cpu") == (ngl > n_layers)
        m.llama.set_exact(True)
        # the same float math on the same dequantized weights: float32 rounding apart
        assert _err(_run(m, toks, 20), ref) < 1e-4, ngl


def test_partial_offload_with_int8_cpu_layers(tiny_files):
    """The CPU layers' default path (8-bit activations) next to torch layers: within the int8
    tolerance of the exact engine, and each side's own numbers unchanged."""
    path = tiny_files("q4_k_m")
    toks = np.random.default_rng(2).integers(3, 300, size=24)
    exact = ggq.load(path, n_ctx=32)
    exact.llama.set_exact(True)
    ref = _run(exact, toks, 16)
    m = ggq.load(path, n_ctx=32, n_gpu_layers=2, device="cpu")
    got = _run(m, toks, 16)
    assert _err(got, ref) < 6e-2
    assert np.array_equal(got, _run(ggq.load(path, n_ctx=32, n_gpu_layers=2, device="cpu"), toks, 16))


@pytest.mark.parametrize("qtype", ["F32", "Q8_0"])
def test_gemma3_offloaded_matches(tmp_path, qtype):
    path = make_tiny_gemma3(tmp_path / f"g_{qtype}.ggq", qtype=qtype)
    toks = np.random.default_rng(3).integers(3, GEMMA_VOCAB, size=30)  # past the 6-position window
    ref_model = ggq.load(path, n_ctx=40)
    ref_model.llama.set_exact(True)
    ref = _run(ref_model, toks, 20)
    for ngl in (2, 99):  # a split between local and global layers; everything
        m = ggq.load(path, n_ctx=40, n_gpu_layers=ngl, device="cpu")
        m.llama.set_exact(True)
        assert _err(_run(m, toks, 20), ref) < 1e-4, ngl


def test_generation_and_stats_with_offload(tiny_files):
    path = tiny_files("q8_0")
    a = ggq.load(path, n_ctx=64)
    a.llama.set_exact(True)
    b = ggq.load(path, n_ctx=64, n_gpu_layers=99, device="cpu")
    want = list(a.generate_tokens("hello world", 12, temperature=0))
    assert list(b.generate_tokens("hello world", 12, temperature=0)) == want
    assert b.stats.gen_tokens == len(want)


@pytest.mark.smollm2
def test_smollm2_q4_k_m_offloaded(smollm2_gguf):
    from ggq.convert import convert_model
    from ggq.default_model import cache_dir

    path = cache_dir() / "test" / "SmolLM2-135M-Instruct.q4_k_m.ggq"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        convert_model(smollm2_gguf, path, preset="q4_k_m", force=True, progress=False)
    toks = ggq.load(path, n_ctx=64).tokenizer.encode("The quick brown fox jumps over the lazy dog because it")
    ref_model = ggq.load(path, n_ctx=64)
    ref_model.llama.set_exact(True)
    ref = _run(ref_model, toks, len(toks) - 3)
    for ngl in (10, 31):
        m = ggq.load(path, n_ctx=64, n_gpu_layers=ngl, device="cpu")
        m.llama.set_exact(True)
        got = _run(m, toks, len(toks) - 3)
        assert _err(got, ref) < 2e-4, ngl
        assert np.array_equal(got.argmax(-1), ref.argmax(-1))


def _offloaded(path, ngl, ops, n_ctx=40):
    from ggq.format import GGQReader
    from ggq.models import build_model
    from ggq.torch_backend import Offload

    m = build_model(GGQReader(path), n_ctx=n_ctx, offload=Offload(ngl, ops))
    m.set_exact(True)
    return m


def _run_model(m, toks, n_prompt):
    out = [m.forward(toks[:n_prompt], 0, all_logits=True)]
    for i in range(n_prompt, len(toks)):
        out.append(m.forward(toks[i:i + 1], i))
    return np.concatenate(out)


@pytest.mark.gemma3
def test_gemma3_real_prompts_in_half_precision(gemma3_gguf):
    """Gemma's activations are the usual float16 overflow risk: the real Gemma 3 270M's prompt
    logits with CUDA's default float16 prompt products (here on torch's CPU device, the same
    float16 rounding of inputs and outputs) stay finite and close to float32."""
    import ggq.torch_backend.ops as tops

    m = ggq.load(gemma3_gguf, n_ctx=96, n_gpu_layers=99, device="cpu")
    toks = np.array(m.tokenizer.encode("The history of the printing press begins in the fifteenth century, "
                                       "when movable type changed how books were made and read.")[:64])
    ops = m.llama.head_ops
    ref = m.llama.forward(toks, 0, all_logits=True)
    ops.prompt_dtype = tops.PROMPT_DTYPES["float16"]
    half = m.llama.forward(toks, 0, all_logits=True)
    assert np.isfinite(half).all()
    assert _err(half, ref) < 1e-2
    assert (half.argmax(-1) == ref.argmax(-1)).mean() >= 0.9


@pytest.mark.parametrize("which", ["llama", "gemma3"])
def test_static_steps_match(tiny_files, tmp_path, which):
    """The static one-token code (what CUDA graphs capture: position as a tensor, attention over
    the whole cache under a mask) on torch's CPU device, against the Numba engine; Gemma's
    sliding window included (decode steps past it)."""
    from ggq.torch_backend.ops import TorchOps

    if which == "llama":
        path, vocab = tiny_files("q4_k_m"), 300
    else:
        path, vocab = make_tiny_gemma3(tmp_path / "g.ggq", qtype="Q8_0"), GEMMA_VOCAB
    toks = np.random.default_rng(5).integers(3, vocab, size=30)
    ref_model = ggq.load(path, n_ctx=40)
    ref_model.llama.set_exact(True)
    ref = _run(ref_model, toks, 12)
    for ngl in (2, 99):
        m = _offloaded(path, ngl, TorchOps("cpu", static=True))
        assert _err(_run_model(m, toks, 12), ref) < 1e-4, ngl


TRITON_CHECK = r"""
import numpy as np, torch, torch.nn.functional as F
import ggq
from ggq.quants import get_type
from ggq.torch_backend import Offload, triton_fused, triton_mv
from ggq.torch_backend.dequant import dequantize_rows
from ggq.torch_backend.ops import TorchOps, _rotate
from ggq.format import GGQReader
from ggq.models import build_model
import sys
rng = np.random.default_rng(0)
t = lambda *shape: torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
rel = lambda a, b: float((a - b).abs().max() / b.abs().max())
worst = 0.0
for name in triton_mv.KINDS:
    # 3 super-blocks, 24 small blocks; rows not a multiple of ROWS; for the 32-element types a
    # width whose last iteration has a partial group of blocks (SmolLM2's rows are 576)
    for rows, cols in ((5, 768),) + (((3, 800),) if get_type(name).block_size == 32 else ()):
        raw = torch.from_numpy(get_type(name).quantize(rng.standard_normal((rows, cols)).astype(np.float32)))
        x = t(1, cols)
        ref = (dequantize_rows(name, raw, cols).double() @ x.double().T).T
        got = triton_mv.matvec(name, raw, x, cols)
        assert got.shape == (1, rows) and got.dtype == torch.float32, name
        err = float((got - ref).abs().max() / ref.abs().max())
        assert err < 1e-5, (name, err)
        worst = max(worst, err)
        deq = triton_mv.dequantize(name, raw, cols, torch.float32)
        assert rel(deq, dequantize_rows(name, raw, cols)) < 1e-6, name
# the fused kernels against the torch code they replace
ops = TorchOps("cpu")
x, y, w, w2 = t(3, 96), t(3, 96), t(96), t(96)
assert rel(triton_fused.rmsnorm(x, w, 1e-6), ops.rmsnorm(x, w, 1e-6)) < 1e-5
for yn in (None, w2):
    xa, xb = x.clone(), x.clone()
    assert rel(triton_fused.add_rmsnorm(xa, y, w, 1e-6, yn), ops.add_rmsnorm(xb, y, w, 1e-6, yn)) < 1e-5
    assert rel(xa, xb) < 1e-6
g, u = t(2, 300) * 3, t(2, 300)
assert rel(triton_fused.act_mul(g, u, False), ops.silu_mul(g, u)) < 1e-5
assert rel(triton_fused.act_mul(g, u, True), ops.gelu_tanh_mul(g, u)) < 1e-5
nh, nkv, hd = 6, 2, 32
# a short cache (one program per head) and a long one (its keys split in parallel runs)
for n_ctx, p, window in ((80, 0, 0), (80, 45, 0), (80, 70, 0), (80, 70, 9), (80, 5, 9), (700, 0, 0), (700, 650, 0),
                         (700, 650, 300), (700, 690, 1000)):
    cos, sin = t(n_ctx, hd // 2), t(n_ctx, hd // 2)
    kc, vc = t(nkv, n_ctx, hd), t(nkv, n_ctx, hd)
    kc2, vc2 = kc.clone(), vc.clone()
    q, k, v = t(1, nh * hd), t(1, nkv * hd), t(1, nkv * hd)
    pos = torch.tensor([p])
    qr = triton_fused.rope_store(q, k, v, pos, cos, sin, kc, vc, nh, nkv, hd)
    o = triton_fused.attend_one(qr, kc, vc, pos, 0.3, window, nh)
    c, s = cos[p:p + 1], sin[p:p + 1]
    qref = _rotate(q.reshape(1, nh, hd), c, s)
    kc2[:, p] = _rotate(k.reshape(1, nkv, hd), c, s)[0]
    vc2[:, p] = v.reshape(nkv, hd)
    assert rel(qr, qref.reshape(1, -1)) < 1e-6 and rel(kc, kc2) < 1e-6 and rel(vc, vc2) < 1e-6
    lo = max(0, p - window + 1) if window else 0
    keys = kc2[:, lo:p + 1].repeat_interleave(nh // nkv, 0)
    vals = vc2[:, lo:p + 1].repeat_interleave(nh // nkv, 0)
    oref = F.scaled_dot_product_attention(qref.transpose(0, 1), keys, vals, scale=0.3).transpose(0, 1)
    assert rel(o, oref.reshape(1, -1)) < 1e-5, (p, window)
def run(m, toks, n_prompt):
    out = [m.forward(toks[:n_prompt], 0, all_logits=True)]
    out += [m.forward(toks[i:i + 1], i) for i in range(n_prompt, len(toks))]
    return np.concatenate(out)
for path in sys.argv[1:]:
    ref = build_model(GGQReader(path), n_ctx=24); ref.set_exact(True)
    toks = np.random.default_rng(1).integers(3, ref.vocab_size, size=11)
    ops = TorchOps("cpu", static=True, triton=triton_mv, fused=triton_fused, prompt_dtype="float32")
    m = build_model(GGQReader(path), n_ctx=24, offload=Offload(99, ops))
    m.set_exact(True)
    R, G = run(ref, toks, 8), run(m, toks, 8)  # decode steps past the Gemma window (6 positions)
    assert float(np.abs(G - R).max() / np.abs(R).max()) < 1e-4, path
print("ok", worst)
"""


def test_triton_kernels_in_the_interpreter(tiny_files, tmp_path):
    """The Triton kernels (CUDA's decode products, prompt tile decode, fused norms, activations,
    rope and one-token attention) run by Triton's interpreter on CPU tensors: each against the
    torch code it replaces, and inside whole models' prompts and decode steps (a llama; a Gemma 3
    past its sliding window)."""
    needed("triton")
    import os
    import subprocess
    import sys

    script = tmp_path / "triton_check.py"
    script.write_text(TRITON_CHECK)
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])  # ggq importable without an install
    env = {**os.environ, "TRITON_INTERPRET": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    gemma = make_tiny_gemma3(tmp_path / "g.ggq", qtype="Q8_0")
    r = subprocess.run([sys.executable, str(script), str(tiny_files("q4_k_m")), str(gemma)], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stderr[-3000:]


@needs_cuda
def test_cuda_graphs_replay_the_same_steps(tiny_files):
    """Static steps replayed from a CUDA graph against the same steps run op by op, and against
    torch's CPU device."""
    from ggq.torch_backend.ops import TorchOps

    path = tiny_files("q4_k_m")
    toks = np.random.default_rng(6).integers(3, 300, size=30)
    graphs = _offloaded(path, 99, TorchOps("cuda", prompt_dtype="float32"))
    assert graphs.segments[0][0].graphs and graphs.segments[0][0].triton is not None
    eager = _offloaded(path, 99, TorchOps("cuda", graphs=False, prompt_dtype="float32"))
    cpu = _offloaded(path, 99, TorchOps("cpu"))
    a, b, c = (_run_model(m, toks, 10) for m in (graphs, eager, cpu))
    assert _err(a, b) < 1e-5 and _err(a, c) < 1e-3


@pytest.mark.parametrize("dtype, tol", [("float16", 1e-2), ("bfloat16", 5e-2)])
def test_prompt_matmuls_in_half_precision(tiny_files, dtype, tol):
    """Batches multiplied in float16 / bfloat16 (CUDA's default is float16): within that
    precision of the exact engine; float32 stays exact; an unknown dtype is refused."""
    from ggq.torch_backend.ops import TorchOps

    path = tiny_files("q4_k_m")
    toks = np.random.default_rng(7).integers(3, 300, size=24)
    ref_model = ggq.load(path, n_ctx=32)
    ref_model.llama.set_exact(True)
    ref = _run(ref_model, toks, 16)
    half = _offloaded(path, 99, TorchOps("cpu", prompt_dtype=dtype))
    half.set_exact(False)  # every matrix is on torch: exact would only mean float32 prompts
    err = _err(_run_model(half, toks, 16), ref)
    assert 1e-5 < err < tol  # above float32 rounding: the half-precision path did run
    # exact (ggq run --exact) multiplies prompts in float32 whatever the backend's prompt_dtype
    for m in (_offloaded(path, 99, TorchOps("cpu", prompt_dtype="float32")),
              _offloaded(path, 99, TorchOps("cpu", prompt_dtype=dtype))):
        assert _err(_run_model(m, toks, 16), ref) < 1e-4
    with pytest.raises(ValueError, match="prompt_dtype"):
        TorchOps("cpu", prompt_dtype="float8")


@needs_cuda
@pytest.mark.parametrize("name", sorted(DEQUANT))  # every quantized type has a Triton kind
def test_triton_matvec_on_cuda(name):
    """Each type's Triton kernel on the GPU against float64 products of the exact dequantized
    rows; shapes with a partial last program and many tiles per row."""
    from ggq.torch_backend import triton_mv

    assert set(triton_mv.KINDS) == set(DEQUANT)
    rng = np.random.default_rng(8)
    shapes = ((5, 768), (1001, 2048), (64, 8192)) + (((7, 800), (33, 576)) if get_type(name).block_size == 32 else ())
    for rows, cols in shapes:
        raw = torch.from_numpy(get_type(name).quantize(rng.standard_normal((rows, cols)).astype(np.float32))).cuda()
        x = torch.from_numpy(rng.standard_normal((1, cols)).astype(np.float32)).cuda()
        ref = (dequantize_rows(name, raw, cols).double() @ x.double().T).T
        y = triton_mv.matvec(name, raw, x, cols)
        torch.cuda.synchronize()
        assert y.shape == (1, rows) and torch.isfinite(y).all()
        assert float((y - ref).abs().max() / ref.abs().max()) < 1e-5, (name, rows, cols)


# The CUDA tests take torch's CPU device in float32 as their reference: the tests above hold it
# to the Numba engine on every machine, and the GPU machine is spared compiling the engine.

@needs_cuda
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_cuda_offload_every_type(tiny_files, preset):
    """Every quant type on the GPU (Triton decode steps replayed from CUDA graphs, tile prompts)
    against torch's CPU device: float32 prompts to float32 rounding; the default float16 prompts
    within half precision."""
    from ggq.torch_backend.ops import TorchOps

    path = tiny_files(preset)
    toks = np.random.default_rng(9).integers(3, 300, size=28)
    ref = _run_model(_offloaded(path, 99, TorchOps("cpu"), n_ctx=32), toks, 20)
    exact = _offloaded(path, 99, TorchOps("cuda", prompt_dtype="float32"), n_ctx=32)
    assert exact.segments[0][0].graphs and exact.segments[0][0].triton is not None
    assert _err(_run_model(exact, toks, 20), ref) < 1e-4
    default = ggq.load(path, n_ctx=32, n_gpu_layers=99, device="cuda")
    assert _err(_run(default, toks, 20), ref) < 1e-2


@needs_cuda
def test_cuda_gemma3_graphs_across_the_window(tmp_path):
    from ggq.torch_backend.ops import TorchOps

    path = make_tiny_gemma3(tmp_path / "g.ggq", qtype="Q8_0")
    toks = np.random.default_rng(10).integers(3, GEMMA_VOCAB, size=30)  # past the 6-position window
    ref = _run_model(_offloaded(path, 99, TorchOps("cpu")), toks, 12)
    for ngl in (2, 99):
        m = _offloaded(path, ngl, TorchOps("cuda", prompt_dtype="float32"))
        assert _err(_run_model(m, toks, 12), ref) < 1e-4, ngl


@needs_cuda
def test_cuda_memory_is_the_quantized_bytes(tiny_files):
    """The weights on the GPU are the file's bytes (no float copy): allocated memory after load is
    the quantized matrices, the norms and the KV cache, and a prompt's tiles are freed after it."""
    path = tiny_files("q4_k_m")
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    m = ggq.load(path, n_ctx=32, n_gpu_layers=99, device="cuda")
    torch.cuda.synchronize()
    loaded = torch.cuda.memory_allocated() - before
    mats = [x for x in m.llama.matrices() if hasattr(x, "data")]
    quantized = sum(x.data.numel() for x in mats)
    assert quantized == sum(x.raw.nbytes for x in mats)
    floats = sum(x.rows * x.cols * 4 for x in mats)
    assert quantized <= loaded < quantized + floats / 4  # far from a float copy of the matrices
    m.llama.forward(np.arange(3, 19), 0)
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() - before < loaded + floats / 4


# ---------------------------------------------------------------------------------------------
# -ngl / --device

def test_resolve_offload_values():
    assert resolve_offload(0) is None
    assert resolve_offload(0, "cpu") is None
    off = resolve_offload(5, "cpu")
    assert off.n_layers == 5 and str(off.ops.device) == "cpu"
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(UsageError, match="n-gpu-layers"):
            resolve_offload(bad)
    with pytest.raises(UsageError, match="unknown device"):
        resolve_offload(1, "tpu")


@pytest.mark.skipif(CUDA, reason="checks the no-GPU fallback")
def test_no_cuda_falls_back_with_one_line(tiny_files):
    lines = []
    assert resolve_offload(3, None, log=lines.append) is None
    assert resolve_offload(3, "cuda:1", log=lines.append) is None
    assert lines == [NO_CUDA, "no CUDA device cuda:1; running on the CPU"]
    m = ggq.load(tiny_files("q8_0"), n_ctx=16, n_gpu_layers=99, log=lines.append)
    assert m.llama.devices == ["cpu"] and lines[-1] == NO_CUDA


def test_without_torch(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    lines = []
    assert resolve_offload(2, None, log=lines.append) is None
    assert lines[0].startswith(NO_CUDA) and "torch is not installed" in lines[0]
    with pytest.raises(UsageError, match="torch is not installed"):
        resolve_offload(2, "cpu")


# ---------------------------------------------------------------------------------------------
# the commands

def test_cli_run_and_bench_with_ngl(tiny_files, capsys):
    from ggq.cli import main

    path = str(tiny_files("q8_0"))
    args = ["run", path, "-p", "hello world", "-n", "6", "--temp", "0", "--exact"]
    assert main(args) == 0
    cpu = capsys.readouterr().out
    assert main(args + ["-ngl", "99", "--device", "cpu"]) == 0
    assert capsys.readouterr().out == cpu
    assert main(["bench", path, "-p", "8", "-n", "2", "-r", "1", "--n-gpu-layers", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "numba+torch:cpu" in out and "2/3 layers offloaded" in out and "quantized weights" in out
    assert main(["run", path, "-p", "x", "-n", "1", "-ngl", "-1"]) != 0
    assert "n-gpu-layers" in capsys.readouterr().err.lower()


@needs_cuda
def test_cli_on_cuda(tiny_files, capsys):
    """run and bench with -ngl on the GPU (the default device): bench states the GPU memory and
    the prompt precision; run writes text."""
    from ggq.cli import main

    path = str(tiny_files("q8_0"))
    assert main(["bench", path, "-p", "8", "-n", "4", "-r", "1", "-ngl", "99"]) == 0
    out = capsys.readouterr().out
    assert "GPU memory (cuda" in out and "prompt matmuls in float16" in out and "3/3 layers offloaded" in out
    args = ["run", path, "-p", "hello world", "-n", "6", "--temp", "0", "-ngl", "99"]
    assert main(args) == 0
    assert capsys.readouterr().out.strip()


@pytest.mark.skipif(CUDA, reason="checks the no-GPU fallback")
def test_cli_ngl_without_cuda_says_so(tiny_files, capsys):
    from ggq.cli import main

    assert main(["run", str(tiny_files("q8_0")), "-p", "hello", "-n", "2", "-ngl", "99"]) == 0
    err = capsys.readouterr().err
    assert NO_CUDA in err and "Traceback" not in err
