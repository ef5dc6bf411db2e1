"""Record llama.cpp's token ids for TEXTS into a JSON fixture (run by hand; CI has no llama.cpp).

    python tests/data/record_llama_tokenize.py LLAMA_TOKENIZE MODEL.gguf OUT.json
    python tests/data/record_llama_tokenize.py LLAMA_TOKENIZE --tiny OUT.json

--tiny: the two tiny SentencePiece vocabularies of tests/test_tokenizer_spm.py (written by its
write_gguf) on random texts from TINY_PIECES, seed 11.

Each text is written verbatim to a file and tokenized with
    llama-tokenize -m MODEL -f TEXTFILE --ids --log-disable --no-escape
(llama-tokenize parses special-token text such as "<start_of_turn>" by default, as ggq's
Tokenizer.encode does; --no-escape: backslashes in the text stay backslashes; BOS is added when
the model asks for it, as ggq does; -f reads the file byte for byte)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

TEXTS = [
    "Hello, world! This is a test.",
    "The quick brown fox jumps over the lazy dog.",
    " leading space",
    "   three leading spaces and trailing   ",
    "tabs\tand\t\tmore\t\t\ttabs\nnewlines\n\n\nand  double  spaces    four\n",
    "forty spaces:" + " " * 40 + "end, seventy newlines:" + "\n" * 70 + "end",
    "unicode: café, naïve, Zürich, Ελληνικά, русский язык, عربى, עברית, Tiếng Việt",
    "日本語のテキスト、中文文本，한국어 텍스트。ภาษาไทย",
    "emoji 🦙🚀👍🏽 and flags 🇺🇸🇯🇵, family 👨\u200d👩\u200d👧, math ∑∫√∞ ≠ ≤",
    "digits 0123456789 3.14159 -42 1e-5 1,000,000 2024-01-01 12:30:45 0x1F $9.99 50%",
    "def f(x):\n    return x ** 2  # square\n\nprint(f(3))\n\tif (a && b) { c[i] = \"str\\n\"; }\n",
    "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>\n",
    "special inside<bos>text and <eos>, <pad>, <unused0>, <start_of_image> here",
    "<table><tr><td>cell</td></tr></table> <h1>Title</h1> <b>bold</b> <code>x</code>",
    "non\u00a0breaking\u00a0space, windows\r\nline, zero\u200bwidth, combining e\u0301, bell\x07, nul-free",
    "\n",
    " ",
    "a",
    "x" * 300 + " " + "ab" * 50,
    "Mixed CASE words: HTTPServer, camelCaseName, snake_case_name, kebab-case-name, UPPER.",
    "  \n  \n\t \t\n",
    "URL https://example.com/path?q=1&r=two#frag and email someone@example.org.",
]


TINY_PIECES = ["a", "b", "c", "h", "e", "l", "o", "w", "r", "d", " ", " ", "é", "\n", "x", "hello", " world",
               "<td>", "<turn>", "</s>", "<s>", "  ", "\n\n", "\t", "🦙", "ll", "<unk>", "<t", "d>"]


def _tokenize(binary: str, model: str, text: str, d: str) -> list[int]:
    p = os.path.join(d, "t.txt")
    with open(p, "wb") as fh:
        fh.write(text.encode("utf-8"))
    r = subprocess.run([binary, "-m", model, "-f", p, "--ids", "--log-disable", "--no-escape"],
                       capture_output=True, check=True, text=True)
    return json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("[")][-1])


def tiny(binary: str, out: str) -> None:
    import random

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from test_tokenizer_spm import write_gguf

    rng = random.Random(11)
    rec = {"command": f"{os.path.basename(binary)} -m MODEL -f TEXTFILE --ids --log-disable --no-escape",
           "llama_cpp": subprocess.run([binary, "--version"], capture_output=True, text=True)
           .stderr.strip().splitlines()[0]}
    with tempfile.TemporaryDirectory() as d:
        for name, kw in (("gemma_like", {"explicit": True, "add_space_prefix": False, "pad": 0}),
                         ("llama_like", {"explicit": False})):
            model = str(write_gguf(os.path.join(d, name + ".gguf"), **kw))
            texts = ["".join(rng.choice(TINY_PIECES) for _ in range(rng.randint(1, 16))) for _ in range(40)]
            rec[name] = [{"text": t, "ids": _tokenize(binary, model, t, d)} for t in texts]
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(rec, fh, ensure_ascii=False, indent=1)
        fh.write("\n")


def main(binary: str, model: str, out: str) -> None:
    if model == "--tiny":
        return tiny(binary, out)
    rec = {"command": f"{os.path.basename(binary)} -m {os.path.basename(model)} -f TEXTFILE --ids "
                      "--log-disable --no-escape",
           "llama_cpp": subprocess.run([binary, "--version"], capture_output=True, text=True)
           .stderr.strip().splitlines()[0],
           "model": os.path.basename(model), "texts": []}
    with tempfile.TemporaryDirectory() as d:
        for t in TEXTS:
            p = os.path.join(d, "t.txt")
            with open(p, "wb") as fh:
                fh.write(t.encode("utf-8"))
            r = subprocess.run([binary, "-m", model, "-f", p, "--ids", "--log-disable", "--no-escape"], capture_output=True, check=True, text=True)
            line = [ln for ln in r.stdout.splitlines() if ln.startswith("[")][-1]
            rec["texts"].append({"text": t, "ids": json.loads(line)})
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(rec, fh, ensure_ascii=False, indent=1)
        fh.write("\n")


if __name__ == "__main__":
    main(*sys.argv[1:4])
