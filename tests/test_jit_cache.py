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
