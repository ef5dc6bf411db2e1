"""Pages a run no longer needs, handed back (Linux; elsewhere nothing happens).

LLVM (llvmlite's libllvmlite.so, ~175 MB on disk) is code a run needs only while Numba loads
its kernels from the disk cache: the loader's relocations and LLVM's static constructors touch
~36 MB of it when Numba is imported, starting Numba's runtime ~27 MB more (fault-around maps 64
KiB per touched page). Once the kernels a run calls are loaded, those pages sit in the process's
resident set beside the weights for the rest of the run. drop_clean_library_pages() unmaps them
from this process (madvise MADV_DONTNEED): they stay in the page cache, and code that runs
again (a kernel loaded later) faults its pages back in from there. Only mappings that cannot
hold data of this process are touched: read-only file mappings with no private (copied-on-write)
page, so nothing but the file's own bytes is ever dropped.
"""
from __future__ import annotations

import re
import sys

MADV_DONTNEED = 4  # Linux
_MAP = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ \S+\s*(.*)$")


def clean_file_mappings(name_part: str, smaps: str = "/proc/self/smaps",
                        first_run_only: bool = True) -> list[tuple[int, int, int]]:
    """(start, end, resident KiB) of this process's read-only file mappings whose path contains
    name_part and which hold no anonymous (copied-on-write) page; [] where /proc is absent.
    first_run_only: stop reading at the first mapping of another file after the library's
    (a loaded library's mappings are adjacent): the kernel computes smaps as it is read, ~15 us
    a mapping, and a Numba process has hundreds."""
    out = []
    cur = None
    seen = False
    try:
        with open(smaps) as fh:
            for line in fh:
                m = _MAP.match(line)
                if m:
                    if cur is not None and cur[3]:
                        out.append(tuple(cur[:3]))
                    perms, path = m.group(3), m.group(4)
                    if name_part in path:
                        seen = True
                    elif seen and first_run_only:
                        return out
                    ok = name_part in path and "w" not in perms and not path.startswith("[")
                    cur = [int(m.group(1), 16), int(m.group(2), 16), 0, ok] if ok else None
                elif cur is not None:
                    key, _, val = line.partition(":")
                    if key == "Rss":
                        cur[2] = int(val.split()[0])
                    elif key == "Anonymous" and int(val.split()[0]) != 0:
                        cur[3] = False  # a page of this process's own: never drop
    except (OSError, ValueError, IndexError):
        return []
    if cur is not None and cur[3]:
        out.append(tuple(cur[:3]))
    return out


def drop_clean_library_pages(name_part: str = "libllvmlite") -> int:
    """Unmap the resident pages of the clean read-only mappings of a shared library (by a part of
    its path) from this process; returns the KiB that were resident there (0: nothing done, or
    not Linux). Any failure leaves the mappings as they were."""
    if not sys.platform.startswith("linux"):
        return 0
    maps = clean_file_mappings(name_part)
    if not maps:
        return 0
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        madvise.restype = ctypes.c_int
    except (OSError, AttributeError):
        return 0
    dropped = 0
    for start, end, rss_kib in maps:
        if rss_kib and madvise(start, end - start, MADV_DONTNEED) == 0:
            dropped += rss_kib
    return dropped
