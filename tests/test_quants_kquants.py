"""K-quants (Q2_K..Q6_K): bytes vs gguf-py, quality vs absmax, imatrix, errors.

References are independent of our code: gguf-py's numpy dequantizers, a plain-numpy absmax
quantizer written here, and llama.cpp's own ggml-quants.c compiled with the system C compiler
(from LLAMACPP_SRC, else from the llama-cpp-python sdist fetched from PyPI once; both the
sources and the library are cached under ggq's cache dir; skipped only without a compiler or
a network).
"""
from __future__ import annotations

import ctypes
import glob
import os
import shutil
import subprocess

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

from ggq.errors import QuantError
from ggq.quants import get_type
from ggq.quants import kquants

NAMES = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
LAYOUT = {  # name: (ggml id, bytes per 256, byte offsets of fp16 fields)
    "Q2_K": (10, 84, (80, 82)),
    "Q3_K": (11, 110, (108,)),
    "Q4_K": (12, 144, (0, 2)),
    "Q5_K": (13, 176, (0, 2)),
    "Q6_K": (14, 210, (208,)),
}
# Round-trip relative RMSE bounds, rmse(x - deq(q(x))) / rms(x), 64 x 1024 samples, seed 0.
# Measured: gauss 0.296 0.152 0.072 0.036 0.018; t(3) 0.354 0.191 0.093 0.047 0.026.
BOUND_GAUSS = {"Q2_K": 0.33, "Q3_K": 0.17, "Q4_K": 0.080, "Q5_K": 0.041, "Q6_K": 0.020}
BOUND_T3 = {"Q2_K": 0.40, "Q3_K": 0.22, "Q4_K": 0.105, "Q5_K": 0.054, "Q6_K": 0.029}
# Sub-block size, bits, asymmetric (has mins): for the absmax baseline.
BASELINE = {"Q2_K": (16, 2, True), "Q3_K": (16, 3, False), "Q4_K": (32, 4, True),
            "Q5_K": (32, 5, True), "Q6_K": (16, 6, False)}


def _bits_equal(a, b):
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def _random_blocks(name, rows, nblocks, rng):
    """Random bytes with every fp16 field replaced by a random finite fp16 (any exponent)."""
    _, size, f16 = LAYOUT[name]
    data = rng.integers(0, 256, (rows, nblocks, size), dtype=np.uint8)
    for off in f16:
        h = rng.integers(0, 1 << 16, (rows, nblocks), dtype=np.uint16)
        h[(h & 0x7C00) == 0x7C00] ^= 0x4000  # inf/nan exponent -> finite
        data[:, :, off:off + 2] = h.view(np.uint8).reshape(rows, nblocks, 2)
    return data.reshape(rows, nblocks * size)


def _data(kind, shape=(64, 1024), seed=0):
    rng = np.random.default_rng(seed)
    if kind == "gauss":
        return rng.standard_normal(shape).astype(np.float32)
    return rng.standard_t(3, shape).astype(np.float32)


def _rel_rmse(x, y):
    x = x.astype(np.float64)
    return float(np.sqrt(np.mean((y - x) ** 2)) / np.sqrt(np.mean(x ** 2)))


def _absmax(x, sub, bits, asym):
    """Plain round-to-nearest with float (unquantized) per-sub-block scales: min/max for the
    types with mins, symmetric absmax otherwise."""
    xb = x.reshape(-1, sub).astype(np.float64)
    if asym:
        mn = np.minimum(xb.min(1, keepdims=True), 0.0)
        d = (xb.max(1, keepdims=True) - mn) / (2 ** bits - 1)
        d[d == 0] = 1.0
        y = np.clip(np.round((xb - mn) / d), 0, 2 ** bits - 1) * d + mn
    else:
        d = np.abs(xb).max(1, keepdims=True) / (2 ** (bits - 1) - 1)
        d[d == 0] = 1.0
        y = np.clip(np.round(xb / d), -2 ** (bits - 1), 2 ** (bits - 1) - 1) * d
    return y.reshape(x.shape)


# --------------------------------------------------------------------------- registry

@pytest.mark.parametrize("name", NAMES)
def test_registry(name):
    qt = get_type(name)
    gid, size, _ = LAYOUT[name]
    assert get_type(gid) is qt and qt.ggml_id == gid
    assert qt.block_size == 256 and qt.type_size == size
    assert qt.row_bytes(1536) == 6 * size
    # GGML agrees on the block geometry
    from gguf.constants import GGML_QUANT_SIZES
    assert GGML_QUANT_SIZES[GGMLQuantizationType(gid)] == (256, size)


# --------------------------------------------------------------------------- dequantize

@pytest.mark.parametrize("name", NAMES)
def test_dequantize_random_blocks_bit_exact(name):
    rng = np.random.default_rng(1234)
    qt = get_type(name)
    data = _random_blocks(name, rows=8, nblocks=16, rng=rng)
    ours = qt.dequantize(data, 16 * 256)
    ref = gguf_dequantize(data, GGMLQuantizationType(qt.ggml_id)).reshape(8, -1)
    assert np.isfinite(ref).all()
    assert _bits_equal(ours, ref)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", ["gauss", "t3"])
def test_dequantize_own_output_bit_exact(name, kind):
    qt = get_type(name)
    x = _data(kind, (16, 512))
    q = qt.quantize(x)
    assert q.dtype == np.uint8 and q.shape == (16, qt.row_bytes(512))
    ref = gguf_dequantize(q, GGMLQuantizationType(qt.ggml_id)).reshape(16, -1)
    assert _bits_equal(qt.dequantize(q, 512), ref)
    qi = qt.quantize(x, imatrix=np.linspace(0.1, 3, 512, dtype=np.float32))
    ref = gguf_dequantize(qi, GGMLQuantizationType(qt.ggml_id)).reshape(16, -1)
    assert _bits_equal(qt.dequantize(qi, 512), ref)


# --------------------------------------------------------------------------- quality

@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind,bounds", [("gauss", BOUND_GAUSS), ("t3", BOUND_T3)])
def test_roundtrip_error_bound_and_beats_absmax(name, kind, bounds):
    qt = get_type(name)
    x = _data(kind)
    err = _rel_rmse(x, qt.dequantize(qt.quantize(x), x.shape[1]))
    assert err < bounds[name], f"{name} {kind}: rel RMSE {err:.4f} >= bound {bounds[name]}"
    base = _rel_rmse(x, _absmax(x, *BASELINE[name]))
    assert err < base, f"{name} {kind}: {err:.4f} not below absmax baseline {base:.4f}"


@pytest.mark.parametrize("kind", ["gauss", "t3"])
def test_quality_monotonic_in_bits(kind):
    x = _data(kind, (32, 1024))
    errs = [_rel_rmse(x, get_type(n).dequantize(get_type(n).quantize(x), 1024)) for n in NAMES]
    assert all(a > b for a, b in zip(errs, errs[1:])), errs


@pytest.mark.parametrize("name", NAMES)
def test_imatrix_lowers_weighted_error(name):
    # A few columns carry almost all the importance; their error should drop.
    rng = np.random.default_rng(7)
    cols = 1024
    x = rng.standard_normal((32, cols)).astype(np.float32)
    imp = np.full(cols, 0.01, np.float32)
    imp[rng.choice(cols, cols // 8, replace=False)] = 100.0
    qt = get_type(name)

    def werr(q):
        d = qt.dequantize(q, cols).astype(np.float64) - x
        return float(np.sum(imp * d * d))

    plain = werr(qt.quantize(x))
    weighted = werr(qt.quantize(x, imatrix=imp))
    assert weighted < 0.9 * plain, (plain, weighted)


def test_scaled_inputs_and_zero_rows():
    qt = get_type("Q4_K")
    x = _data("gauss", (4, 512))
    x[1] = 0.0
    x[2] *= 1e-4
    x[3, :256] = 3.0  # constant sub-blocks
    y = qt.dequantize(qt.quantize(x), 512)
    assert np.all(y[1] == 0)
    assert _rel_rmse(x[2], y[2]) < 0.1
    assert np.allclose(y[3, :256], 3.0, rtol=2e-3)
    for name in NAMES:
        q = get_type(name)
        assert np.all(q.dequantize(q.quantize(np.zeros((2, 256), np.float32)), 256) == 0)


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("name", NAMES)
def test_bad_input_raises_quant_error(name):
    qt = get_type(name)
    with pytest.raises(QuantError, match="multiple of 256"):
        qt.quantize(np.zeros((2, 576), np.float32))
    with pytest.raises(QuantError):
        qt.dequantize(np.zeros((2, 100), np.uint8), 576)
    with pytest.raises(QuantError):
        qt.dequantize(np.zeros((2, qt.type_size + 1), np.uint8), 256)
    with pytest.raises(QuantError):
        qt.quantize(np.zeros((2, 256), np.float32), imatrix=np.ones(128, np.float32))
    with pytest.raises(QuantError):
        qt.quantize(np.zeros((2, 256), np.float32), imatrix=-np.ones(256, np.float32))
    x = np.zeros((2, 256), np.float32)
    x[1, 3] = np.nan
    with pytest.raises(QuantError):
        qt.quantize(x)


# --------------------------------------------------------------------------- llama.cpp itself

LLAMACPP_VERSION = "0.3.36"  # the llama-cpp-python sdist whose vendored ggml-quants.c is the reference


def _unavailable(reason: str):
    """No network or no compiler: the C cross-check cannot run here; in CI, which has both,
    that is a failure, not a skip."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)
_GGML = "vendor/llama.cpp/ggml/"
_DOWNLOAD_TIMEOUT = 300  # seconds: pip download of the ~75 MB sdist (about 15 s on a normal link)
_COMPILE_TIMEOUT = 300


def _llamacpp_src():
    """A llama.cpp checkout named by LLAMACPP_SRC (or found under /opt/llamacpp), else None."""
    cands = [os.environ.get("LLAMACPP_SRC", "")] + sorted(glob.glob("/opt/llamacpp/*/vendor/llama.cpp"))
    for c in cands:
        if c and os.path.isfile(os.path.join(c, "ggml/src/ggml-quants.c")):
            return c
    return None


def _ref_cache_dir():
    from ggq.default_model import cache_dir

    d = cache_dir() / f"llamacpp-{LLAMACPP_VERSION}-quants"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _wanted(member: str) -> bool:
    """The files ggml-quants.c needs: itself, ggml/include/*.h, ggml/src/*.h, ggml/src/ggml-cpu/*.h."""
    if "/" not in member:
        return False
    rel = member.split("/", 1)[1]
    if not rel.startswith(_GGML):
        return False
    rel = rel[len(_GGML):]
    return rel == "src/ggml-quants.c" or (
        rel.endswith(".h") and os.path.dirname(rel) in ("include", "src", "src/ggml-cpu"))


def _fetch_llamacpp_src(cache) -> str:
    """ggml-quants.c and its headers of llama-cpp-python==LLAMACPP_VERSION, fetched once from
    PyPI with pip (sdist only, no dependencies) and unpacked into the cache; the ~75 MB sdist
    is deleted once the ~1 MB we need is out. Skips the calling test when pip cannot fetch it
    (no network)."""
    import sys
    import tarfile
    import tempfile

    root = cache / "src"
    done = root / "ggml" / "src" / "ggml-quants.c"
    if done.is_file():
        return str(root)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "-q", "--timeout", "60", "--retries", "2",
               f"llama-cpp-python=={LLAMACPP_VERSION}", "-d", tmp]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=_DOWNLOAD_TIMEOUT)
        except subprocess.TimeoutExpired:
            _unavailable(f"llama-cpp-python {LLAMACPP_VERSION} sdist: download took over "
                        f"{_DOWNLOAD_TIMEOUT} s (no usable network); set LLAMACPP_SRC to a llama.cpp checkout")
        sdists = glob.glob(os.path.join(tmp, "*.tar.gz"))
        if r.returncode or not sdists:
            last = (r.stderr.strip().splitlines() or ["no output"])[-1]
            _unavailable(f"cannot download the llama-cpp-python {LLAMACPP_VERSION} sdist from PyPI "
                        f"(no network?): {last[:200]}; set LLAMACPP_SRC to a llama.cpp checkout")
        staging = os.path.join(tmp, "src")
        with tarfile.open(sdists[0]) as tf:
            members = [m for m in tf.getmembers() if m.isfile() and _wanted(m.name)]
            for m in members:
                dest = os.path.join(staging, m.name.split("/", 1)[1][len("vendor/llama.cpp/"):])
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                with tf.extractfile(m) as fsrc, open(dest, "wb") as fdst:
                    shutil.copyfileobj(fsrc, fdst)
        if not os.path.isfile(os.path.join(staging, "ggml", "src", "ggml-quants.c")):
            pytest.fail(f"llama-cpp-python {LLAMACPP_VERSION} sdist holds no {_GGML}src/ggml-quants.c")
        if root.exists():
            shutil.rmtree(root)
        os.replace(staging, root)  # atomic: a half-unpacked tree never looks done
    return str(root)


_STUBS = r"""
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <stddef.h>
void ggml_abort(const char * f, int l, const char * fmt, ...) { fprintf(stderr, "%s:%d\n", f, l); abort(); }
const char * ggml_type_name(int t) { return "?"; }
size_t ggml_type_size(int t) { return 0; }
size_t ggml_row_size(int t, int64_t n) {
    switch (t) { case 10: return n/256*84; case 11: return n/256*110; case 12: return n/256*144;
                 case 13: return n/256*176; case 14: return n/256*210; }
    abort();
}
"""


@pytest.fixture(scope="module")
def ggml_ref():
    """llama.cpp's ggml-quants.c compiled into a shared library, cached in ggq's cache dir.
    Source: LLAMACPP_SRC if set, else the llama-cpp-python sdist fetched from PyPI once.
    Skipped only without a C compiler or without a network (and no cached build)."""
    import hashlib

    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        _unavailable("no C compiler (cc, gcc or clang) to build llama.cpp's ggml-quants.c")
    cache = _ref_cache_dir()
    src = _llamacpp_src() or _fetch_llamacpp_src(cache)
    g = os.path.join(src, "ggml")
    # -ffp-contract=off: no FMA fusion, i.e. plain IEEE float32 ops as in our port
    flags = ["-O2", "-ffp-contract=off", "-fPIC", "-shared"]
    key = hashlib.sha256()
    for part in (open(os.path.join(g, "src", "ggml-quants.c"), "rb").read(), _STUBS.encode(),
                 " ".join([cc] + flags).encode()):
        key.update(hashlib.sha256(part).digest())
    lib = cache / f"libkq-{key.hexdigest()[:16]}.so"
    if not lib.is_file():
        (cache / "stubs.c").write_text(_STUBS)
        tmp = cache / f"{lib.name}.tmp-{os.getpid()}"
        try:
            r = subprocess.run([cc, *flags, f"-I{g}/include", f"-I{g}/src", f"-I{g}/src/ggml-cpu",
                                f"{g}/src/ggml-quants.c", str(cache / "stubs.c"), "-o", str(tmp), "-lm"],
                               capture_output=True, text=True, timeout=_COMPILE_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"compiling ggml-quants.c took over {_COMPILE_TIMEOUT} s")
        if r.returncode:
            tmp.unlink(missing_ok=True)
            pytest.fail(f"could not build ggml-quants.c with {cc}: {r.stderr[-500:]}")
        os.replace(tmp, lib)
    return ctypes.CDLL(str(lib))


@pytest.mark.parametrize("name", NAMES)
def test_quantize_matches_llamacpp(ggml_ref, name):
    """Our quantizer reproduces llama.cpp's quantize_q*_K bytes, plain and with an imatrix."""
    qt = get_type(name)
    fn = getattr(ggml_ref, "quantize_" + name[:2].lower() + "_K")
    fn.restype = ctypes.c_size_t
    rng = np.random.default_rng(3)
    imp = (rng.random(512).astype(np.float32) ** 3) * 10
    xs = [_data("gauss", (16, 512), 5), _data("t3", (16, 512), 6),
          np.abs(_data("gauss", (4, 512), 8)), _data("gauss", (4, 512), 9) * np.float32(1e-3)]
    for x in xs:
        for w in (None, imp):
            ref = np.zeros((x.shape[0], qt.row_bytes(512)), np.uint8)
            fn(x.ctypes.data_as(ctypes.c_void_p), ref.ctypes.data_as(ctypes.c_void_p),
               ctypes.c_int64(x.shape[0]), ctypes.c_int64(512),
               None if w is None else w.ctypes.data_as(ctypes.c_void_p))
            assert np.array_equal(qt.quantize(x, imatrix=w), ref)


# --------------------------------------------------------------------------- spec examples

def test_spec_worked_examples():
    """spec/QUANTS-K.md section 7: the listed block bytes are what we produce, and the listed
    sha256 of the decoded block matches both our decoder and gguf-py's."""
    import hashlib
    import math
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "spec" / "QUANTS-K.md").read_text()
    x = np.array([math.sin(0.37 * i) * (1 + i / 128.0) for i in range(256)], dtype=np.float32)
    sections = re.split(r"^### 7\.\d (Q\d_K)\n", text, flags=re.M)[1:]
    assert [sections[k] for k in range(0, len(sections), 2)] == NAMES
    for name, body in zip(sections[0::2], sections[1::2]):
        qt = get_type(name)
        dump = re.search(r"```\n(.*?)```", body, re.S).group(1)
        listed = bytes(int(h, 16) for line in dump.strip().splitlines() for h in line.split(":")[1].split())
        ours = qt.quantize(x.reshape(1, -1))
        assert ours.tobytes() == listed, name
        sha = re.search(r"sha256 `([0-9a-f]{64})`", body).group(1)
        y = qt.dequantize(ours, 256)
        ref = gguf_dequantize(ours, GGMLQuantizationType(qt.ggml_id)).reshape(1, -1)
        assert hashlib.sha256(y.astype("<f4").tobytes()).hexdigest() == sha
        assert hashlib.sha256(ref.astype("<f4").tobytes()).hexdigest() == sha
