"""tools/gpu_bench.py builds a synthetic llama in the preset's types and measures it (here on
torch's CPU device: the tool's own check; the figures come from the GPU machine)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from optional import needed  # noqa: E402

needed("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import gpu_bench  # noqa: E402


def test_build_and_measure(tmp_path):
    from ggq.format import GGQReader

    path = gpu_bench.build(tmp_path / "tiny.ggq", *gpu_bench.MODELS["tiny"])
    with GGQReader(path) as f:
        types = {n: t.qtype.name for n, t in f.tensors.items()}
        assert f.metadata["llama.block_count"] == 2
    # q4_k_m: Q4_K for most matrices, Q6_K for some ffn_down / attn_v and the tied embedding
    assert types["blk.0.ffn_gate.weight"] == "Q4_K" and types["token_embd.weight"] == "Q6_K"
    assert types["blk.0.attn_norm.weight"] == "F32"
    res = gpu_bench.measure(path, "cpu", n_prompt=16, n_gen=2, reps=1)
    assert res["pp"] > 0 and res["tg"] > 0
    # every matrix, the tied output included, is on the backend, still quantized
    assert 0.9 * res["file_mib"] < res["weights_mib"] <= res["file_mib"]
