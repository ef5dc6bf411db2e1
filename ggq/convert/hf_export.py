"""Export a llama GGUF as a Hugging Face folder: config.json, model.safetensors (float32,
dequantized, HF names, attn_q/attn_k rows back in HF order), tokenizer.json (rebuilt from the
GGUF's vocabulary), tokenizer_config.json and generation_config.json.

model.safetensors is streamed one tensor at a time (memory: one tensor). Everything is written
into a temporary sibling folder and renamed into place at the end, so a failure leaves nothing.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

import numpy as np

from ..errors import ConvertError
from .sources import GGUFSource, ggq_to_hf_name


def write_safetensors_streaming(path: Path, names_shapes: list[tuple[str, tuple]], get) -> None:
    """Write an all-F32 safetensors file; get(name) returns each float32 array in turn."""
    header, off = {}, 0
    for name, shape in names_shapes:
        n = int(np.prod(shape)) * 4
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    header["__metadata__"] = {"format": "pt"}
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)  # data section 8-byte aligned, as the reference writer does
    with open(path, "wb") as fh:
        fh.write(len(hb).to_bytes(8, "little"))
        fh.write(hb)
        for name, shape in names_shapes:
            a = np.ascontiguousarray(get(name), dtype="<f4")
            if a.shape != tuple(shape):
                raise ConvertError(f"{path.name}: tensor {name!r} has shape {a.shape}, expected {shape}")
            fh.write(memoryview(a.reshape(-1)).cast("B"))
        fh.flush()
        os.fsync(fh.fileno())


def hf_config(src: GGUFSource) -> dict:
    """config.json in the layout transformers 5 writes (rope in `rope_parameters`, `dtype`)."""
    c = src.config
    if c.arch != "llama":
        raise ConvertError(f"{src.path.name}: only llama models can be exported as a Hugging Face folder")
    rope = {"rope_theta": c.rope_freq_base, "rope_type": "default"}
    if c.rope_scaling_type == "linear":
        rope.update(rope_type="linear", factor=c.rope_scaling_factor)
    elif c.rope_scaling_type == "llama3":
        rope.update(rope_type="llama3", factor=c.rope_scaling_factor,
                    low_freq_factor=c.rope_low_freq_factor, high_freq_factor=c.rope_high_freq_factor,
                    original_max_position_embeddings=c.rope_original_context_length)
    cfg = {
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "dtype": "float32", "head_dim": c.key_length, "hidden_act": "silu",
        "hidden_size": c.embedding_length, "initializer_range": 0.02,
        "intermediate_size": c.feed_forward_length, "max_position_embeddings": c.context_length,
        "mlp_bias": False, "model_type": "llama", "num_attention_heads": c.head_count,
        "num_hidden_layers": c.block_count, "num_key_value_heads": c.head_count_kv,
        "pretraining_tp": 1, "rms_norm_eps": float(str(np.float32(c.rms_eps))), "rope_parameters": rope,
        "tie_word_embeddings": c.tie_word_embeddings, "transformers_version": "5.0.0",
        "use_cache": True, "vocab_size": c.vocab_size,
    }
    if src.bos_token_id >= 0:
        cfg["bos_token_id"] = src.bos_token_id
    if src.eos_token_id >= 0:
        cfg["eos_token_id"] = src.eos_token_id
    return dict(sorted(cfg.items()))


def export_gguf_to_hf(gguf_path, out_dir, force: bool = False) -> Path:
    """Write the HF folder out_dir from gguf_path; returns out_dir."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise ConvertError(f"{out_dir} already exists; refusing to overwrite it (use --force)")
    if not out_dir.parent.is_dir():
        raise ConvertError(f"{out_dir}: folder {out_dir.parent} does not exist")
    src = GGUFSource(Path(gguf_path))
    if not src.tokenizer_json:
        raise ConvertError(f"{Path(gguf_path).name}: no tokenizer to export")
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        names = [(ggq_to_hf_name(n), tuple(src.tensor_info(n).shape)) for n in src.tensor_names()]
        back = {ggq_to_hf_name(n): n for n in src.tensor_names()}
        write_safetensors_streaming(tmp / "model.safetensors", names, lambda hf: src.get(back[hf]))
        (tmp / "config.json").write_text(json.dumps(hf_config(src), indent=2) + "\n")
        (tmp / "tokenizer.json").write_text(src.tokenizer_json, encoding="utf-8")
        vocab_tokens = {t["id"]: t["content"] for t in json.loads(src.tokenizer_json)["added_tokens"]}
        tj_vocab = None

        def token(i: int):
            nonlocal tj_vocab
            if i < 0:
                return None
            if i in vocab_tokens:
                return vocab_tokens[i]
            if tj_vocab is None:
                tj_vocab = {v: k for k, v in json.loads(src.tokenizer_json)["model"]["vocab"].items()}
            return tj_vocab.get(i)

        tok_cfg = {
            "add_bos_token": bool(src.add_bos_token), "add_eos_token": False,
            "bos_token": token(src.bos_token_id), "eos_token": token(src.eos_token_id),
            "unk_token": None, "pad_token": token(src.eos_token_id),
            "clean_up_tokenization_spaces": False, "model_max_length": src.config.context_length,
            "tokenizer_class": "GPT2Tokenizer",
        }
        if src.chat_template:
            tok_cfg["chat_template"] = src.chat_template
        (tmp / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2, ensure_ascii=False) + "\n")
        gen = {k: v for k, v in (("bos_token_id", src.bos_token_id), ("eos_token_id", src.eos_token_id))
               if v >= 0}
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        if out_dir.exists():  # force: swap the old folder out only once the new one is complete
            old = out_dir.parent / f".{out_dir.name}.old-{secrets.token_hex(4)}"
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        src.close()
    return out_dir
