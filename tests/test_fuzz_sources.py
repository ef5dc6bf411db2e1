"""Fuzzing the checkpoint sources of `ggq convert` (tools/fuzz_sources.py): a .gguf file, and a
Hugging Face folder / .safetensors file with its config.json and tokenizer files. Replays
every seed and regression input, and runs a bounded smoke run per target in the normal suite
(CI): coverage-guided with atheris where it is installed, else the plain mutation fuzzer.
Either way open_source() and the reads after it must raise nothing but a one-line GGQError
naming the file, never hang, never allocate far beyond the input."""
import importlib.util
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SMOKE_SECONDS = 40  # per target

_spec = importlib.util.spec_from_file_location("fuzz_sources", ROOT / "tools" / "fuzz_sources.py")
fuzz_sources = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz_sources)
KINDS = list(fuzz_sources.TARGETS)


@pytest.fixture(scope="module")
def targets():
    t = {k: fuzz_sources.TARGETS[k]() for k in KINDS}
    yield t
    for x in t.values():
        x.close()


def _inputs():
    for k in KINDS:
        d = fuzz_sources.CORPUS[k]
        for p in sorted(d.iterdir()) if d.is_dir() else []:
            yield pytest.param(k, p, id=f"{k}/{p.name}")


@pytest.mark.parametrize("kind,path", list(_inputs()))
def test_corpus_input(targets, kind, path):
    """Seeds (valid files, opened and read in full) and regression inputs (each crashed or hung
    ggq before its fix) pass the target."""
    targets[kind].run_one(path.read_bytes())


@pytest.mark.parametrize("kind", KINDS)
def test_seeds_are_valid_checkpoints(kind, tmp_path):
    """The seed-* files open without error: the fuzzer starts from inputs that reach every stage."""
    from ggq.convert.sources import open_source

    for p in sorted(fuzz_sources.CORPUS[kind].glob("seed-*")):
        if kind == "gguf":
            f = tmp_path / p.name
            f.write_bytes(p.read_bytes())
        else:
            mode, parts = fuzz_sources.unpack_bundle(p.read_bytes())
            d = tmp_path / p.name
            d.mkdir()
            for fid, body in parts:
                (d / fuzz_sources.BUNDLE_FILES[fid]).write_bytes(body)
            f = d / "model.safetensors" if mode else d
        with open_source(f) as src:
            assert src.tensor_names()


@pytest.mark.parametrize("kind", KINDS)
def test_mutations_deterministic(kind):
    res = fuzz_sources.plain(kind, 1500, seed=4321, log=lambda *a: None)
    assert res["crashes"] == [], res["crashes"][:3]


def _have_atheris() -> bool:
    """GGQ_FUZZ_ENGINE=plain forces the plain fuzzer even where atheris is installed."""
    return os.environ.get("GGQ_FUZZ_ENGINE") != "plain" and importlib.util.find_spec("atheris") is not None


@pytest.mark.fuzz
@pytest.mark.parametrize("kind", KINDS)
def test_fuzz_smoke(kind, tmp_path):
    """Bounded fuzz run (~40 s per target), part of the normal suite and so of CI."""
    if _have_atheris():
        corpus = tmp_path / "corpus"
        corpus.mkdir()
        r = subprocess.run(
            [sys.executable, str(ROOT / "tools" / "fuzz_sources.py"), kind, "--atheris", str(corpus),
             str(fuzz_sources.CORPUS[kind]), f"-max_total_time={SMOKE_SECONDS}", "-rss_limit_mb=2048", "-seed=1",
             "-timeout=20", "-max_len=1048576", f"-artifact_prefix={tmp_path}/", "-print_final_stats=1"],
            capture_output=True, text=True, timeout=SMOKE_SECONDS + 90, cwd=tmp_path)
        crashes = [p for p in tmp_path.iterdir() if p.name.split("-")[0] in ("crash", "timeout", "oom", "leak")]
        assert r.returncode == 0 and not crashes, r.stderr[-3000:]
        assert "Done" in r.stderr or "DONE" in r.stderr, r.stderr[-1000:]
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        seed = int.from_bytes(os.urandom(4), "little")
        res = fuzz_sources.plain(kind, 10**9, seed=seed, seconds=SMOKE_SECONDS,
                                 crash_dir=str(tmp_path / "crashes"), log=lambda *a: None)
        assert res["crashes"] == [], (f"seed {seed}", res["crashes"][:3])
        assert res["inputs"] > 500
        grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        assert grown_mb < 512, f"peak memory grew by {grown_mb:.0f} MB on inputs under 1 MiB"
