"""GGUF export: the file reads back with the gguf package, tensors are the same bytes (Q/K rows in
llama.cpp order), metadata and tokenizer survive, and GGUF -> .ggq -> GGUF is a full round trip."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from gguf import GGUFReader  # noqa: E402
from gguf.quants import dequantize as gguf_dequantize  # noqa: E402

from ggq.errors import ConvertError, FormatError, GGQError  # noqa: E402
from ggq.format import GGQReader, GGQWriter  # noqa: E402
from ggq.gguf_io import export_gguf, llama3_rope_factors, tokenizer_fields  # noqa: E402
from ggq.quants import get_type  # noqa: E402
from tiny_model import make_tiny_hf_dir  # noqa: E402

HEADS, KV_HEADS = 4, 2
# every type ggq has, spread over the tiny model's 2-D tensors (rows of 256 / 512 fit them all)
MIX = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "F16", "BF16", "F32"]

TEXT = ("Hello world! The year was 1990, in  1990 and 2024.  Whitespace   runs\t\ttabs\n\nnew lines. "
        "Unicode: café, naïve, Zürich, 日本語のテキスト, emoji 🤖🚀. Code: def f(x):\n    return x**2 + 3.14\n"
        "<|im_start|>user\nWhat is 12+7?<|im_end|>\n<|im_start|>assistant\n19<|im_end|><|endoftext|>")


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Written out from llama.cpp's convert_hf_to_gguf.py (LlamaModel.permute), as the reference."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def heads_of(name: str) -> int | None:
    if name.endswith("attn_q.weight"):
        return HEADS
    if name.endswith("attn_k.weight"):
        return KV_HEADS
    return None


def gguf_tensors(path) -> dict:
    r = GGUFReader(str(path))
    return {t.name: t for t in r.tensors}


def field(r: GGUFReader, key: str):
    return r.fields[key].contents()


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    # rows of 256/512: every block size divides them; untied so output.weight is exported too
    return make_tiny_hf_dir(tmp_path_factory.mktemp("hf256"), hidden=256, intermediate=512,
                            heads=HEADS, kv_heads=KV_HEADS, tied=False, seed=3)


@pytest.fixture(scope="module")
def converted(hf_dir, tmp_path_factory):
    from ggq.convert import convert_model

    out = tmp_path_factory.mktemp("conv") / "tiny.q4_k_m.ggq"
    convert_model(hf_dir, out, preset="q4_k_m")
    return out


@pytest.fixture(scope="module")
def mixed(converted, tmp_path_factory):
    """The converted model rewritten with every quant type, metadata copied with its types."""
    out = tmp_path_factory.mktemp("mixed") / "tiny.mixed.ggq"
    with GGQReader(converted) as f, GGQWriter(out) as w:
        for k, v in f.metadata.items():
            if k not in ("quantization.tensor_methods", "general.preset"):
                w.add_metadata(k, v, f.metadata_types[k])
        plan = {}
        i = 0
        for name, info in f.tensors.items():
            qt = get_type("F32") if len(info.shape) == 1 else get_type(MIX[i % len(MIX)])
            i += len(info.shape) == 2
            plan[name] = qt
            w.add_tensor(name, qt, info.shape)
        for name, info in f.tensors.items():
            x = f.dequantize(name).reshape(-1, info.shape[-1])
            w.write_tensor(name, plan[name].quantize(x))
    return out


@pytest.fixture(scope="module")
def exported(mixed, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    export_gguf(mixed, out)
    return out


# ----------------------------------------------------------------------------- tensors

def test_every_type_present(mixed):
    with GGQReader(mixed) as f:
        types = {i.qtype.name for i in f.tensors.values()}
    assert set(MIX) <= types


def test_tensors_dequantize_like_gguf_package(mixed, exported):
    tensors = gguf_tensors(exported)
    with GGQReader(mixed) as f:
        assert set(tensors) == set(f.tensors)
        for name, info in f.tensors.items():
            t = tensors[name]
            assert int(t.tensor_type) == info.type_id, name
            assert tuple(int(d) for d in reversed(t.shape.tolist())) == tuple(info.shape), name
            ref = gguf_dequantize(t.data, t.tensor_type).reshape(info.shape).astype(np.float32)
            mine = f.dequantize(name).reshape(info.shape)
            h = heads_of(name)
            if h is not None:
                # llama.cpp order really differs from HF order, and the permutation explains it all
                assert not np.array_equal(ref, mine), name
                mine = llama_cpp_permute(mine, h)
            np.testing.assert_array_equal(ref, mine, err_msg=name)


def test_tensor_bytes_copied_not_requantized(mixed, exported):
    tensors = gguf_tensors(exported)
    with GGQReader(mixed) as f:
        for name, info in f.tensors.items():
            raw = np.asarray(f.raw(name)).reshape(-1, f.raw(name).shape[-1])
            h = heads_of(name)
            if h is not None:
                raw = llama_cpp_permute(raw, h)
            got = np.asarray(tensors[name].data).reshape(-1).view(np.uint8)
            assert got.tobytes() == raw.tobytes(), name


# ----------------------------------------------------------------------------- metadata

def test_metadata_keys(mixed, exported):
    r = GGUFReader(str(exported))
    with GGQReader(mixed) as f:
        md = f.metadata
    assert field(r, "GGUF.version") == 3
    assert field(r, "general.architecture") == "llama"
    assert field(r, "general.name") == md["general.name"]
    assert field(r, "general.quantization_version") == 2
    for k in ("block_count", "embedding_length", "feed_forward_length", "attention.head_count",
              "attention.head_count_kv", "context_length"):
        assert field(r, "llama." + k) == md["llama." + k], k
    assert field(r, "llama.rope.dimension_count") == 256 // HEADS
    assert field(r, "llama.vocab_size") == len(r.fields["tokenizer.ggml.tokens"].data)
    assert field(r, "llama.rope.freq_base") == pytest.approx(md["llama.rope.freq_base"])
    assert field(r, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(
        md["llama.attention.layer_norm_rms_epsilon"])
    assert "llama.rope.scaling.type" not in r.fields  # none: llama.cpp's default
    assert field(r, "tokenizer.ggml.model") == "gpt2"
    assert field(r, "tokenizer.ggml.pre") == "smollm"
    assert field(r, "tokenizer.ggml.eos_token_id") == md["tokenizer.eos_token_id"]
    assert field(r, "tokenizer.ggml.add_bos_token") == bool(md["tokenizer.add_bos_token"])
    assert field(r, "tokenizer.chat_template") == md["tokenizer.chat_template"]
    # value types as llama.cpp reads them
    assert r.fields["llama.block_count"].types == [gguf.GGUFValueType.UINT32]
    assert r.fields["llama.rope.freq_base"].types == [gguf.GGUFValueType.FLOAT32]


def test_tokenizer_arrays(mixed, exported):
    r = GGUFReader(str(exported))
    with GGQReader(mixed) as f:
        tj = json.loads(f.metadata["tokenizer.huggingface.json"])
        n_vocab = f.tensors["token_embd.weight"].shape[0]
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    types = r.fields["tokenizer.ggml.token_type"].contents()
    merges = r.fields["tokenizer.ggml.merges"].contents()
    assert len(tokens) == len(types) == n_vocab
    for s, i in tj["model"]["vocab"].items():
        assert tokens[i] == s
    for a in tj["added_tokens"]:
        assert tokens[a["id"]] == a["content"] and types[a["id"]] == 3  # control
    assert merges == [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    n_real = len(tj["model"]["vocab"])
    assert all(t == 5 for t in types[n_real:])  # padding rows: unused
    assert sum(t == 1 for t in types) == n_real - len(tj["added_tokens"])


def test_tokenizer_rebuilt_from_gguf_encodes_identically(mixed, exported):
    from tokenizers import Tokenizer

    from ggq.convert.tokenizer_gguf import tokenizer_from_gguf

    with GGQReader(mixed) as f:
        orig = Tokenizer.from_str(f.metadata["tokenizer.huggingface.json"])
    rebuilt = Tokenizer.from_str(tokenizer_from_gguf(GGUFReader(str(exported)), "x").json)
    a = orig.encode(TEXT, add_special_tokens=True).ids
    b = rebuilt.encode(TEXT, add_special_tokens=True).ids
    assert a == b
    assert 1 in a and 2 in a  # special tokens were matched whole
    assert orig.decode(a, skip_special_tokens=False) == rebuilt.decode(b, skip_special_tokens=False)


def test_tokenizer_fields_user_defined_and_pairs():
    tj = {"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": [["a", "b"]],
                    "unk_token": "a"},
          "added_tokens": [{"id": 3, "content": "<x>", "special": True},
                           {"id": 4, "content": "hello", "special": False}]}
    tf = tokenizer_fields(tj, 6)
    assert tf["tokens"] == ["a", "b", "ab", "<x>", "hello", "[PAD5]"]
    assert tf["token_type"] == [1, 1, 1, 3, 4, 5]
    assert tf["merges"] == ["a b"] and tf["unk_id"] == 0
    with pytest.raises(GGQError):
        tokenizer_fields(tj, 4)  # more token ids than embedding rows
    with pytest.raises(GGQError):
        tokenizer_fields({"model": {"type": "Unigram"}}, 4)


# ----------------------------------------------------------------------------- round trip

def test_round_trip_gguf_to_ggq(mixed, exported, tmp_path):
    from tokenizers import Tokenizer

    from ggq.convert import convert_model

    back = tmp_path / "back.ggq"
    convert_model(exported, back, preset="keep")
    with GGQReader(mixed) as a, GGQReader(back) as b:
        assert list(a.tensors) == list(b.tensors) or set(a.tensors) == set(b.tensors)
        for name, ia in a.tensors.items():
            ib = b.tensors[name]
            assert (ia.type_id, tuple(ia.shape)) == (ib.type_id, tuple(ib.shape)), name
            assert a.raw(name).tobytes() == b.raw(name).tobytes(), name
        for k in ("general.architecture", "llama.block_count", "llama.embedding_length",
                  "llama.feed_forward_length", "llama.attention.head_count", "llama.attention.head_count_kv",
                  "llama.context_length", "llama.tie_word_embeddings", "tokenizer.bos_token_id",
                  "tokenizer.eos_token_id", "tokenizer.add_bos_token", "tokenizer.chat_template",
                  "tokenizer.ggml.pre"):
            assert a.metadata.get(k) == b.metadata.get(k), k
        for k in ("llama.rope.freq_base", "llama.attention.layer_norm_rms_epsilon"):
            assert a.metadata[k] == pytest.approx(b.metadata[k], rel=1e-7), k
        assert b.metadata.get("llama.rope.scaling.type", "none") == a.metadata.get("llama.rope.scaling.type", "none")
        ta = Tokenizer.from_str(a.metadata["tokenizer.huggingface.json"])
        tb = Tokenizer.from_str(b.metadata["tokenizer.huggingface.json"])
        assert ta.encode(TEXT).ids == tb.encode(TEXT).ids
    # and exporting the round-tripped file gives the same GGUF tensors again
    again = tmp_path / "again.gguf"
    export_gguf(back, again)
    t1, t2 = gguf_tensors(exported), gguf_tensors(again)
    for name in t1:
        assert np.asarray(t1[name].data).tobytes() == np.asarray(t2[name].data).tobytes(), name


def test_exported_preset_file_type(converted, tmp_path):
    out = tmp_path / "p.gguf"
    export_gguf(converted, out)
    r = GGUFReader(str(out))
    assert field(r, "general.file_type") == int(gguf.LlamaFileType.MOSTLY_Q4_K_M)


# ----------------------------------------------------------------------------- rope scaling

def test_llama3_rope_factors_and_linear(hf_dir, tmp_path):
    from ggq.convert import convert_model

    src = make_tiny_hf_dir(tmp_path / "l3", hidden=256, intermediate=512, heads=HEADS, kv_heads=KV_HEADS,
                           rope_theta=500000.0, rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                                              "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                              "original_max_position_embeddings": 64})
    g = tmp_path / "l3.ggq"
    convert_model(src, g, preset="q8_0")
    out = tmp_path / "l3.gguf"
    export_gguf(g, out)
    r = GGUFReader(str(out))
    assert "llama.rope.scaling.type" not in r.fields and "llama.rope.scaling.factor" not in r.fields
    rf = {t.name: t for t in r.tensors}["rope_freqs.weight"]
    got = np.asarray(rf.data, dtype=np.float32)
    # spot values from the formula: highest frequency unscaled, lowest scaled by the full factor
    assert got.shape == (32,) and got[0] == 1.0 and got[-1] == pytest.approx(8.0)
    np.testing.assert_allclose(got, llama3_rope_factors(64, 500000.0, 8.0, 1.0, 4.0, 64))
    assert field(r, "ggq.rope.scaling.type") == "llama3"

    src2 = make_tiny_hf_dir(tmp_path / "lin", hidden=256, intermediate=512, heads=HEADS, kv_heads=KV_HEADS,
                            rope_scaling={"rope_type": "linear", "factor": 2.0})
    g2 = tmp_path / "lin.ggq"
    convert_model(src2, g2, preset="q8_0")
    out2 = tmp_path / "lin.gguf"
    export_gguf(g2, out2)
    r2 = GGUFReader(str(out2))
    assert field(r2, "llama.rope.scaling.type") == "linear"
    assert field(r2, "llama.rope.scaling.factor") == pytest.approx(2.0)


# ----------------------------------------------------------------------------- bad input / CLI

def test_refuses_overwrite_and_leaves_nothing(mixed, tmp_path):
    out = tmp_path / "o.gguf"
    out.write_bytes(b"keep me")
    with pytest.raises(ConvertError, match="exists"):
        export_gguf(mixed, out)
    assert out.read_bytes() == b"keep me"
    export_gguf(mixed, out, force=True)
    assert GGUFReader(str(out)).tensors
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.gguf"]


def test_bad_input_is_a_one_line_error(tmp_path):
    from ggq.cli import main

    bad = tmp_path / "bad.ggq"
    bad.write_bytes(b"not a model at all" * 10)
    out = tmp_path / "x.gguf"
    with pytest.raises(FormatError, match="bad.ggq"):
        export_gguf(bad, out)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.ggq"]
    assert main(["export", str(bad), "-o", str(out)]) == 1


def test_cli_export(mixed, tmp_path, capsys):
    from ggq.cli import main

    out = tmp_path / "cli.gguf"
    assert main(["export", str(mixed), "-o", str(out)]) == 0
    assert out.exists()
    assert main(["export", str(mixed), "-o", str(out)]) == 1
    assert "exists" in capsys.readouterr().err
    assert main(["export", str(mixed), "-o", str(out), "--force"]) == 0


# ----------------------------------------------------------------------------- the real model

@pytest.mark.smollm2
def test_smollm2_import_export_is_byte_identical(smollm2_gguf, tmp_path):
    from ggq.convert import convert_model

    g = tmp_path / "smol.ggq"
    convert_model(smollm2_gguf, g, preset="keep")
    out = tmp_path / "smol.gguf"
    export_gguf(g, out)
    ra, rb = GGUFReader(str(smollm2_gguf)), GGUFReader(str(out))
    ta, tb = {t.name: t for t in ra.tensors}, {t.name: t for t in rb.tensors}
    assert set(ta) == set(tb)
    for name, t in ta.items():
        u = tb[name]
        assert (t.tensor_type, t.shape.tolist()) == (u.tensor_type, u.shape.tolist()), name
        assert np.asarray(t.data).tobytes() == np.asarray(u.data).tobytes(), name
    for k in ("general.architecture", "llama.block_count", "llama.context_length", "llama.embedding_length",
              "llama.feed_forward_length", "llama.attention.head_count", "llama.attention.head_count_kv",
              "llama.rope.freq_base", "llama.attention.layer_norm_rms_epsilon", "llama.vocab_size",
              "llama.rope.dimension_count", "general.file_type", "general.quantization_version",
              "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.bos_token_id",
              "tokenizer.ggml.eos_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.chat_template",
              "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges"):
        assert ra.fields[k].contents() == rb.fields[k].contents(), k
        assert ra.fields[k].types == rb.fields[k].types, k
    assert os.path.getsize(out) == pytest.approx(os.path.getsize(smollm2_gguf), rel=0.01)


# ============================================================================= gemma3 + SentencePiece

G_HIDDEN, G_HEADS, G_KV, G_HD, G_FFN = 256, 4, 1, 64, 512


def spm_vocab():
    """A tiny SentencePiece vocabulary, Gemma-like: control, user-defined, byte and scored tokens."""
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "\n", "\n\n", "  "]
    types = [3, 3, 3, 3, 3, 3, 4, 4, 4]
    scores = [-1000.0] * len(tokens)
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        types.append(6)
        scores.append(0.0)
    for i, t in enumerate(["▁", "a", "b", "c", "h", "i", "ab", "bc", "abc", "▁a", "hi", "▁hi", "▁abc"]):
        tokens.append(t)
        types.append(1)
        scores.append(-float(i))
    return tokens, scores, types


def spm_gguf_tokenizer(tmp_path, add_space_prefix: bool):
    from ggq.convert.tokenizer_gguf import tokenizer_from_gguf

    tokens, scores, types = spm_vocab()
    p = tmp_path / f"spm{int(add_space_prefix)}.gguf"
    w = gguf.GGUFWriter(str(p), "gemma3")
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(add_space_prefix)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tokenizer_from_gguf(GGUFReader(str(p)), p.name)


def gemma3_shapes(n_vocab: int, layers: int = 2) -> dict:
    out = {"token_embd.weight": (n_vocab, G_HIDDEN), "output_norm.weight": (G_HIDDEN,)}
    for i in range(layers):
        p = f"blk.{i}."
        out.update({p + "attn_norm.weight": (G_HIDDEN,), p + "attn_q.weight": (G_HEADS * G_HD, G_HIDDEN),
                    p + "attn_k.weight": (G_KV * G_HD, G_HIDDEN), p + "attn_v.weight": (G_KV * G_HD, G_HIDDEN),
                    p + "attn_output.weight": (G_HIDDEN, G_HEADS * G_HD), p + "attn_q_norm.weight": (G_HD,),
                    p + "attn_k_norm.weight": (G_HD,), p + "post_attention_norm.weight": (G_HIDDEN,),
                    p + "ffn_norm.weight": (G_HIDDEN,), p + "ffn_gate.weight": (G_FFN, G_HIDDEN),
                    p + "ffn_up.weight": (G_FFN, G_HIDDEN), p + "ffn_down.weight": (G_HIDDEN, G_FFN),
                    p + "post_ffw_norm.weight": (G_HIDDEN,)})
    return out


def write_gemma3_ggq(path, tk, *, ggml_metadata: bool = True, **overrides):
    """A .ggq as the converter writes a gemma3 model; overrides: metadata key -> (value, vtype),
    value None drops the key. ggml_metadata False: only the tokenizer.json (an HF-made .ggq)."""
    tokens = json.loads(tk.json)
    n_vocab = max(list(tokens["model"]["vocab"].values()) + [a["id"] for a in tokens["added_tokens"]]) + 1
    md = {"general.architecture": ("gemma3", "str"), "general.name": ("tiny gemma", "str"),
          "gemma3.block_count": (2, "u32"), "gemma3.embedding_length": (G_HIDDEN, "u32"),
          "gemma3.feed_forward_length": (G_FFN, "u32"), "gemma3.attention.head_count": (G_HEADS, "u32"),
          "gemma3.attention.head_count_kv": (G_KV, "u32"), "gemma3.attention.key_length": (G_HD, "u32"),
          "gemma3.attention.layer_norm_rms_epsilon": (1e-6, "f32"), "gemma3.rope.freq_base": (1e6, "f32"),
          "gemma3.rope.scaling.type": ("none", "str"), "gemma3.context_length": (4096, "u32"),
          "gemma3.vocab_size": (n_vocab, "u32"), "gemma3.tie_word_embeddings": (True, "bool"),
          "gemma3.rope.freq_base_swa": (10000.0, "f32"), "gemma3.attention.sliding_window": (512, "u32"),
          "gemma3.attention.sliding_window_pattern": (6, "u32"),
          "gemma3.attention.query_pre_attn_scalar": (float(G_HD), "f32"),
          "tokenizer.huggingface.json": (tk.json, "str"), "tokenizer.bos_token_id": (tk.bos_token_id, "i32"),
          "tokenizer.eos_token_id": (tk.eos_token_id, "i32"), "tokenizer.add_bos_token": (tk.add_bos_token, "bool")}
    if ggml_metadata:
        md.update({k: (v, vt) for k, v, vt in tk.metadata})
    md.update(overrides)
    types = ["Q8_0", "Q4_K", "Q6_K", "Q5_0", "Q4_0", "F16"]
    rng = np.random.default_rng(5)
    with GGQWriter(path) as w:
        for k, (v, vt) in md.items():
            if v is not None:
                w.add_metadata(k, v, vt)
        plan = {}
        for i, (name, shape) in enumerate(gemma3_shapes(n_vocab).items()):
            plan[name] = (get_type("F32") if len(shape) == 1 else get_type(types[i % len(types)]), shape)
            w.add_tensor(name, plan[name][0], shape)
        for name, (qt, shape) in plan.items():
            x = rng.standard_normal(shape, dtype=np.float32).reshape(-1, shape[-1])
            w.write_tensor(name, qt.quantize(x))
    return path


TEXTS_SPM = ["abc hi", " a bc  hi\n\nabc", "<start_of_turn>user\nhi<end_of_turn>\n", "héé 🦙 abcabc", "", "hi"]


@pytest.fixture(scope="module")
def gemma3_tk(tmp_path_factory):
    return spm_gguf_tokenizer(tmp_path_factory.mktemp("spm"), add_space_prefix=False)


@pytest.fixture(scope="module")
def gemma3_pair(gemma3_tk, tmp_path_factory):
    d = tmp_path_factory.mktemp("g3")
    g = write_gemma3_ggq(d / "g.ggq", gemma3_tk)
    out = export_gguf(g, d / "g.gguf")
    return g, out


def test_gemma3_hyperparameters(gemma3_pair):
    g, out = gemma3_pair
    r = GGUFReader(str(out))
    U32, F32 = [gguf.GGUFValueType.UINT32], [gguf.GGUFValueType.FLOAT32]
    want = {"block_count": (2, U32), "embedding_length": (G_HIDDEN, U32), "feed_forward_length": (G_FFN, U32),
            "attention.head_count": (G_HEADS, U32), "attention.head_count_kv": (G_KV, U32),
            "attention.key_length": (G_HD, U32), "attention.value_length": (G_HD, U32),
            "context_length": (4096, U32), "attention.sliding_window": (512, U32),
            "attention.sliding_window_pattern": (6, U32)}
    assert field(r, "general.architecture") == "gemma3"
    for k, (v, t) in want.items():
        assert field(r, "gemma3." + k) == v and r.fields["gemma3." + k].types == t, k
    for k, v in (("rope.freq_base", 1e6), ("rope.freq_base_swa", 1e4), ("attention.layer_norm_rms_epsilon", 1e-6)):
        assert field(r, "gemma3." + k) == pytest.approx(v) and r.fields["gemma3." + k].types == F32, k
    # not llama.cpp keys (or not what llama.cpp's own gemma3 converter writes)
    for k in ("attention.query_pre_attn_scalar", "tie_word_embeddings", "rope.dimension_count",
              "rope.scaling.type", "final_logit_softcapping", "vocab_size"):
        assert "gemma3." + k not in r.fields, k


def test_gemma3_tensors_not_permuted(gemma3_pair):
    g, out = gemma3_pair
    tensors = gguf_tensors(out)
    with GGQReader(g) as f:
        assert set(tensors) == set(f.tensors)
        for name, info in f.tensors.items():
            t = tensors[name]
            assert int(t.tensor_type) == info.type_id, name
            assert tuple(int(d) for d in reversed(t.shape.tolist())) == tuple(info.shape), name
            assert np.asarray(t.data).reshape(-1).view(np.uint8).tobytes() == f.raw(name).tobytes(), name


def test_spm_tokenizer_written_from_metadata(gemma3_pair, gemma3_tk):
    from tokenizers import Tokenizer

    from ggq.convert.tokenizer_gguf import tokenizer_from_gguf

    g, out = gemma3_pair
    r = GGUFReader(str(out))
    tokens, scores, types = spm_vocab()
    assert field(r, "tokenizer.ggml.model") == "llama" and field(r, "tokenizer.ggml.pre") == "default"
    assert field(r, "tokenizer.ggml.tokens") == tokens
    assert field(r, "tokenizer.ggml.scores") == scores
    assert field(r, "tokenizer.ggml.token_type") == types
    assert r.fields["tokenizer.ggml.scores"].types[-1] == gguf.GGUFValueType.FLOAT32
    assert r.fields["tokenizer.ggml.token_type"].types[-1] == gguf.GGUFValueType.INT32
    for k, v in (("bos_token_id", 2), ("eos_token_id", 1), ("unknown_token_id", 3), ("padding_token_id", 0),
                 ("add_bos_token", True), ("add_eos_token", False), ("add_space_prefix", False)):
        assert field(r, "tokenizer.ggml." + k) == v, k
    assert "tokenizer.ggml.merges" not in r.fields
    back = Tokenizer.from_str(tokenizer_from_gguf(r, out.name).json)
    orig = Tokenizer.from_str(gemma3_tk.json)
    for t in TEXTS_SPM:
        assert back.encode(t).ids == orig.encode(t).ids, t


def test_gemma3_optional_keys(gemma3_tk, tmp_path):
    pattern = [True, True, False]
    g = write_gemma3_ggq(tmp_path / "o.ggq", gemma3_tk,
                         **{"gemma3.attention.sliding_window_pattern": (pattern, "array[bool]"),
                            "gemma3.final_logit_softcapping": (30.0, "f32"),
                            "gemma3.rope.scaling.type": ("linear", "str"),
                            "gemma3.rope.scaling.factor": (8.0, "f32"),
                            "gemma3.rope.freq_base_swa": (None, None),
                            "general.basename": ("tiny", "str"), "general.tags": (["a", "b"], "array[string]")})
    out = export_gguf(g, tmp_path / "o.gguf")
    r = GGUFReader(str(out))
    assert field(r, "gemma3.attention.sliding_window_pattern") == pattern
    assert r.fields["gemma3.attention.sliding_window_pattern"].types == [gguf.GGUFValueType.ARRAY,
                                                                         gguf.GGUFValueType.BOOL]
    assert field(r, "gemma3.final_logit_softcapping") == pytest.approx(30.0)
    assert field(r, "gemma3.rope.scaling.type") == "linear"
    assert field(r, "gemma3.rope.scaling.factor") == pytest.approx(8.0)
    assert "gemma3.rope.freq_base_swa" not in r.fields  # llama.cpp's default (10000) applies
    assert field(r, "general.basename") == "tiny" and field(r, "general.tags") == ["a", "b"]


def test_gemma3_attention_scale_must_match_llama_cpp(gemma3_tk, tmp_path):
    from ggq.gguf_io import _check_gemma3_attention_scale

    g = write_gemma3_ggq(tmp_path / "q.ggq", gemma3_tk,
                         **{"gemma3.attention.query_pre_attn_scalar": (float(G_HIDDEN // G_HEADS) * 2, "f32")})
    out = tmp_path / "q.gguf"
    with pytest.raises(ConvertError, match="query_pre_attn_scalar 128 differs from the 64"):
        export_gguf(g, out)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["q.ggq"]
    # 62 layers (Gemma 3 27B): llama.cpp scales by embedding_length / head_count instead
    md = {"gemma3.attention.query_pre_attn_scalar": 168.0}
    _check_gemma3_attention_scale(md, 62, 5376, 32, 128, "m")
    with pytest.raises(ConvertError, match="62 layers"):
        _check_gemma3_attention_scale({"gemma3.attention.query_pre_attn_scalar": 128.0}, 62, 5376, 32, 128, "m")
    _check_gemma3_attention_scale({}, 62, 5376, 32, 128, "m")  # absent: nothing to check


@pytest.mark.parametrize("add_space_prefix", [False, True])
def test_spm_scores_derived_from_merges(tmp_path, add_space_prefix):
    """A .ggq with only the tokenizer.json (as made from an HF folder): scores/types derived so that
    llama.cpp's SPM merges in the BPE merge order; the GGUF's tokenizer encodes the same ids."""
    from tokenizers import Tokenizer

    from ggq.convert.tokenizer_gguf import tokenizer_from_gguf
    from ggq.gguf_io import derive_spm_scores

    tk = spm_gguf_tokenizer(tmp_path, add_space_prefix)
    g = write_gemma3_ggq(tmp_path / "h.ggq", tk, ggml_metadata=False)
    out = export_gguf(g, tmp_path / "h.gguf")
    r = GGUFReader(str(out))
    tokens, _, types = spm_vocab()
    assert field(r, "tokenizer.ggml.model") == "llama"
    assert field(r, "tokenizer.ggml.tokens") == tokens
    assert field(r, "tokenizer.ggml.token_type") == types  # control, user-defined, byte, normal
    assert field(r, "tokenizer.ggml.add_space_prefix") == add_space_prefix  # from the normalizer
    merges = json.loads(tk.json)["model"]["merges"]
    assert all(isinstance(m, str) for m in merges)  # "left right" (spm_merges)
    merges = [m.split(" ") for m in merges]  # tokenizers writes pairs back
    scores = field(r, "tokenizer.ggml.scores")
    for rank, (a, b) in enumerate(merges):
        assert scores[tokens.index(a + b)] >= -rank  # made by its first merge
    back = Tokenizer.from_str(tokenizer_from_gguf(r, out.name).json)
    orig = Tokenizer.from_str(tk.json)
    written = json.loads(back.to_str())["model"]["merges"]  # pairs or strings, by tokenizers' version
    assert [m.split(" ") if isinstance(m, str) else m for m in written] == merges
    for t in TEXTS_SPM:
        assert back.encode(t).ids == orig.encode(t).ids, t
    # the rule itself
    assert derive_spm_scores(["a", "b", "ab", "<0x41>", "<c>", "abb"], [1, 1, 1, 6, 3, 1],
                             [["a", "b"], ["ab", "b"]]) == [-2.0, -3.0, -0.0, 0.0, -1000.0, -1.0]


# ----------------------------------------------------------------------------- Gemma 3 (real)

# `gemma3_gguf` (conftest): the real GGUF, fetched once into the cache.

def assert_same_gguf(orig, out, informational=("general.basename", "general.size_label", "general.license",
                                                "general.tags", "general.file_type")):
    """Every key of `orig` that llama.cpp reads has the same value and type in `out`; tensors
    have the same bytes, types and shapes. Keys only `out` has must be llama.cpp's defaults."""
    ra, rb = GGUFReader(str(orig)), GGUFReader(str(out))
    for k, fa in ra.fields.items():
        if k.startswith("GGUF.") or k in informational:
            continue
        assert k in rb.fields, k
        assert fa.contents() == rb.fields[k].contents(), k
        assert fa.types == rb.fields[k].types, k
    extra = {k: rb.fields[k].contents() for k in rb.fields if k not in ra.fields and not k.startswith("GGUF.")}
    defaults = {"gemma3.attention.sliding_window_pattern": 6, "gemma3.rope.freq_base_swa": 10000.0}
    assert {k: v for k, v in extra.items() if k not in informational} == \
        {k: v for k, v in defaults.items() if k in extra}
    ta, tb = {t.name: t for t in ra.tensors}, {t.name: t for t in rb.tensors}
    assert set(ta) == set(tb)  # (the order is llama.cpp's business only by name)
    for name, t in ta.items():
        u = tb[name]
        assert (t.tensor_type, t.shape.tolist()) == (u.tensor_type, u.shape.tolist()), name
        assert np.asarray(t.data).tobytes() == np.asarray(u.data).tobytes(), name
    return ra, rb


@pytest.mark.gemma3
def test_gemma3_export_of_a_directly_written_ggq(gemma3_gguf, tmp_path):
    """The GGUF's tensors and keys put into a .ggq with GGQWriter (as the converter does), exported."""
    from ggq.convert.tokenizer_gguf import tokenizer_from_gguf

    r = GGUFReader(str(gemma3_gguf))
    tk = tokenizer_from_gguf(r, gemma3_gguf.name)
    vt = {gguf.GGUFValueType.UINT32: "u32", gguf.GGUFValueType.FLOAT32: "f32"}
    g = tmp_path / "g.ggq"
    with GGQWriter(g) as w:
        w.add_metadata("general.architecture", "gemma3", "str")
        for k in ("general.name", "general.basename", "general.size_label", "general.license"):
            w.add_metadata(k, field(r, k), "str")
        w.add_metadata("general.tags", field(r, "general.tags"), "array[string]")
        w.add_metadata("general.file_type", field(r, "general.file_type"), "u32")
        for k, fl in r.fields.items():
            if k.startswith("gemma3."):
                w.add_metadata(k, fl.contents(), vt[fl.types[0]])
        w.add_metadata("gemma3.attention.query_pre_attn_scalar", 256.0, "f32")
        w.add_metadata("gemma3.tie_word_embeddings", True, "bool")
        w.add_metadata("tokenizer.huggingface.json", tk.json, "str")
        w.add_metadata("tokenizer.bos_token_id", tk.bos_token_id, "i32")
        w.add_metadata("tokenizer.eos_token_id", tk.eos_token_id, "i32")
        w.add_metadata("tokenizer.add_bos_token", tk.add_bos_token, "bool")
        for k, v, t in tk.metadata:
            w.add_metadata(k, v, t)
        shapes = {t.name: tuple(int(d) for d in reversed(t.shape.tolist())) for t in r.tensors}
        for t in r.tensors:
            w.add_tensor(t.name, int(t.tensor_type), shapes[t.name])
        for t in r.tensors:
            s = shapes[t.name]
            w.write_tensor(t.name, np.asarray(t.data).view(np.uint8).reshape(s[0] if len(s) == 2 else 1, -1))
    out = export_gguf(g, tmp_path / "g.gguf")
    assert_same_gguf(gemma3_gguf, out, informational=())


@pytest.mark.gemma3
def test_gemma3_gguf_to_ggq_to_gguf(gemma3_gguf, tmp_path):
    from ggq.convert import convert_model

    g = tmp_path / "g.ggq"
    convert_model(gemma3_gguf, g, preset="keep")
    out = export_gguf(g, tmp_path / "g.gguf")
    ra, rb = assert_same_gguf(gemma3_gguf, out)
    with GGQReader(g) as f:
        if "general.file_type" in f.metadata:  # kept by the import: must come back
            assert field(rb, "general.file_type") == field(ra, "general.file_type")
