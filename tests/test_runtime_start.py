"""`ggq run`'s start-up helpers (ggq.cli.run): Numba imported without PyYAML only when no
.numba_config.yaml could need it."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("yaml", reason="PyYAML is not installed: Numba cannot import it anyway, nothing to mask")

ROOT = Path(__file__).resolve().parents[1]

CODE = ("import sys\n"
        "from ggq.cli.run import _numba_without_yaml\n"
        "with _numba_without_yaml():\n"
        "    import numba\n"
        "during = 'yaml' in sys.modules\n"
        "import yaml  # importable again afterwards\n"
        "print(during, numba.config._HAVE_YAML, numba.config.DISABLE_JIT)\n")


def _run(cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("NUMBA_DISABLE_JIT", None)
    r = subprocess.run([sys.executable, "-c", CODE], cwd=str(cwd), env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_numba_imports_without_yaml_when_no_config_file(tmp_path):
    assert _run(tmp_path) == ["False", "False", "0"]


def test_a_numba_config_file_is_still_read(tmp_path):
    (tmp_path / ".numba_config.yaml").write_text("disable_jit: 1\n")
    assert _run(tmp_path) == ["True", "True", "1"]
