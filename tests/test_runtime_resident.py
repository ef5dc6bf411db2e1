"""runtime.resident: which mappings it may drop (parsed from a hand-written smaps), and that a
process whose LLVM pages were dropped still runs its loaded kernels and compiles new ones."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ggq.runtime.resident import clean_file_mappings

ROOT = Path(__file__).resolve().parents[1]

SMAPS = """\
7f0000000000-7f0000100000 r--p 00000000 fe:00 11 /usr/lib/libllvmlite.so
Size:               1024 kB
Rss:                 512 kB
Anonymous:             0 kB
7f0000100000-7f0000300000 r-xp 00100000 fe:00 11 /usr/lib/libllvmlite.so
Size:               2048 kB
Rss:                 300 kB
Anonymous:             0 kB
7f0000300000-7f0000310000 r--p 00300000 fe:00 11 /usr/lib/libllvmlite.so
Size:                 64 kB
Rss:                  64 kB
Anonymous:            64 kB
7f0000310000-7f0000320000 rw-p 00310000 fe:00 11 /usr/lib/libllvmlite.so
Size:                 64 kB
Rss:                  64 kB
Anonymous:             0 kB
7f0000400000-7f0000500000 r-xp 00000000 fe:00 12 /usr/lib/libother.so
Size:               1024 kB
Rss:                1024 kB
Anonymous:             0 kB
7f0000600000-7f0000601000 r--p 00000000 00:00 0 [vvar]
Rss:                   4 kB
Anonymous:             0 kB
7f0000700000-7f0000800000 r-xp 00000000 fe:00 11 /usr/lib/libllvmlite.so
Size:               1024 kB
Rss:                   8 kB
Anonymous:             0 kB
"""


def test_only_clean_read_only_mappings_of_the_library(tmp_path):
    p = tmp_path / "smaps"
    p.write_text(SMAPS)
    # relro (an anonymous page: relocated data), rw data and other libraries are never chosen;
    # by default reading stops after the library's adjacent mappings
    first = [(0x7f0000000000, 0x7f0000100000, 512), (0x7f0000100000, 0x7f0000300000, 300)]
    assert clean_file_mappings("libllvmlite", str(p)) == first
    # all of them: the last mapping counts though it ends the file
    assert clean_file_mappings("libllvmlite", str(p), first_run_only=False) == first + [
        (0x7f0000700000, 0x7f0000800000, 8)]
    assert clean_file_mappings("libllvmlite", str(tmp_path / "absent")) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/smaps and madvise are Linux's")
def test_dropped_llvm_pages_leave_kernels_and_compiler_working(tmp_path):
    """After the drop: LLVM's resident KiB fall, a kernel loaded before gives the same result,
    and a new kernel still compiles and runs (its LLVM pages fault back in)."""
    code = (
        "import numpy as np\n"
        "from numba import njit\n"
        "from ggq.runtime.resident import clean_file_mappings, drop_clean_library_pages\n"
        "from ggq.kernels import MATVEC, matvec_args\n"
        "w, x, y = matvec_args('Q8_0')\n"
        "w = (np.arange(w.size) % 251).astype(np.uint8).reshape(w.shape[0], -1, 34)\n"
        "w[:, :, :2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)  # finite block scales\n"
        "w = w.reshape(w.shape[0], -1); w.flags.writeable = False\n"
        "x = np.linspace(-1, 1, x.size).astype(np.float32)\n"
        "MATVEC['Q8_0'](w, x, y); before = y.copy()\n"
        "rss0 = sum(r for _, _, r in clean_file_mappings('libllvmlite'))\n"
        "dropped = drop_clean_library_pages('libllvmlite')\n"
        "rss1 = sum(r for _, _, r in clean_file_mappings('libllvmlite'))\n"
        "y[:] = 0; MATVEC['Q8_0'](w, x, y)\n"
        "a = np.arange(10.0)\n"
        "s = njit(lambda v: (v * v).sum())(a)\n"
        "print(rss0, dropped, rss1, bool((y == before).all()), s == (a * a).sum())\n")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=str(ROOT), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rss0, dropped, rss1, same, compiled = r.stdout.split()
    assert int(dropped) > 0 and int(rss0) >= int(dropped)
    assert int(rss1) < int(rss0) // 4, (rss0, rss1)
    assert (same, compiled) == ("True", "True")
