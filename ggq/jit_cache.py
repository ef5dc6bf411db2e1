"""Keep Numba's disk cache from serving stale kernels.

Numba keys a cached kernel on its own source file only (its documented limit: a change in a
callee defined in another file is not seen). ggq's kernels inline code from other files
(ggq/kernels/common.py's LLVM intrinsics into every matvec; models/base.py's norms into the
architectures' kernels), so an edit or an upgrade of such a file alone would leave old machine
code running: a quietly wrong result. guard() writes, next to the cached kernels of the given
modules, a stamp with a hash of the files they are built from, and deletes those kernels'
cache entries when the hash changes (they recompile once).

Start-up helpers (numba_without_scipy, numba_ready, Precompiler) live here too: see below."""
from __future__ import annotations

import hashlib
import os
import sys
from contextlib import contextmanager
from pathlib import Path


def _digest(files) -> str:
    h = hashlib.sha256()
    for f in sorted(str(f) for f in files):
        h.update(Path(f).name.encode() + b"\0")
        try:
            h.update(Path(f).read_bytes())
        except OSError:
            h.update(b"<unreadable>")
    return h.hexdigest()


def _cache_dirs(module) -> set[str]:
    """Folders where Numba caches the module's kernels (its locator decides: __pycache__,
    NUMBA_CACHE_DIR, or a user-wide folder when the package folder is read-only)."""
    out = set()
    for v in vars(module).values():
        py_func = getattr(v, "py_func", None)
        path = getattr(getattr(v, "_cache", None), "_cache_path", None)
        if isinstance(path, str) and py_func is not None and py_func.__module__ == module.__name__:
            out.add(path)
    return out


def guard(modules, depends_on, name: str) -> list[Path]:
    """Clear the cached kernels of `modules` unless their stamp `ggq-<name>.stamp` matches the
    hash of the files in `depends_on`. Returns the cache files deleted."""
    digest = _digest(depends_on)
    prefixes = tuple(m.__name__.rsplit(".", 1)[-1] + "." for m in modules)
    dirs = set().union(*(_cache_dirs(m) for m in modules)) if modules else set()
    removed = []
    for d in dirs:
        stamp = Path(d) / f"ggq-{name}.stamp"
        try:
            if stamp.read_text() == digest:
                continue
        except OSError:
            pass
        try:
            if Path(d).is_dir():
                for f in Path(d).iterdir():
                    if f.suffix in (".nbi", ".nbc") and f.name.startswith(prefixes):
                        f.unlink()
                        removed.append(f)
            Path(d).mkdir(parents=True, exist_ok=True)
            stamp.write_text(digest)
        except OSError:
            pass  # a cache folder we cannot write: Numba cannot have saved kernels there either
    return removed


# ---------------------------------------------------------------------------------------------
# start-up time

_SCIPY = ("scipy", "scipy.linalg", "scipy.linalg.cython_blas")


@contextmanager
def numba_without_scipy():
    """Numba imports SciPy when it starts (a version check) and when its CPU target first
    initialises (scipy.linalg, to learn whether np.dot may call BLAS): 0.1-0.3 s of a start-up
    whose kernels use neither. Inside this block SciPy reads as absent; afterwards it imports
    normally (np.dot and friends in a kernel compiled later still find BLAS). Only an
    application that owns its process should use this (the CLI): Numba keeps its
    `_HAVE_BLAS = False` for np.correlate/np.convolve's inner products (a loop, still correct).
    A SciPy already imported is left alone."""
    masked = [m for m in _SCIPY if m not in sys.modules]
    for m in masked:
        sys.modules[m] = None
    try:
        yield
    finally:
        for m in masked:
            if m in sys.modules and sys.modules[m] is None:
                del sys.modules[m]


def numba_ready(fast_cache_loads: bool = False) -> None:
    """Get Numba ready to run kernels, now rather than in the first kernel call (inside
    numba_without_scipy, for the imports).

    By default: initialise its CPU target (~0.2-0.4 s of imports of Numba's own typing and
    lowering implementations), which the first kernel call, compiled or loaded from the disk
    cache, does otherwise. fast_cache_loads=True (for an application that owns its process, the
    CLI): kernels loaded from the disk cache no longer wait for that: a cache hit needs only
    Numba's runtime (NRT) and the modules the cached code refers to; a kernel that has to
    compile still initialises the target first (Numba's compiler does it itself). Falls back
    to the default with a Numba whose cache internals differ."""
    import numba.np.arraymath  # noqa: F401  (cached kernels' environments import it; scipy-free here)
    from numba.core.compiler_lock import global_compiler_lock
    from numba.core.registry import cpu_target

    with global_compiler_lock:
        if fast_cache_loads and _fast_cache_loads():
            from numba.core.runtime import rtsys

            rtsys.initialize(cpu_target.target_context)
        else:
            cpu_target.target_context.refresh()


def _fast_cache_loads() -> bool:
    """Let Numba's disk cache load a kernel without refreshing the target context (what its
    Cache.load_overload does before every lookup; the first refresh costs 0.1-0.4 s). True when
    in place."""
    try:
        from numba.core import caching
        from numba.core.runtime import rtsys
    except ImportError:  # pragma: no cover
        return False
    C = caching.Cache
    if getattr(C, "_ggq_fast_loads", False):
        return True
    if not all(callable(getattr(C, n, None)) for n in ("load_overload", "_load_overload",
                                                        "_guard_against_spurious_io_errors")):
        return False  # pragma: no cover - another Numba

    def load_overload(self, sig, target_context):
        rtsys.initialize(target_context)  # idempotent; the loaded code calls into NRT
        with self._guard_against_spurious_io_errors():
            return self._load_overload(sig, target_context)

    load_overload.__doc__ = C.load_overload.__doc__
    C.load_overload = load_overload
    C._ggq_fast_loads = True
    return True


class Precompiler:
    """Compile kernels in a helper process while this one goes on (a cold Numba cache only:
    compiling is single-threaded and holds the GIL, so a second core is the only way to overlap
    it). The helper saves each kernel to Numba's disk cache, where this process's first call of
    it finds it (then it loads in milliseconds instead of compiling for a second). Tasks as
    ggq.kernels.warm takes them ("mv:Q4_K", "mm:Q6_K"), done in the order given: give them in
    the reverse order of this process's first use, and the two processes meet in the middle.
    A failed or slow helper costs nothing but its CPU time: what it did not save compiles here
    when first called, as it would without it."""

    def __init__(self, tasks, env=None):
        import subprocess

        self.tasks = list(tasks)
        code = ("import sys\n"
                "from ggq.jit_cache import numba_without_scipy\n"
                "with numba_without_scipy():\n"
                "    import numba\n"
                "    numba.set_num_threads(1)\n"
                "    import ggq.kernels as k\n"
                "    k.warm(sys.argv[1:], lambda t: print(t, flush=True))\n")
        env = dict(os.environ if env is None else env)
        root = str(Path(__file__).resolve().parent.parent)  # this ggq, wherever it was imported from
        env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        self.proc = subprocess.Popen([sys.executable, "-c", code, *self.tasks], env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)

    def wait(self, timeout: float | None = 300.0, steal: bool = False) -> bool:
        """Wait for the helper to finish (True if it did every task). steal=True: meanwhile
        this process does the helper's last tasks itself, from the end, while at least two
        are left (the helper works on the first one left), so both cores work to the end; the
        helper finds those in the cache when it gets there. On a timeout the helper is
        stopped: whatever it did not save compiles here when first used."""
        import threading
        import time

        done: list[str] = []
        reader = threading.Thread(target=lambda: done.extend(ln.strip() for ln in self.proc.stdout),
                                  daemon=True)
        reader.start()
        left = list(self.tasks)
        end = None if timeout is None else time.monotonic() + timeout
        if steal:
            from .kernels import warm

            while reader.is_alive():
                left = [t for t in left if t not in done]
                if len(left) < 2 or (end is not None and time.monotonic() > end):
                    break
                warm([left.pop()])
        reader.join(None if end is None else max(0.0, end - time.monotonic()))
        if reader.is_alive():
            self.close()
            return False
        self.proc.wait()
        return self.proc.returncode == 0 and set(done) == set(self.tasks)

    def close(self) -> None:
        """Stop the helper if it still runs (a half-written cache entry is never used: Numba
        writes each file under a temporary name and renames it)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
