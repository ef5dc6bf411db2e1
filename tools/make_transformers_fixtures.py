#!/usr/bin/env python3
"""Write tiny random checkpoints with transformers' own save_pretrained, plus the logits
transformers computes for them: an independent reference for `ggq convert` + the runtime that
CI can check without torch.

    pip install torch==2.13.0 transformers && python tools/make_transformers_fixtures.py

Writes tests/fixtures/transformers/<name>/ (config.json exactly as the installed transformers
writes it, model.safetensors, tokenizer.json, logits.npy, tokens.json). The checkpoints carry
values that differ from every default (rope base, eps, query scale, window), so a reader that
misses a field fails the test instead of passing by luck."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

OUT = ROOT / "tests" / "fixtures" / "transformers"
TOKENS = [2, 17, 250, 3, 99, 100, 101, 7, 8, 45, 46, 200, 12, 13, 5, 6]


def _save(model, name: str, tok_json: dict) -> None:
    import torch

    d = OUT / name
    d.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(d, safe_serialization=True)
    for extra in d.glob("generation_config.json"):
        extra.unlink()
    (d / "tokenizer.json").write_text(json.dumps(tok_json, ensure_ascii=False))
    with torch.no_grad():
        logits = model(torch.tensor([TOKENS])).logits[0].float().numpy()
    np.save(d / "logits.npy", logits.astype(np.float32))
    import transformers
    (d / "tokens.json").write_text(json.dumps({"tokens": TOKENS, "transformers": transformers.__version__,
                                               "torch": torch.__version__}))
    print(f"wrote {d} ({sum(p.stat().st_size for p in d.iterdir()) / 1e3:.0f} kB)")


def main() -> None:
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    from tiny_model import tiny_tokenizer_json

    tok = tiny_tokenizer_json()
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True, bos_token_id=0, eos_token_id=2,
        attn_implementation="eager")).float().eval()
    _randomize(llama)
    _save(llama, "llama", tok)

    torch.manual_seed(1)
    gemma = Gemma3ForCausalLM(Gemma3TextConfig(
        vocab_size=300, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=256,
        rms_norm_eps=1e-6, query_pre_attn_scalar=20, sliding_window=4,
        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 50000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 500.0}},
        bos_token_id=2, eos_token_id=1, pad_token_id=0, attn_implementation="eager")).float().eval()
    _randomize(gemma)
    _save(gemma, "gemma3", tok)


def _randomize(model) -> None:
    """Weights well away from the initialiser's (norm weights non-zero, so Gemma's +1 matters)."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.3 if p.ndim == 1 else 0.2))


if __name__ == "__main__":
    main()
