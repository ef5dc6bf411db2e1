"""Numba's disk cache keys a kernel on its own file; ggq.jit_cache.guard clears the cached
kernels of modules whose dependencies (other files they inline) changed."""
import importlib.util
import sys
from pathlib import Path

from ggq.jit_cache import guard

MOD = '''
from numba import njit

@njit(cache=True)
def twice(x):
    return 2 * x
'''


def _load(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = mod
    spec.loader.exec_module(mod)
    return mod


def test_guard_clears_cached_kernels_when_a_dependency_changes(tmp_path):
    (tmp_path / "jitmod_guard.py").write_text(MOD)
    dep = tmp_path / "helpers.py"
    dep.write_text("A = 1\n")
    mod = _load(tmp_path / "jitmod_guard.py")
    assert mod.twice(3) == 6
    where = Path(mod.twice._cache._cache_path)  # __pycache__ here, or under NUMBA_CACHE_DIR if set
    cached = lambda: sorted(p.name for p in where.rglob("jitmod_guard.*.nb*"))  # noqa: E731
    assert cached()                                   # Numba saved the kernel
    files = [tmp_path / "jitmod_guard.py", dep]
    guard([mod], files, "t")                          # first stamp: unknown history, cleared
    assert cached() == []
    mod2 = _load(tmp_path / "jitmod_guard.py")
    assert mod2.twice(4) == 8
    saved = cached()
    assert saved
    assert guard([mod2], files, "t") == [] and cached() == saved   # same sources: kept
    dep.write_text("A = 2\n")                                       # a dependency changed
    removed = guard([mod2], files, "t")
    assert sorted(p.name for p in removed) == saved and cached() == []


def test_ggq_kernels_are_stamped():
    import ggq.kernels  # noqa: F401
    from ggq.jit_cache import _cache_dirs
    from ggq.kernels import legacy

    dirs = _cache_dirs(legacy)
    assert dirs
    from pathlib import Path
    assert all((Path(d) / "ggq-kernels.stamp").exists() for d in dirs)


_STEP = '''
import sys, numpy as np
from ggq.models import base
rng = np.random.default_rng(0)
H, KV, D, T0 = 4, 2, 64, 40
cos, sin = (rng.standard_normal((1, D // 2)).astype(np.float32) for _ in range(2))
q = rng.standard_normal((1, H * D)).astype(np.float32)
k, v = (rng.standard_normal((1, KV * D)).astype(np.float32) for _ in range(2))
ck, cv = (rng.standard_normal((KV, 64, D)).astype(np.float32) for _ in range(2))
if sys.argv[1] == "helpers":  # what a prompt-only command leaves in the cache
    base.rope_inplace(q.copy(), cos, sin, H, D)
    base.store_kv(ck.copy(), cv.copy(), k, v, T0, KV, D)
else:
    fn = base.rope_store_attend_par if sys.argv[1] == "par" else base.rope_store_attend
    np.save(sys.argv[2], fn(q, k, v, cos, sin, ck, cv, T0, H, KV, D, np.float32(0.125)))
'''


def test_fused_decode_step_is_the_same_whatever_filled_the_cache(tmp_path):
    """rope_store_attend (fastmath) gives the same bits whether its helpers were compiled in
    the same process or loaded from the disk cache by an earlier command (they are inlined);
    its parallel twin the same bits compiled here as loaded from the cache."""
    import os
    import subprocess

    import numpy as np

    script = tmp_path / "step.py"
    script.write_text(_STEP)
    root = Path(__file__).resolve().parents[1]

    def run(cache, *args):
        env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / cache), "NUMBA_NUM_THREADS": "1",
               "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        subprocess.run([sys.executable, str(script), *args], env=env, check=True, cwd=tmp_path)

    run("a", "helpers")
    run("a", "step", str(tmp_path / "a.npy"))   # helpers from the cache
    run("b", "step", str(tmp_path / "b.npy"))   # everything compiled here
    assert np.array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))
    run("c", "par", str(tmp_path / "c1.npy"))   # compiled here
    run("c", "par", str(tmp_path / "c2.npy"))   # loaded from the cache
    assert np.array_equal(np.load(tmp_path / "c1.npy"), np.load(tmp_path / "c2.npy"))
