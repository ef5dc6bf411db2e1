"""Start-up: what `ggq` imports before it needs it, the cold-cache helper process, and kernels
that give the same results compiled or loaded from Numba's disk cache."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _py(code, tmp_path, **env):
    """Run code in a fresh interpreter with its own empty Numba cache; returns stdout."""
    e = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"), **env)
    r = subprocess.run([sys.executable, "-c", code], env=e, cwd=str(ROOT), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_help_imports_neither_numba_nor_numpy(tmp_path):
    out = _py("import sys\n"
              "from ggq.cli import main\n"
              "assert main(['--help']) == 0\n"
              "print(sorted(m for m in ('numba', 'numpy', 'scipy') if m in sys.modules))\n", tmp_path)
    assert out.strip().splitlines()[-1] == "[]"


def test_numba_without_scipy_masks_only_inside():
    from ggq.jit_cache import numba_without_scipy

    had = "scipy" in sys.modules
    with numba_without_scipy():
        if not had:
            with pytest.raises(ImportError):
                import scipy  # noqa: F401
    assert sys.modules.get("scipy", "absent") is not None  # never left masked


def test_cold_cache_helper_compiles_matvecs_for_this_process(tmp_path):
    """uncached_matvecs sees an empty cache; a Precompiler helper fills it; this process then
    loads the kernel from the disk cache instead of compiling it."""
    out = _py("from ggq.kernels import MATVEC, matvec_args, uncached_matvecs\n"
              "from ggq.jit_cache import Precompiler\n"
              "print(uncached_matvecs(['Q8_0', 'Q8_0']))\n"
              "h = Precompiler(['mv:Q8_0'])\n"
              "print(h.wait(300))\n"
              "print(uncached_matvecs(['Q8_0']))\n"
              "d = MATVEC['Q8_0']\n"
              "d(*matvec_args('Q8_0'))\n"
              "print(sum(d._cache_hits.values()), sum(d._cache_misses.values()))\n", tmp_path)
    assert out.split("\n")[:4] == ["['Q8_0']", "True", "[]", "1 0"]


def test_parallel_matvec_same_result_compiled_or_loaded(tmp_path):
    """A kernel compiled in this process and the same kernel loaded from the disk cache by the
    next one give bit-identical results (with fastmath they differed in the last bits: the
    parallel loop body is optimized twice, once on its own and once linked into the kernel).
    Q4_K has the min terms (float sums of the activations)."""
    code = ("import sys, numpy as np\n"
            "from ggq.kernels import MATVEC\n"
            "d = sys.argv[1]\n"
            "w = np.load(d + '/w.npy'); w.flags.writeable = False\n"
            "y = np.empty(w.shape[0], np.float32)\n"
            "MATVEC['Q4_K'](w, np.load(d + '/x.npy'), y)\n"
            "np.save(d + '/y%d.npy' % sum(MATVEC['Q4_K']._cache_hits.values()), y)\n")
    rng = np.random.default_rng(1)
    cols, rows = 1536, 64
    w = np.zeros((rows, cols // 256 * 144), np.uint8)
    w[:] = rng.integers(0, 256, w.shape, dtype=np.uint8)
    w.reshape(rows, -1, 144)[:, :, 1] &= 0x3B  # f16 d, dmin: small finite values
    w.reshape(rows, -1, 144)[:, :, 3] &= 0x3B
    np.save(tmp_path / "w.npy", w)
    np.save(tmp_path / "x.npy", (rng.standard_normal(cols) * 3).astype(np.float32))
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    for _ in range(2):
        subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, cwd=str(ROOT), check=True)
    compiled, loaded = np.load(tmp_path / "y0.npy"), np.load(tmp_path / "y1.npy")
    assert np.isfinite(compiled).all()
    np.testing.assert_array_equal(compiled, loaded)


def test_fast_cache_loads_run_cached_kernels_and_still_compile_new_ones(tmp_path):
    """numba_ready(fast_cache_loads=True) (the CLI's): a cached kernel loads and gives the same
    result without Numba's target refresh; a kernel that is not cached still compiles."""
    code = ("import sys, numpy as np\n"
            "from ggq.jit_cache import numba_ready, numba_without_scipy\n"
            "with numba_without_scipy():\n"
            "    from ggq.kernels import MATVEC, matvec_args\n"
            "    if sys.argv[1] == 'fast':\n"
            "        numba_ready(fast_cache_loads=True)\n"
            "w, x, y = matvec_args('Q4_0')\n"
            "w = np.arange(w.size, dtype=np.uint8).reshape(w.shape) % 7; w.flags.writeable = False\n"
            "x = np.linspace(-1, 1, x.size).astype(np.float32)\n"
            "MATVEC['Q4_0'](w, x, y)\n"
            "d = MATVEC['Q4_0']\n"
            "from numba import njit\n"
            "print(sum(d._cache_hits.values()), njit(lambda a: a.sum() * 2)(np.ones(3)), y.tolist())\n")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"))

    def run(mode):
        r = subprocess.run([sys.executable, "-c", code, mode], env=env, cwd=str(ROOT), capture_output=True,
                           text=True)
        assert r.returncode == 0, r.stderr
        return r.stdout.split(" ", 2)

    hits0, s0, y0 = run("plain")  # compiles and saves
    hits1, s1, y1 = run("fast")   # loads
    assert (hits0, hits1, s0, s1) == ("0", "1", "6.0", "6.0") and y0 == y1
