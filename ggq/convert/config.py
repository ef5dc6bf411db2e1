"""Model hyperparameters: read from a Hugging Face config.json (every layout transformers has
written: 4.x top-level `rope_theta`/`rope_scaling`, 5.x `rope_parameters`) or from .ggq/GGUF
metadata, and written back as .ggq metadata (keys `<arch>.*`, as llama.cpp names them).

The rule (a file that runs but is quietly wrong is the worst bug we can ship):
- a config field that changes the math is understood and used, or refused with a one-line
  error naming the field and its value;
- a field that is absent gets the default transformers itself uses for that architecture;
- a field we do not know at all is refused too: we cannot tell whether it changes the math.
Fields that never change the forward pass (dtype, token ids, generation settings, ...) are
listed in HARMLESS_FIELDS and ignored.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from ..errors import ConvertError

# HF class name -> ggq architecture
HF_ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama",
                    "Gemma3ForCausalLM": "gemma3"}
SUPPORTED_ARCHITECTURES = tuple(HF_ARCHITECTURES)
ARCHES = ("llama", "gemma3")

# Keys PretrainedConfig (4.x and 5.x) writes or accepts that never change the forward pass.
HARMLESS_FIELDS = frozenset("""
architectures model_type torch_dtype dtype transformers_version _name_or_path name_or_path
use_cache initializer_range attention_dropout pretraining_tp bos_token_id eos_token_id
pad_token_id sep_token_id decoder_start_token_id return_dict output_hidden_states
output_attentions torchscript use_bfloat16 tf_legacy_loss pruned_heads chunk_size_feed_forward
is_encoder_decoder is_decoder cross_attention_hidden_size add_cross_attention
tie_encoder_decoder max_length min_length do_sample early_stopping num_beams num_beam_groups
diversity_penalty temperature top_k top_p typical_p repetition_penalty length_penalty
no_repeat_ngram_size encoder_no_repeat_ngram_size bad_words_ids num_return_sequences
output_scores return_dict_in_generate forced_bos_token_id forced_eos_token_id
remove_invalid_values exponential_decay_length_penalty suppress_tokens begin_suppress_tokens
finetuning_task id2label label2id tokenizer_class prefix problem_type task_specific_params
_attn_implementation_autoset _attn_implementation attn_implementation cache_implementation
_commit_hash _from_model_config output_router_logits use_return_dict
""".split())

# Per architecture: fields that transformers' model class itself ignores.
_ARCH_HARMLESS = {
    "gemma3": frozenset({"hidden_act"}),      # Gemma3 reads hidden_activation only
    "llama": frozenset({"is_llama_config"}),  # a nanotron export marker (SmolLM2)
}

_ABSENT = object()


@dataclass
class ModelConfig:
    """Hyperparameters of a supported architecture, named after the .ggq metadata keys
    (`<arch>.<key>`, DESIGN.md). `origin` says where each value came from (for the report)."""
    block_count: int
    embedding_length: int
    feed_forward_length: int
    head_count: int
    head_count_kv: int
    key_length: int
    vocab_size: int
    context_length: int = 2048
    rms_eps: float = 1e-5
    rope_freq_base: float = 10000.0
    rope_scaling_type: str = "none"
    rope_scaling_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_context_length: int = 8192
    tie_word_embeddings: bool = False
    name: str = ""
    arch: str = "llama"
    # gemma3 only
    rope_freq_base_swa: float | None = None      # local (sliding) layers' rope base
    sliding_window: int = 0                      # 0: no sliding window
    sliding_window_pattern: int | tuple | None = None  # n: layer i local iff i % n < n - 1; or bools
    query_pre_attn_scalar: float | None = None   # attention scale = query_pre_attn_scalar ** -0.5
    final_logit_softcapping: float | None = None
    origin: dict = field(default_factory=dict, repr=False, compare=False)

    # field -> (key without the "<arch>." prefix, vtype); "general.*" keys are absolute
    _KEYS = {
        "block_count": ("block_count", "u32"),
        "embedding_length": ("embedding_length", "u32"),
        "feed_forward_length": ("feed_forward_length", "u32"),
        "head_count": ("attention.head_count", "u32"),
        "head_count_kv": ("attention.head_count_kv", "u32"),
        "key_length": ("attention.key_length", "u32"),
        "rms_eps": ("attention.layer_norm_rms_epsilon", "f32"),
        "rope_freq_base": ("rope.freq_base", "f32"),
        "rope_scaling_type": ("rope.scaling.type", "str"),
        "rope_scaling_factor": ("rope.scaling.factor", "f32"),
        "rope_low_freq_factor": ("rope.scaling.low_freq_factor", "f32"),
        "rope_high_freq_factor": ("rope.scaling.high_freq_factor", "f32"),
        "rope_original_context_length": ("rope.scaling.original_context_length", "u32"),
        "context_length": ("context_length", "u32"),
        "vocab_size": ("vocab_size", "u32"),
        "tie_word_embeddings": ("tie_word_embeddings", "bool"),
        "rope_freq_base_swa": ("rope.freq_base_swa", "f32"),
        "sliding_window": ("attention.sliding_window", "u32"),
        "sliding_window_pattern": ("attention.sliding_window_pattern", "u32"),
        "query_pre_attn_scalar": ("attention.query_pre_attn_scalar", "f32"),
        "final_logit_softcapping": ("final_logit_softcapping", "f32"),
        "name": ("general.name", "str"),
    }
    _GEMMA3_ONLY = ("rope_freq_base_swa", "sliding_window", "sliding_window_pattern",
                    "query_pre_attn_scalar", "final_logit_softcapping")

    @classmethod
    def key(cls, arch: str, f: str) -> str:
        k = cls._KEYS[f][0]
        return k if k.startswith("general.") else f"{arch}.{k}"

    # -- checks ------------------------------------------------------------------------------
    def validate(self, where: str) -> "ModelConfig":
        if self.arch not in ARCHES:
            raise ConvertError(f"{where}: architecture {self.arch!r} is not supported "
                               f"(supported: {', '.join(ARCHES)})")
        for f in ("block_count", "embedding_length", "feed_forward_length", "head_count",
                  "head_count_kv", "key_length", "vocab_size", "context_length"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or not 0 < v < 1 << 31:
                raise ConvertError(f"{where}: bad {f} {v!r}")
        if self.head_count % self.head_count_kv:
            raise ConvertError(f"{where}: head_count {self.head_count} is not a multiple of "
                               f"head_count_kv {self.head_count_kv}")
        if self.key_length % 2:
            raise ConvertError(f"{where}: head_dim {self.key_length} is odd")
        allowed = ("none", "linear", "llama3") if self.arch == "llama" else ("none", "linear")
        if self.rope_scaling_type not in allowed:
            raise ConvertError(f"{where}: rope scaling {self.rope_scaling_type!r} is not supported "
                               f"for {self.arch} (supported: {', '.join(allowed)})")
        positive = ["rms_eps", "rope_freq_base", "rope_scaling_factor"]
        if self.arch == "gemma3":
            positive += ["rope_freq_base_swa", "query_pre_attn_scalar"]
            if self.final_logit_softcapping is not None:
                positive.append("final_logit_softcapping")
            sw = self.sliding_window
            if not isinstance(sw, int) or isinstance(sw, bool) or not 0 <= sw < 1 << 31:
                raise ConvertError(f"{where}: bad sliding_window {sw!r}")
            p = self.sliding_window_pattern
            if isinstance(p, tuple):
                if len(p) != self.block_count or not all(isinstance(b, bool) for b in p):
                    raise ConvertError(f"{where}: sliding_window_pattern must give one bool per layer "
                                       f"({self.block_count})")
            elif not (isinstance(p, int) and not isinstance(p, bool) and 0 <= p < 1 << 31):
                raise ConvertError(f"{where}: bad sliding_window_pattern {p!r}")
        else:
            for f in self._GEMMA3_ONLY:
                if getattr(self, f) not in (None, 0):
                    raise ConvertError(f"{where}: {f} is not part of the {self.arch} architecture")
        for f in positive:
            v = getattr(self, f)
            if not (isinstance(v, float) and math.isfinite(v) and v > 0):
                raise ConvertError(f"{where}: bad {f} {v!r}")
        return self

    def local_layers(self) -> list[bool]:
        """gemma3: which layers use the sliding window (llama.cpp's set_swa_pattern rule)."""
        if self.arch != "gemma3" or not self.sliding_window:
            return [False] * self.block_count
        p = self.sliding_window_pattern
        if isinstance(p, tuple):
            return list(p)
        return [p == 0 or i % p < p - 1 for i in range(self.block_count)]

    # -- metadata ----------------------------------------------------------------------------
    def to_metadata(self) -> list[tuple[str, object, str]]:
        """(key, value, vtype) for the .ggq metadata; optional keys only where they apply."""
        out = []
        for f, (_, vt) in self._KEYS.items():
            v = getattr(self, f)
            if f == "rope_scaling_factor" and self.rope_scaling_type == "none":
                continue
            if f in ("rope_low_freq_factor", "rope_high_freq_factor", "rope_original_context_length") \
                    and self.rope_scaling_type != "llama3":
                continue
            if f in self._GEMMA3_ONLY and (self.arch != "gemma3" or v is None):
                continue
            if f == "sliding_window_pattern" and isinstance(v, tuple):
                vt = "array[bool]"
                v = list(v)
            out.append((self.key(self.arch, f), v, vt))
        return out

    @classmethod
    def from_metadata(cls, md: dict, where: str = "metadata") -> "ModelConfig":
        """From .ggq metadata, or GGUF metadata as llama.cpp reads it (absent optional keys get
        llama.cpp's defaults, which ggq's own files always state explicitly)."""
        arch = md.get("general.architecture", "llama")
        if arch not in ARCHES:
            raise ConvertError(f"{where}: architecture {arch!r} is not supported "
                               f"(supported: {', '.join(ARCHES)})")
        kw = {"arch": arch}
        for f in fields(cls):
            if f.name.startswith("_") or f.name in ("arch", "origin"):
                continue
            key = cls.key(arch, f.name)
            if key in md:
                kw[f.name] = md[key]
        need = ["block_count", "embedding_length", "feed_forward_length", "head_count", "vocab_size",
                "rms_eps", "context_length"]
        missing = [cls.key(arch, f) for f in need if f not in kw]
        if missing:
            raise ConvertError(f"{where}: missing metadata {', '.join(missing)}")

        def bad(f, what):
            raise ConvertError(f"{where}: {cls.key(arch, f)} = {_show(kw[f])} is not {what}")

        # every value is type-checked before it is converted (a file may hold anything there)
        for f in ("rms_eps", "rope_freq_base", "rope_scaling_factor", "rope_low_freq_factor",
                  "rope_high_freq_factor", "rope_freq_base_swa", "query_pre_attn_scalar",
                  "final_logit_softcapping"):
            if f in kw:
                if isinstance(kw[f], bool) or not isinstance(kw[f], (int, float)):
                    bad(f, "a number")
                kw[f] = float(kw[f])
        for f in ("block_count", "embedding_length", "feed_forward_length", "head_count",
                  "head_count_kv", "key_length", "vocab_size", "context_length",
                  "rope_original_context_length", "sliding_window"):
            if f in kw:
                v = kw[f]
                if isinstance(v, float) and math.isfinite(v) and v.is_integer():
                    v = int(v)
                if isinstance(v, bool) or not isinstance(v, int):
                    bad(f, "an integer")
                kw[f] = v
        if "tie_word_embeddings" in kw:
            if not isinstance(kw["tie_word_embeddings"], (bool, int)):
                bad("tie_word_embeddings", "true/false")
            kw["tie_word_embeddings"] = bool(kw["tie_word_embeddings"])
        for f in ("rope_scaling_type", "name"):
            if f in kw and not isinstance(kw[f], str):
                bad(f, "a string")
        if "sliding_window_pattern" in kw:
            p = kw["sliding_window_pattern"]
            if not (isinstance(p, int) or (isinstance(p, (list, tuple))
                                           and all(isinstance(b, (bool, int)) for b in p))):
                bad("sliding_window_pattern", "an integer or a list of booleans")
        kw.setdefault("head_count_kv", kw["head_count"])
        kw.setdefault("key_length", int(kw["embedding_length"]) // max(int(kw["head_count"]), 1))
        if arch == "gemma3":  # llama.cpp's defaults for keys its converter leaves out
            kw.setdefault("rope_freq_base", 10000.0)
            kw.setdefault("rope_freq_base_swa", 10000.0)
            kw.setdefault("sliding_window", 0)
            p = kw.get("sliding_window_pattern", 6)
            kw["sliding_window_pattern"] = tuple(bool(b) for b in p) if isinstance(p, (list, tuple)) else int(p)
            if "query_pre_attn_scalar" not in kw:  # llama.cpp: 27B (62 layers) scales by hidden/heads
                kw["query_pre_attn_scalar"] = float(
                    kw["embedding_length"] // max(kw["head_count"], 1) if kw["block_count"] == 62 else kw["key_length"])
            if kw.get("final_logit_softcapping") == 0.0:
                kw["final_logit_softcapping"] = None
        return cls(**kw).validate(where)

    # -- Hugging Face config.json -------------------------------------------------------------
    @classmethod
    def from_hf(cls, cfg: dict, where: str) -> "ModelConfig":
        return _parse_hf(cfg, where)

    def summary(self) -> str:
        """The resolved hyperparameters, one line, for `ggq convert`'s report."""
        def g(v):
            return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else f"{v:g}"

        parts = [f"arch {self.arch}", f"layers {self.block_count}", f"hidden {self.embedding_length}",
                 f"ffn {self.feed_forward_length}",
                 f"heads {self.head_count}/{self.head_count_kv} kv", f"head_dim {self.key_length}",
                 f"rope base {g(self.rope_freq_base)}"]
        if self.rope_scaling_type != "none":
            parts.append(f"rope scaling {self.rope_scaling_type} x{g(self.rope_scaling_factor)}")
        if self.arch == "gemma3":
            loc = sum(self.local_layers())
            parts.append(f"local rope base {g(self.rope_freq_base_swa)}")
            parts.append(f"sliding window {self.sliding_window} on {loc}/{self.block_count} layers")
            parts.append(f"query scale 1/sqrt({g(self.query_pre_attn_scalar)})")
            if self.final_logit_softcapping:
                parts.append(f"logit softcap {g(self.final_logit_softcapping)}")
        parts += [f"eps {self.rms_eps:g}", f"context {self.context_length}", f"vocab {self.vocab_size}",
                  "tied embeddings" if self.tie_word_embeddings else "separate output"]
        return ", ".join(parts)

    def defaulted(self) -> list[str]:
        """Fields that were absent from the source and took transformers' default."""
        return [f for f, o in self.origin.items() if o == "default"]

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor a checkpoint of this architecture holds, in ggq naming, numpy shapes,
        in llama.cpp's order (embeddings, layers, output)."""
        h, f, hd = self.embedding_length, self.feed_forward_length, self.key_length
        out = {"token_embd.weight": (self.vocab_size, h), "output_norm.weight": (h,)}
        if not self.tie_word_embeddings:
            out["output.weight"] = (self.vocab_size, h)
        for i in range(self.block_count):
            p = f"blk.{i}."
            out.update({
                p + "attn_norm.weight": (h,),
                p + "attn_q.weight": (self.head_count * hd, h),
                p + "attn_k.weight": (self.head_count_kv * hd, h),
                p + "attn_v.weight": (self.head_count_kv * hd, h),
                p + "attn_output.weight": (h, self.head_count * hd),
            })
            if self.arch == "gemma3":
                out.update({p + "attn_q_norm.weight": (hd,), p + "attn_k_norm.weight": (hd,),
                            p + "post_attention_norm.weight": (h,)})
            out.update({
                p + "ffn_norm.weight": (h,),
                p + "ffn_gate.weight": (f, h),
                p + "ffn_up.weight": (f, h),
                p + "ffn_down.weight": (h, f),
            })
            if self.arch == "gemma3":
                out[p + "post_ffw_norm.weight"] = (h,)
        return out


# ---------------------------------------------------------------------------------------------
# config.json

class _Fields:
    """A config dict that remembers which keys were read, so the rest can be refused."""

    def __init__(self, cfg: dict, where: str):
        self.cfg, self.where, self.used, self.origin = cfg, where, set(), {}

    def fail(self, msg: str):
        raise ConvertError(f"{self.where}: {msg}")

    def raw(self, key: str, default=_ABSENT):
        self.used.add(key)
        return self.cfg.get(key, default)

    def present(self, key: str) -> bool:
        return key in self.cfg

    def int(self, key: str, default=_ABSENT, *, field_name: str | None = None, allow_none=False):
        v = self.raw(key)
        if v is _ABSENT or (v is None and allow_none):
            if default is _ABSENT:
                self.fail(f"config.json lacks {key}")
            self._note(field_name, "default")
            return default
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            self.fail(f"{key}: {_show(v)} is not a non-negative integer")
        self._note(field_name, key)
        return v

    def float(self, key: str, default=_ABSENT, *, field_name: str | None = None):
        v = self.raw(key)
        if v is _ABSENT:
            if default is _ABSENT:
                self.fail(f"config.json lacks {key}")
            self._note(field_name, "default")
            return default
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            self.fail(f"{key}: {_show(v)} is not a finite number")
        self._note(field_name, key)
        return float(v)

    def bool(self, key: str, default: bool, *, field_name: str | None = None) -> bool:
        v = self.raw(key)
        if v is _ABSENT:
            self._note(field_name, "default")
            return default
        if not isinstance(v, bool):
            self.fail(f"{key}: {_show(v)} is not true/false")
        self._note(field_name, key)
        return v

    def must_be(self, key: str, neutral: tuple, why: str) -> None:
        """A field we accept only at a value that leaves the math as ggq computes it."""
        v = self.raw(key)
        if v is not _ABSENT and not any(v is n or (type(v) is type(n) and v == n) for n in neutral):
            self.fail(f"{key}: {_show(v)} is not supported ({why})")

    def _note(self, field_name, origin):
        if field_name:
            self.origin[field_name] = origin

    def leftover(self, arch: str) -> list[str]:
        ok = HARMLESS_FIELDS | _ARCH_HARMLESS.get(arch, frozenset())
        return [k for k in self.cfg if k not in self.used and k not in ok]


def _show(v) -> str:
    import json
    try:
        s = json.dumps(v) if not isinstance(v, str) else v
    except (TypeError, ValueError, RecursionError):
        s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


_ROPE_KEYS = {"rope_type", "type", "rope_theta", "factor", "low_freq_factor", "high_freq_factor",
              "original_max_position_embeddings", "partial_rotary_factor"}


def _rope_dict(f: _Fields, d, label: str, allowed: tuple[str, ...], theta, theta_origin: str) -> dict:
    """One rope parameter set (4.x rope_scaling, or a 5.x rope_parameters entry) -> ggq fields.
    theta: the rope base known so far (None: must come from this dict)."""
    if d is None:
        d = {}
    if not isinstance(d, dict):
        f.fail(f"{label}: {_show(d)} is not an object")
    extra = sorted(set(d) - _ROPE_KEYS)
    if extra:
        f.fail(f"{label}.{extra[0]}: {_show(d[extra[0]])} is not supported (unknown rope parameter)")
    kind = d.get("rope_type", d.get("type", "default"))
    if kind not in allowed:
        f.fail(f"{label}: rope_type {_show(kind)} is not supported (supported: {', '.join(allowed)})")
    prf = d.get("partial_rotary_factor", 1.0)
    if prf != 1.0:
        f.fail(f"{label}.partial_rotary_factor: {_show(prf)} is not supported (rope on the whole head only)")
    if "rope_theta" in d:
        t = d["rope_theta"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            f.fail(f"{label}.rope_theta: {_show(t)} is not a positive number")
        if theta is not None and theta_origin != "default" and float(t) != theta:
            f.fail(f"{label}.rope_theta {t:g} disagrees with {theta_origin} {theta:g}")
        theta, theta_origin = float(t), f"{label}.rope_theta"
    out = {"rope_freq_base": theta, "_theta_origin": theta_origin, "rope_scaling_type": "none"}

    def num(k):
        if k not in d:
            f.fail(f"{label}: rope_type {kind} needs {k}")
        v = d[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            f.fail(f"{label}.{k}: {_show(v)} is not a positive number")
        return v

    if kind == "linear":
        out.update(rope_scaling_type="linear", rope_scaling_factor=float(num("factor")))
    elif kind == "llama3":
        out.update(rope_scaling_type="llama3", rope_scaling_factor=float(num("factor")),
                   rope_low_freq_factor=float(num("low_freq_factor")),
                   rope_high_freq_factor=float(num("high_freq_factor")),
                   rope_original_context_length=int(num("original_max_position_embeddings")))
    return out


def _parse_rope(f: _Fields, default_theta: float, allowed: tuple[str, ...],
                params=None, label="rope_parameters") -> dict:
    """Global rope: 4.x top-level rope_theta + rope_scaling, 5.x rope_parameters (or the
    per-layer-type entry given as params). Both layouts present must agree."""
    theta_top = f.raw("rope_theta")
    if theta_top is not _ABSENT:
        if isinstance(theta_top, bool) or not isinstance(theta_top, (int, float)) \
                or not math.isfinite(theta_top) or theta_top <= 0:
            f.fail(f"rope_theta: {_show(theta_top)} is not a positive number")
        theta, origin = float(theta_top), "rope_theta"
    else:
        theta, origin = default_theta, "default"
    scaling = f.raw("rope_scaling", None)
    if params is None:
        params = f.raw("rope_parameters", None)
    if params is not None:
        res = _rope_dict(f, params, label, allowed, theta, origin)
        if scaling not in (None, {}):  # 4.x copy next to 5.x: must say the same
            old = _rope_dict(f, scaling, "rope_scaling", allowed, res["rope_freq_base"], res["_theta_origin"])
            same = [k for k in res if k not in ("rope_freq_base", "_theta_origin")]
            if any(old.get(k) != res[k] for k in same) or len(old) != len(res):
                f.fail(f"rope_scaling {_show(scaling)} disagrees with {label} {_show(params)}")
    else:
        res = _rope_dict(f, scaling, "rope_scaling", allowed, theta, origin)
    if res["rope_freq_base"] is None:
        res["rope_freq_base"] = default_theta
    return res


def _common(f: _Fields, defaults: dict) -> dict:
    heads = f.int("num_attention_heads", field_name="head_count")
    hidden = f.int("hidden_size", field_name="embedding_length")
    if heads == 0 or hidden == 0:
        f.fail("num_attention_heads and hidden_size must be positive")
    kw = dict(
        block_count=f.int("num_hidden_layers", field_name="block_count"),
        embedding_length=hidden,
        feed_forward_length=f.int("intermediate_size", field_name="feed_forward_length"),
        head_count=heads,
        head_count_kv=f.int("num_key_value_heads", defaults.get("head_count_kv", heads),
                            field_name="head_count_kv", allow_none=True),
        vocab_size=f.int("vocab_size", field_name="vocab_size"),
        context_length=f.int("max_position_embeddings", defaults["context_length"],
                             field_name="context_length"),
        rms_eps=f.float("rms_norm_eps", defaults["rms_eps"], field_name="rms_eps"),
        tie_word_embeddings=f.bool("tie_word_embeddings", defaults["tie"], field_name="tie_word_embeddings"),
    )
    hd_default = defaults.get("head_dim")
    if hd_default is None:  # derived, as transformers does for llama
        if hidden % heads and (not f.present("head_dim") or f.cfg["head_dim"] is None):
            f.fail(f"hidden_size {hidden} is not a multiple of num_attention_heads {heads} and head_dim is not given")
        hd_default = hidden // heads
    kw["key_length"] = f.int("head_dim", hd_default, field_name="key_length", allow_none=True)
    f.must_be("attention_bias", (False,), "no attention biases")
    f.must_be("mlp_bias", (False,), "no MLP biases")
    f.must_be("partial_rotary_factor", (1.0, 1), "rope on the whole head only")
    f.must_be("quantization_config", (), "already-quantized Hugging Face weights; convert the float checkpoint")
    f.must_be("auto_map", (), "custom modelling code")
    f.must_be("use_bidirectional_attention", (False,), "causal attention only")
    return kw


def _parse_llama(f: _Fields, hf_arch: str) -> dict:
    mistral = hf_arch == "MistralForCausalLM"
    # transformers' LlamaConfig / MistralConfig defaults for absent fields
    defaults = {"context_length": 4096 * 32 if mistral else 2048, "rms_eps": 1e-6, "tie": False}
    kw = _common(f, defaults)
    act = f.raw("hidden_act", "silu")
    if act not in ("silu", "swish"):
        f.fail(f"hidden_act: {_show(act)} is not supported (silu only)")
    if mistral:
        sw = f.raw("sliding_window", 4096)
        if sw is not None and (isinstance(sw, bool) or not isinstance(sw, int)):
            f.fail(f"sliding_window: {_show(sw)} is not an integer")
        if sw is not None and sw < kw["context_length"]:
            f.fail(f"sliding_window: {sw} is not supported (sliding-window attention on a llama-style "
                   f"model; context {kw['context_length']})")
    else:
        f.must_be("sliding_window", (None,), "sliding-window attention on a llama")
    f.must_be("rope_interleaved", (False,), "rope on interleaved pairs; transformers' llama rotates halves")
    rope = _parse_rope(f, 10000.0, ("default", "linear", "llama3"))
    f.origin["rope_freq_base"] = rope.pop("_theta_origin")
    kw.update(rope)
    return kw


def _parse_gemma3(f: _Fields) -> dict:
    # transformers' Gemma3TextConfig defaults for absent fields
    defaults = {"context_length": 131072, "rms_eps": 1e-6, "tie": True, "head_count_kv": 4, "head_dim": 256}
    kw = _common(f, defaults)
    act = f.raw("hidden_activation", "gelu_pytorch_tanh")
    if act != "gelu_pytorch_tanh":
        f.fail(f"hidden_activation: {_show(act)} is not supported (gelu_pytorch_tanh only)")
    f.must_be("attn_logit_softcapping", (None,), "no attention-logit softcapping in Gemma 3")
    cap = f.raw("final_logit_softcapping", None)
    if cap is not None:
        if isinstance(cap, bool) or not isinstance(cap, (int, float)) or not math.isfinite(cap) or cap <= 0:
            f.fail(f"final_logit_softcapping: {_show(cap)} is not a positive number")
        cap = float(cap)
    kw["final_logit_softcapping"] = cap
    kw["query_pre_attn_scalar"] = f.float("query_pre_attn_scalar", 256.0, field_name="query_pre_attn_scalar")
    sw = f.raw("sliding_window", 4096)
    if sw is not None and (isinstance(sw, bool) or not isinstance(sw, int) or sw < 0):
        f.fail(f"sliding_window: {_show(sw)} is not a non-negative integer")
    kw["sliding_window"] = sw or 0
    f.origin["sliding_window"] = "sliding_window" if f.present("sliding_window") else "default"

    # which layers slide: layer_types when given (transformers derives it from the integer
    # pattern only when it is absent, and still writes a stale `_sliding_window_pattern` next to it)
    n = kw["block_count"]
    pat = None
    for key in ("sliding_window_pattern", "_sliding_window_pattern"):
        v = f.raw(key)
        if v is not _ABSENT and v is not None:
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                f.fail(f"{key}: {_show(v)} is not a non-negative integer")
            pat = v if pat is None else pat
    lt = f.raw("layer_types", None)
    if lt is not None:
        if not isinstance(lt, list) or len(lt) != n or \
                any(t not in ("sliding_attention", "full_attention") for t in lt):
            f.fail(f"layer_types: expected {n} entries of sliding_attention/full_attention, got {_show(lt)}")
        local = tuple(t == "sliding_attention" for t in lt)
        # keep the compact llama.cpp form when the list follows it
        first_full = local.index(False) + 1 if False in local else 0
        rule = tuple(first_full == 0 or i % first_full < first_full - 1 for i in range(n))
        kw["sliding_window_pattern"] = first_full if local == rule else local
    else:  # transformers: layer i slides iff (i + 1) % pattern != 0, the same as llama.cpp's rule
        kw["sliding_window_pattern"] = 6 if pat is None else pat
    f.origin["sliding_window_pattern"] = "layer_types" if lt is not None else (
        "sliding_window_pattern" if pat is not None else "default")

    # rope: 4.x rope_theta/rope_scaling (global) + rope_local_base_freq; 5.x rope_parameters by layer type
    params = f.raw("rope_parameters", None)
    local_params = None
    if params is not None:
        if not isinstance(params, dict):
            f.fail(f"rope_parameters: {_show(params)} is not an object")
        if set(params) <= {"full_attention", "sliding_attention"} and params:
            local_params = params.get("sliding_attention")
            params = params.get("full_attention")
            label = "rope_parameters.full_attention"
        else:
            label = "rope_parameters"
        rope = _parse_rope(f, 1_000_000.0, ("default", "linear"), params=params or {}, label=label)
    else:
        rope = _parse_rope(f, 1_000_000.0, ("default", "linear"))
    f.origin["rope_freq_base"] = rope.pop("_theta_origin")
    kw.update(rope)
    local_top = f.raw("rope_local_base_freq")
    local_base, origin = 10_000.0, "default"
    if local_top is not _ABSENT:
        if isinstance(local_top, bool) or not isinstance(local_top, (int, float)) or local_top <= 0:
            f.fail(f"rope_local_base_freq: {_show(local_top)} is not a positive number")
        local_base, origin = float(local_top), "rope_local_base_freq"
    if local_params is not None:
        loc = _rope_dict(f, local_params, "rope_parameters.sliding_attention", ("default",),
                         local_base, origin)
        local_base, origin = loc["rope_freq_base"], loc["_theta_origin"]
    kw["rope_freq_base_swa"] = local_base
    f.origin["rope_freq_base_swa"] = origin
    return kw


def _parse_hf(cfg: dict, where: str) -> ModelConfig:
    f = _Fields(cfg, where)
    archs = f.raw("architectures", None)
    hf_arch = archs[0] if isinstance(archs, list) and archs else None
    if hf_arch is None and isinstance(cfg.get("model_type"), str):
        hf_arch = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                   "gemma3_text": "Gemma3ForCausalLM"}.get(cfg["model_type"])
    if hf_arch == "Gemma3ForConditionalGeneration" or "text_config" in cfg:
        f.fail("multimodal checkpoints are not supported (a text-only Gemma3ForCausalLM is)")
    if not isinstance(hf_arch, str) or hf_arch not in HF_ARCHITECTURES:
        f.fail(f"architecture {_show(hf_arch)} is not supported (supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    arch = HF_ARCHITECTURES[hf_arch]
    kw = _parse_gemma3(f) if arch == "gemma3" else _parse_llama(f, hf_arch)
    name = cfg.get("_name_or_path")
    kw["name"] = name if isinstance(name, str) else ""
    left = f.leftover(arch)
    if left:
        k = left[0]
        f.fail(f"{k}: {_show(cfg[k])} is a config field ggq does not know; it may change the model, "
               "so ggq refuses to guess")
    origin = dict(f.origin)
    c = ModelConfig(arch=arch, **kw)
    c.origin = origin
    return c.validate(where)


__all__ = ["ModelConfig", "HF_ARCHITECTURES", "SUPPORTED_ARCHITECTURES", "HARMLESS_FIELDS", "ARCHES"]
