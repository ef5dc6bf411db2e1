"""Control of the OpenBLAS thread pool that NumPy loaded (the prompt path's sgemm). numba.set_num_threads
does not reach it, so `-t` sets both."""
from __future__ import annotations

# NumPy's OpenBLAS keeps its own thread pool. Its threads busy-wait at every call's barrier,
# which is ruinous for the many small per-head attention matmuls (and when cores are shared):
# measured 20 ms per layer with one BLAS thread against 480 ms with two on a loaded 2-core box.
_blas = None


def _blas_lib():
    global _blas
    if _blas is None:
        import ctypes

        _blas = False
        try:
            with open("/proc/self/maps") as fh:
                libs = {ln.split()[-1] for ln in fh if "openblas" in ln.lower() and ".so" in ln}
        except OSError:
            libs = set()
        for path in sorted(libs):
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for set_name, get_name in (("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
                                       ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
                                       ("openblas_set_num_threads", "openblas_get_num_threads")):
                if hasattr(lib, set_name) and hasattr(lib, get_name):
                    setter, getter = getattr(lib, set_name), getattr(lib, get_name)
                    setter.argtypes, setter.restype = [ctypes.c_int], None
                    getter.argtypes, getter.restype = [], ctypes.c_int
                    _blas = (setter, getter)
                    break
            if _blas:
                break
    return _blas or None


def blas_get_threads() -> int | None:
    lib = _blas_lib()
    return int(lib[1]()) if lib else None


def blas_set_threads(n: int) -> None:
    """Set OpenBLAS's thread count (no-op where NumPy uses another BLAS)."""
    lib = _blas_lib()
    if lib and lib[1]() != n:
        lib[0](int(n))
