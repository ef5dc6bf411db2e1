"""Convert presets: which type each tensor gets. Mirrors llama.cpp's llama_tensor_get_type
(src/llama-quant.cpp) for the llama architecture (no experts, not Falcon, not 70B):

- 1-D tensors and *_norm.weight stay F32 (DESIGN.md: 1-D tensors are stored F32).
- output.weight, and token_embd.weight when the embeddings are tied, get Q6_K (Q8_0 if the
  preset's own block size does not divide the row, or the preset is q8_0).
- _M/_S mixtures give attn_v and ffn_down more bits on some layers (use_more_bits: the first and
  last eighth of the layers and every third one between).
- A tensor whose row length the chosen type's block does not divide falls back like llama.cpp:
  Q2_K/Q3_K -> Q4_0, Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, and to F16 if that fails too.
- `keep` (default for GGUF input) keeps every tensor's source type.
- overrides: (fnmatch pattern, type) pairs on tensor names, later wins, then the fallback
  above. They apply to 2-D tensors only (1-D ones are F32 by contract).
"""
from __future__ import annotations

import fnmatch
import re

from ..errors import ConvertError
from ..quants import get_type

# preset -> the default (base) type
PRESETS: dict[str, str] = {
    "q2_k": "Q2_K", "q3_k_m": "Q3_K",
    "q4_k_s": "Q4_K", "q4_k_m": "Q4_K", "q5_k_s": "Q5_K", "q5_k_m": "Q5_K", "q6_k": "Q6_K",
    "q4_0": "Q4_0", "q4_1": "Q4_1", "q5_0": "Q5_0", "q5_1": "Q5_1", "q8_0": "Q8_0",
    "f16": "F16", "bf16": "BF16", "f32": "F32",
    "keep": "",
}
FLOAT_TYPES = ("F32", "F16", "BF16")
FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
_BLK = re.compile(r"^blk\.(\d+)\.")


def normalize_preset(preset: str) -> str:
    p = str(preset).strip().lower().replace("-", "_")
    if p not in PRESETS:
        raise ConvertError(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
    return p


def parse_override(text: str) -> tuple[str, str]:
    """'blk.*.ffn_down.weight=Q6_K' -> (pattern, 'Q6_K')."""
    pat, sep, typ = str(text).rpartition("=")
    if not sep or not pat or not typ:
        raise ConvertError(f"bad override {text!r} (expected PATTERN=TYPE, e.g. 'output.weight=Q8_0')")
    try:
        return pat, get_type(typ.strip()).name
    except Exception:
        raise ConvertError(f"bad override {text!r}: unknown type {typ!r}") from None


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def fallback(type_name: str, cols: int) -> str:
    qt = get_type(type_name)
    if qt.supports(cols):
        return qt.name
    t = FALLBACK.get(qt.name, qt.name)
    return t if get_type(t).supports(cols) else "F16"


def _category(name: str) -> str:
    for cat in ("attn_v", "ffn_down", "attn_output", "attn_q", "attn_k", "ffn_gate", "ffn_up"):
        if name.endswith(f".{cat}.weight"):
            return cat
    if name == "output.weight":
        return "output"
    if name == "token_embd.weight":
        return "token_embd"
    return "other"


def _mixture(preset: str, name: str, cols: int, n_layers: int, n_gqa: int, tied: bool) -> str:
    base = PRESETS[preset]
    new = base
    cat = _category(name)
    m = _BLK.match(name)
    i = int(m.group(1)) if m else 0
    n = n_layers
    if cat == "output" or (tied and cat == "token_embd"):
        if cols % get_type(base).block_size:
            new = "Q8_0"
        elif base != "Q8_0":
            new = "Q6_K"
    elif cat == "attn_v":
        if preset == "q2_k":
            new = "Q4_K" if n_gqa >= 4 else "Q3_K"
        elif preset == "q3_k_m":
            new = "Q5_K" if i < 2 else "Q4_K"
        elif preset in ("q4_k_m", "q5_k_m") and use_more_bits(i, n):
            new = "Q6_K"
        elif preset == "q4_k_s" and i < 4:
            new = "Q5_K"
    elif cat == "ffn_down":
        if preset == "q2_k":
            new = "Q3_K"
        elif preset == "q3_k_m":
            new = "Q5_K" if i < n // 16 else "Q4_K"
        elif preset in ("q4_k_m", "q5_k_m"):
            if use_more_bits(i, n):
                new = "Q6_K"
        elif preset == "q4_k_s" and i < n // 8:
            new = "Q5_K"
    elif cat == "attn_output":
        if preset == "q2_k":
            new = "Q3_K"
        elif preset == "q3_k_m":
            new = "Q4_K"
    return new


def plan_types(shapes: dict[str, tuple[int, ...]], preset: str, *, n_layers: int, n_head: int,
               n_head_kv: int, tied: bool, source_types: dict[str, str] | None = None,
               overrides=()) -> dict[str, str]:
    """{tensor name: type name} for every tensor of `shapes` (numpy shapes, in file order)."""
    preset = normalize_preset(preset)
    ovs = [parse_override(o) if isinstance(o, str) else (o[0], get_type(o[1]).name) for o in overrides]
    if preset == "keep" and source_types is None:
        raise ConvertError("preset 'keep' needs a source with typed tensors")
    n_gqa = max(1, n_head // max(1, n_head_kv))
    out: dict[str, str] = {}
    used = [False] * len(ovs)
    for name, shape in shapes.items():
        cols = int(shape[-1])
        if len(shape) < 2 or name.endswith("_norm.weight"):
            out[name] = "F32"
            continue
        if preset == "keep":
            t = get_type(source_types[name]).name
        elif PRESETS[preset] in FLOAT_TYPES:
            t = PRESETS[preset]
        else:
            t = _mixture(preset, name, cols, n_layers, n_gqa, tied)
        for k, (pat, typ) in enumerate(ovs):
            if fnmatch.fnmatchcase(name, pat):
                t, used[k] = typ, True
        out[name] = fallback(t, cols)
    for (pat, _), u in zip(ovs, used):
        if not u:
            raise ConvertError(f"override pattern {pat!r} matches no 2-D tensor")
    return out
