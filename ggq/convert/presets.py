"""Convert presets: which type each tensor gets. Mirrors llama.cpp's llama_tensor_get_type
(src/llama-quant.cpp) for the llama architecture (no experts, not Falcon, not 70B):

- 1-D tensors and *_norm.weight stay F32 (DESIGN.md: 1-D tensors are stored F32).
- output.weight, and token_embd.weight when the embeddings are tied, get Q6_K (Q8_0 if the
  preset's own block size does not divide the row, or the preset is q8_0).
- _M/_S mixtures give attn_v and ffn_down more bits on some layers (use_more_bits: the first and
  last eighth of the layers and every third one between).
- A tensor whose row length the chosen type's block does not divide falls back like llama.cpp:
  Q2_K/Q3_K -> Q4_0, Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, IQ4_XS -> IQ4_NL, and to F16 if
  that fails too.
- iq4_nl / iq4_xs: llama.cpp's LLAMA_FTYPE_MOSTLY_IQ4_NL / _XS recipe (attn_v Q5_K when
  n_head / n_head_kv >= 4; ffn_down Q5_K on the first eighth of the layers without an imatrix).
- *_fit presets ("fit the bit budget"): the same recipe as the llama.cpp preset of the same name
  wherever the 256-element super-block divides the rows (identical types there, unless the
  FIT_IMATRIX_RULES below apply), but a row
  length 256 does not divide gets a 32-element type of about the same bits per weight instead of
  llama.cpp's more expensive fallback: Q2_K/Q3_K/Q4_K -> IQ4_NL (4.5 bpw; llama.cpp: Q4_0 4.5,
  Q5_0 5.5), Q5_K -> Q5_0 (5.5; llama.cpp: Q5_1 6.0), Q6_K -> Q5_1 (6.0; llama.cpp: Q8_0 8.5),
  and output.weight (token_embd.weight when tied) is Q6_K, then that fallback, where llama.cpp
  goes straight to Q8_0. SmolLM2-135M (576-wide rows everywhere but ffn_down): q4_k_m 6.17 bits
  per weight, q4_k_m_fit 5.03, q4_k_s_fit 4.85. Measured on its off-grid variant (KLD against the
  float model, 8 x 512 tokens of held-out text), the 576-wide rows as IQ4_NL gave KLD 0.156,
  as Q4_0 (same 4.5 bpw) 0.177, as Q4_1 (5.0 bpw) 0.131, as llama.cpp's Q5_0 (5.5 bpw) 0.065.
  With an importance matrix, when some tensor of the model falls back, FIT_IMATRIX_RULES
  (q4_k_m_fit, q4_k_s_fit) re-spend the budget over the whole model, on the tensors the matrix
  has statistics for (same mechanism as MIX_RULES below; a tensor that fits can change too:
  SmolLM2's 1536-wide ffn_down goes to IQ4_XS): the IQ4 types and GPTQ are at their best with
  calibration data, and the tiny attn_v/attn_k buy the most per bit. The rules are SmolLM2's
  (measured on its off-grid variant; checked on an off-grid Gemma 3 270M, q4_k_m_fit gptq KLD
  0.053 with them, 0.061 without); `convert --dry-run` prints the plan on another model.
  SmolLM2 off-grid, gptq, development text: q4_k_m_fit 4.97 bpw KLD 0.0453 (llama.cpp's
  6.17-bpw q4_k_m: 0.0627 without an imatrix), q4_k_s_fit 4.85 bpw 0.0489 (0.0662 without the
  rules); held-out text: 0.0477 and 0.0494 (llama.cpp's q4_k_m 0.0602). Without an importance
  matrix the same q4_k_m_fit mixture scored 0.150: the rules need the data.
- *_mix presets ("ggq's mixture at llama.cpp's size"): identical to the llama.cpp preset of the
  same name where no tensor falls back (every row a multiple of its type's block); where some do,
  llama.cpp's fallbacks spend bits where they buy little (SmolLM2: every 576-wide matrix one
  32-element tier up, attn_v and ffn_down low), and MIX_RULES re-spend about the same budget
  (within 0.02 bits per weight on SmolLM2) by each matrix's measured cost per bit. Measured on
  SmolLM2-135M's off-grid variant, KLD against the float model on development text (docs/
  quality.md), one category at a time from Q8_0 (0.0046) down to Q5_1, in KLD per megabit
  saved: attn_v 2.5e-3, attn_k 4.1e-4, tied embedding 2.4e-4, ffn_up and attn_q 1.4e-4,
  attn_output 1.0e-4, ffn_gate 6.6e-5; ffn_down Q8_0 -> Q6_K 7.5e-5, -> Q5_K 2.5e-4. So attn_v
  and attn_k go to Q8_0, ffn_down up a tier or two, the tied embedding to Q5_1, ffn_gate (then
  ffn_up) down to IQ4_NL / Q5_0. The rules are that model's; `convert --dry-run` prints the bits
  per weight they give on another.
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
    "iq4_nl": "IQ4_NL", "iq4_xs": "IQ4_XS",
    "f16": "F16", "bf16": "BF16", "f32": "F32",
    "keep": "",
}
FIT = "_fit"  # suffix of the presets that keep the bit budget on rows 256 does not divide
FIT_PRESETS = ("q2_k", "q3_k_m", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k")
PRESETS.update({p + FIT: PRESETS[p] for p in FIT_PRESETS})
MIX = "_mix"  # suffix of ggq's own mixtures at llama.cpp's size (see the module docstring)
# preset -> rules (category, type, layers; "tied_embd": a token_embd tied to the output) applied over llama.cpp's mixture when some tensor of
# that mixture falls back; layers: "all", "more" (use_more_bits), "mid" (not the first or last
# eighth of the layers) or "ends" (the first and last eighth); later rules win.
MIX_RULES: dict[str, tuple] = {
    "q2_k": (("tied_embd", "Q5_1", "all"), ("attn_v", "Q8_0", "all"), ("attn_k", "Q8_0", "all"),
             ("ffn_down", "Q4_K", "all"), ("attn_q", "Q5_0", "all"), ("attn_output", "IQ4_NL", "all"),
             ("ffn_up", "IQ4_NL", "all"), ("ffn_up", "Q5_0", "ends"), ("ffn_gate", "IQ4_NL", "all")),
    "q3_k_m": (("tied_embd", "Q5_1", "all"), ("attn_v", "Q8_0", "all"), ("attn_k", "Q8_0", "all"),
               ("ffn_down", "Q5_K", "all"), ("attn_q", "Q5_0", "all"), ("attn_output", "Q5_1", "all"),
               ("ffn_up", "IQ4_NL", "all"), ("ffn_up", "Q5_0", "ends"), ("ffn_gate", "IQ4_NL", "all")),
    "q4_k_s": (("tied_embd", "Q5_1", "all"), ("attn_v", "Q8_0", "all"), ("attn_k", "Q8_0", "all"),
               ("ffn_down", "Q6_K", "all"), ("attn_q", "Q5_1", "all"), ("attn_output", "Q5_1", "all"),
               ("ffn_up", "Q5_1", "all"), ("ffn_gate", "IQ4_NL", "all")),
    "q4_k_m": (("tied_embd", "Q5_1", "all"), ("attn_v", "Q8_0", "all"), ("attn_k", "Q8_0", "all"),
               ("ffn_down", "Q6_K", "all"), ("attn_q", "Q5_1", "all"), ("attn_output", "Q5_1", "all"),
               ("ffn_up", "Q5_1", "all"), ("ffn_gate", "Q5_1", "ends")),
    "q5_k_m": (("attn_v", "Q8_0", "all"), ("ffn_down", "Q6_K", "all"), ("attn_q", "Q5_0", "all"),
               ("ffn_gate", "Q5_0", "all")),
    "q6_k": (("ffn_down", "Q8_0", "all"), ("ffn_gate", "Q5_1", "mid")),
}
PRESETS.update({p + MIX: PRESETS[p] for p in MIX_RULES})
# *_fit preset -> rules applied with an importance matrix when some tensor of it falls back
# (measured with --method gptq and the output product's statistics; see the module docstring)
FIT_IMATRIX_RULES: dict[str, tuple] = {
    "q4_k_m": (("attn_v", "Q8_0", "all"), ("attn_k", "Q8_0", "all"), ("ffn_down", "IQ4_XS", "all")),
    "q4_k_s": (("tied_embd", "IQ4_NL", "all"), ("attn_v", "Q8_0", "all"), ("attn_k", "Q8_0", "all"),
               ("ffn_down", "IQ4_XS", "all"), ("ffn_up", "Q5_0", "all")),
}
FLOAT_TYPES = ("F32", "F16", "BF16")
FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0",
            "IQ4_XS": "IQ4_NL"}
FALLBACK_FIT = {"Q2_K": "IQ4_NL", "Q3_K": "IQ4_NL", "Q4_K": "IQ4_NL", "Q5_K": "Q5_0", "Q6_K": "Q5_1",
                "IQ4_XS": "IQ4_NL"}
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


def fallback(type_name: str, cols: int, fit: bool = False) -> str:
    """The type a row of `cols` gets when type_name's block does not divide it (llama.cpp's
    choice, or with fit=True the one keeping about the same bits per weight); F16 if neither fits."""
    qt = get_type(type_name)
    if qt.supports(cols):
        return qt.name
    t = (FALLBACK_FIT if fit else FALLBACK).get(qt.name, qt.name)
    return t if get_type(t).supports(cols) else "F16"


def fallback_note(wanted: str, got: str, cols: int) -> str:
    """One line saying why a tensor is not of the type its preset chose ('' if it is)."""
    if wanted == got:
        return ""
    a, b = get_type(wanted), get_type(got)
    return (f"{wanted} -> {got}: {cols} columns are not a multiple of {wanted}'s {a.block_size}-element "
            f"block ({a.bits_per_weight:.2f} -> {b.bits_per_weight:.2f} bits per weight)")


def _category(name: str) -> str:
    for cat in ("attn_v", "ffn_down", "attn_output", "attn_q", "attn_k", "ffn_gate", "ffn_up"):
        if name.endswith(f".{cat}.weight"):
            return cat
    if name == "output.weight":
        return "output"
    if name == "token_embd.weight":
        return "token_embd"
    return "other"


def _mixture(preset: str, name: str, cols: int, n_layers: int, n_gqa: int, tied: bool,
             has_imatrix: bool = False) -> str:
    fit = preset.endswith(FIT)
    base = PRESETS[preset]
    preset = preset[:-len(FIT)] if fit else preset  # the llama.cpp recipe it follows
    new = base
    cat = _category(name)
    m = _BLK.match(name)
    i = int(m.group(1)) if m else 0
    n = n_layers
    if cat == "output" or (tied and cat == "token_embd"):
        if cols % get_type(base).block_size and not fit:
            new = "Q8_0"
        elif base != "Q8_0":
            new = "Q6_K"
    elif cat == "attn_v":
        if preset in ("iq4_nl", "iq4_xs"):
            if n_gqa >= 4:
                new = "Q5_K"
        elif preset == "q2_k":
            new = "Q4_K" if n_gqa >= 4 else "Q3_K"
        elif preset == "q3_k_m":
            new = "Q5_K" if i < 2 else "Q4_K"
        elif preset in ("q4_k_m", "q5_k_m") and use_more_bits(i, n):
            new = "Q6_K"
        elif preset == "q4_k_s" and i < 4:
            new = "Q5_K"
    elif cat == "ffn_down":
        if preset in ("iq4_nl", "iq4_xs"):
            if i < n // 8 and not has_imatrix:
                new = "Q5_K"
        elif preset == "q2_k":
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


def _mix_rule(rules, name: str, t: str, n_layers: int, tied: bool) -> str:
    """The type rules (MIX_RULES or FIT_IMATRIX_RULES) give tensor `name` (t: the recipe's choice,
    kept if no rule matches).
    A "tied_embd" rule covers token_embd.weight when the embeddings are tied (the matrix that is
    also the output's: what the rules were measured on); an untied output.weight keeps the
    recipe's type."""
    cat = _category(name)
    if cat == "token_embd" and tied:
        cat = "tied_embd"
    m = _BLK.match(name)
    i = int(m.group(1)) if m else -1
    for rc, rt, layers in rules:
        if rc != cat:
            continue
        mid = n_layers // 8 <= i < 7 * n_layers // 8
        if (layers == "all" or (layers == "more" and i >= 0 and use_more_bits(i, n_layers))
                or (layers == "mid" and mid) or (layers == "ends" and i >= 0 and not mid)):
            t = rt
    return t


def plan_types(shapes: dict[str, tuple[int, ...]], preset: str, *, n_layers: int, n_head: int,
               n_head_kv: int, tied: bool, source_types: dict[str, str] | None = None,
               overrides=(), has_imatrix: bool = False, calibrated=None,
               notes: dict | None = None) -> dict[str, str]:
    """{tensor name: type name} for every tensor of `shapes` (numpy shapes, in file order).
    has_imatrix: an importance matrix will be used (llama.cpp's recipes differ for iq4_*; the
    *_fit presets' FIT_IMATRIX_RULES apply). calibrated: the tensor names it has statistics for
    (None: every tensor); a FIT_IMATRIX_RULES rule changes only those, since it was measured
    with the data (e.g. q4_k_s_fit's IQ4_NL tied embedding needs the output product's).
    notes: if given, filled with {tensor name: why} for every tensor whose chosen type did not
    fit its rows (fallback_note) or that a rule changed (what `convert --dry-run` shows)."""
    preset = normalize_preset(preset)
    asked, fit = preset, preset.endswith(FIT)
    ovs = [parse_override(o) if isinstance(o, str) else (o[0], get_type(o[1]).name) for o in overrides]
    if preset == "keep" and source_types is None:
        raise ConvertError("preset 'keep' needs a source with typed tensors")
    n_gqa = max(1, n_head // max(1, n_head_kv))
    rules = ()
    table = MIX_RULES if preset.endswith(MIX) else FIT_IMATRIX_RULES if fit and has_imatrix else {}
    if preset.endswith(MIX):
        preset = preset[:-len(MIX)]
    if table.get(preset.removesuffix(FIT)):
        mats = [(n, int(sh[-1])) for n, sh in shapes.items() if len(sh) >= 2 and not n.endswith("_norm.weight")]
        llama = preset.removesuffix(FIT)  # fallbacks judged on llama.cpp's recipe, as for *_mix
        if any(not get_type(_mixture(llama, n, c, n_layers, n_gqa, tied, has_imatrix)).supports(c) for n, c in mats):
            rules = table[llama]
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
            t = _mixture(preset, name, cols, n_layers, n_gqa, tied, has_imatrix)
        ruled = ""
        if rules and (calibrated is None or not fit or name in calibrated):
            r = _mix_rule(rules, name, t, n_layers, tied)
            was, now = fallback(t, cols, fit), fallback(r, cols, fit)
            if now != was:
                ruled = (f"{was} -> {now}: {asked}'s rule for {_category(name)} "
                         f"({'FIT_IMATRIX_RULES, with an importance matrix' if fit else 'MIX_RULES'})")
            t = r
        for k, (pat, typ) in enumerate(ovs):
            if fnmatch.fnmatchcase(name, pat):
                t, used[k], ruled = typ, True, ""
        out[name] = fallback(t, cols, fit)
        if notes is not None:
            why = "; ".join(w for w in (ruled, fallback_note(t, out[name], cols)) if w)
            if why:
                notes[name] = why
    for (pat, _), u in zip(ovs, used):
        if not u:
            raise ConvertError(f"override pattern {pat!r} matches no 2-D tensor")
    return out
