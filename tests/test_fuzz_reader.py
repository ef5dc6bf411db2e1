"""Fuzzing the .ggq reader (tools/fuzz_reader.py): replay of the regression inputs, and a
bounded smoke run that is part of the normal suite (CI): coverage-guided with atheris when it
is installed, else the plain mutation fuzzer. Either way the reader must raise nothing but a
one-line FormatError ending in [rule N], never hang, never allocate far beyond the input."""
import importlib.util
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REGRESSIONS = ROOT / "tests" / "fuzz" / "corpus"
SMOKE_SECONDS = 40  # the whole smoke test stays under a minute

_spec = importlib.util.spec_from_file_location("fuzz_reader", ROOT / "tools" / "fuzz_reader.py")
fuzz_reader = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz_reader)


@pytest.fixture(scope="module")
def target():
    t = fuzz_reader.Target()
    yield t
    t.close()


@pytest.mark.parametrize("path", sorted(REGRESSIONS.glob("*")) if REGRESSIONS.is_dir() else [],
                         ids=lambda p: p.name)
def test_regression_input(target, path):
    target.run_one(path.read_bytes())


def test_seeds_and_mutations_deterministic(target):
    """Every conformance vector passes the target, and a fixed-seed batch of mutations too."""
    for s in fuzz_reader.seeds():
        target.run_one(s)
    res = fuzz_reader.plain(2000, seed=12345, log=lambda *a: None)
    assert res["crashes"] == [], res["crashes"][:3]


def _have_atheris() -> bool:
    """GGQ_FUZZ_ENGINE=plain forces the plain fuzzer even where atheris is installed."""
    return os.environ.get("GGQ_FUZZ_ENGINE") != "plain" and importlib.util.find_spec("atheris") is not None


def test_fuzz_smoke(tmp_path):
    """Bounded fuzz run (~40 s), part of the normal suite and so of CI (.ci/run)."""
    if _have_atheris():
        corpus = tmp_path / "corpus"
        corpus.mkdir()
        r = subprocess.run(
            [sys.executable, str(ROOT / "tools" / "fuzz_reader.py"), "--atheris", str(corpus),
             str(ROOT / "spec" / "vectors"), f"-max_total_time={SMOKE_SECONDS}", "-rss_limit_mb=2048", "-seed=1",
             "-timeout=20", "-max_len=200000", f"-artifact_prefix={tmp_path}/", "-print_final_stats=1"],
            capture_output=True, text=True, timeout=SMOKE_SECONDS + 60, cwd=tmp_path)
        crashes = list(tmp_path.glob("crash-*")) + list(tmp_path.glob("timeout-*")) + list(tmp_path.glob("oom-*"))
        assert r.returncode == 0 and not crashes, r.stderr[-3000:]
        assert "Done" in r.stderr or "DONE" in r.stderr, r.stderr[-1000:]
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        seed = int.from_bytes(os.urandom(4), "little")
        res = fuzz_reader.plain(10**9, seed=seed,
                                seconds=SMOKE_SECONDS, crash_dir=str(tmp_path / "crashes"),
                                log=lambda *a: None)
        assert res["crashes"] == [], (f"seed {seed}", res["crashes"][:3])
        assert res["inputs"] > 1000
        grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        assert grown_mb < 512, f"peak memory grew by {grown_mb:.0f} MB on inputs under 1 MiB"
