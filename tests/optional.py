"""needed(name): a package of the test extra. Outside CI its absence skips the module (a user
who installed only the core can still run the rest); in CI (CI set), where `pip install -e
'.[test]'` must have installed it, its absence is a failure, never a silent skip."""
from __future__ import annotations

import importlib
import os

import pytest


def needed(name: str):
    if os.environ.get("CI"):
        return importlib.import_module(name)
    return pytest.importorskip(name, reason=f"{name} is not installed (pip install -e '.[test]')")
