"""Keep Numba's disk cache from serving stale kernels.

Numba keys a cached kernel on its own source file only (its documented limit: a change in a
callee defined in another file is not seen). ggq's kernels inline code from other files
(ggq/kernels/common.py's LLVM intrinsics into every matvec; models/base.py's norms into the
architectures' kernels), so an edit or an upgrade of such a file alone would leave old machine
code running: a quietly wrong result. guard() writes, next to the cached kernels of the given
modules, a stamp with a hash of the files they are built from, and deletes those kernels'
cache entries when the hash changes (they recompile once)."""
from __future__ import annotations

import hashlib
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
