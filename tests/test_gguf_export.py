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
