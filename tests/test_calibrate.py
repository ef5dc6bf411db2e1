"""ggq calibrate and llama.cpp's imatrix GGUF: statistics against an independent NumPy
computation, the file layout against gguf-py (writer and reader), convert --imatrix, and the
importance weighting of every quantizer."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ggq.cli import main as cli_main
from ggq.convert import convert_model
from ggq.errors import GGQError
from ggq.quality.imatrix import IMatrix, read_imatrix, write_imatrix
from ggq.quants import all_types

TEXT = ("the cat sat on the mat and the dog ran in the park while it rained on the old barn. " * 12)
MATS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


@pytest.fixture(scope="module")
def calibrated(tiny_hf_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("calib")
    f32 = d / "f32.ggq"
    convert_model(tiny_hf_dir, f32, preset="f32", progress=False)
    txt = d / "text.txt"
    txt.write_text(TEXT)
    out = d / "imatrix.gguf"
    assert cli_main(["calibrate", str(f32), "-f", str(txt), "-o", str(out), "-c", "32", "--hessian",
                     "--no-process-output"]) == 0  # llama-imatrix's default set of matrices
    return f32, txt, out


def test_statistics_match_numpy(calibrated):
    from ggq.api import load
    from ggq.format import GGQReader

    f32, txt, out = calibrated
    im = read_imatrix(out)
    m = load(f32)
    toks = np.array(m.tokenizer.encode(TEXT))
    n_win = len(toks) // 32
    assert im.chunk_count == n_win and im.chunk_size == 32 and im.datasets == [str(txt)]
    n_layers = m.config.n_layers
    assert im.names() == sorted(f"blk.{i}.{k}.weight" for i in range(n_layers) for k in MATS)
    for name in im.names():
        assert im.counts[name].tolist() == [n_win * 32]
    # layer 0's q/k/v input is rmsnorm(embedding) * attn_norm: computed here from the weights
    with GGQReader(f32) as r:
        emb = r.dequantize("token_embd.weight").astype(np.float64)
        g = r.dequantize("blk.0.attn_norm.weight").astype(np.float64)
        eps = r.metadata["llama.attention.layer_norm_rms_epsilon"]
    x = emb[toks[:n_win * 32]]
    h = x / np.sqrt((x * x).mean(axis=1, keepdims=True) + eps) * g
    want = (h * h).sum(axis=0)
    for k in ("attn_q", "attn_k", "attn_v"):
        np.testing.assert_allclose(im.sums[f"blk.0.{k}.weight"][0], want, rtol=2e-5)
        np.testing.assert_allclose(im.hessian(f"blk.0.{k}.weight"), h.T @ h / h.shape[0], rtol=2e-4, atol=1e-6)
    # shared inputs share statistics; every other input differs
    for i in range(n_layers):
        s = lambda k: im.sums[f"blk.{i}.{k}.weight"]  # noqa: E731
        np.testing.assert_array_equal(s("attn_q"), s("attn_v"))
        np.testing.assert_array_equal(s("ffn_gate"), s("ffn_up"))
        assert not np.allclose(s("attn_q"), s("ffn_gate"))
    # the statistics are float-path statistics: the model is left in its default mode afterwards
    assert not any(mm.exact for mm in m.llama.matrices())


def test_file_layout_is_llama_imatrix(calibrated, tmp_path):
    """Our file read by gguf-py: llama-imatrix's keys, names, F32 types and ggml dims."""
    import gguf

    _, _, out = calibrated
    r = gguf.GGUFReader(str(out))
    assert r.fields["general.type"].contents() == "imatrix"
    assert "general.architecture" not in r.fields
    assert r.fields["imatrix.chunk_size"].contents() == 32
    assert r.fields["imatrix.chunk_count"].types == [gguf.GGUFValueType.UINT32]
    names = [t.name for t in r.tensors]
    base = sorted({n.rsplit(".", 1)[0] for n in names})
    assert [n for n in names if not n.endswith(".in_cov")] == [x for b in base for x in (b + ".in_sum2", b + ".counts")]
    for t in r.tensors:
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        if t.name.endswith(".counts"):
            assert list(t.shape) == [1]
        elif t.name.endswith(".in_sum2"):
            assert len(t.shape) == 1 and t.shape[0] in (64, 128)
        else:
            assert list(t.shape) == [t.shape[0], t.shape[0]]
    # without --hessian: no in_cov tensors
    im = read_imatrix(out)
    im.cov = {}
    plain = tmp_path / "plain.gguf"
    write_imatrix(plain, im)
    assert not [t for t in gguf.GGUFReader(str(plain)).tensors if t.name.endswith(".in_cov")]


def test_reads_a_file_written_by_gguf_py(tmp_path):
    """A file made here with gguf-py in llama-imatrix's layout, from known sums (a dense
    matrix and a 3-expert one), read back by ggq; and ggq's writer gives the same bytes of data."""
    import gguf

    rng = np.random.default_rng(3)
    sums = {"blk.0.ffn_down.weight": rng.uniform(0, 9, (1, 96)).astype(np.float32),
            "blk.0.ffn_up_exps.weight": rng.uniform(0, 9, (3, 64)).astype(np.float32)}
    counts = {"blk.0.ffn_down.weight": np.array([[640]], np.float32),
              "blk.0.ffn_up_exps.weight": np.array([[100], [0], [540]], np.float32)}
    p = tmp_path / "ref.gguf"
    w = gguf.GGUFWriter(str(p), arch="x")
    w.kv_data[0].pop("general.architecture", None)
    w.add_string("general.type", "imatrix")
    w.add_array("imatrix.datasets", ["calib.txt"])
    w.add_uint32("imatrix.chunk_count", 2)
    w.add_uint32("imatrix.chunk_size", 320)
    for n in sorted(sums):
        w.add_tensor(n + ".in_sum2", sums[n].squeeze(0) if sums[n].shape[0] == 1 else sums[n])
        w.add_tensor(n + ".counts", counts[n].reshape(-1) if counts[n].shape[0] == 1 else counts[n])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    im = read_imatrix(p)
    assert im.datasets == ["calib.txt"] and im.chunk_count == 2 and im.chunk_size == 320
    for n in sums:
        np.testing.assert_array_equal(im.sums[n], sums[n])
        assert im.counts[n].tolist() == counts[n].reshape(-1).astype(int).tolist()
    np.testing.assert_allclose(im.weights("blk.0.ffn_down.weight"), sums["blk.0.ffn_down.weight"][0] / 640, rtol=1e-7)
    with pytest.raises(GGQError, match="experts"):
        im.weights("blk.0.ffn_up_exps.weight")
    ours = tmp_path / "ours.gguf"
    write_imatrix(ours, im)
    a, b = gguf.GGUFReader(str(p)), gguf.GGUFReader(str(ours))
    assert [(t.name, list(t.shape)) for t in a.tensors] == [(t.name, list(t.shape)) for t in b.tensors]
    for ta, tb in zip(a.tensors, b.tensors):
        np.testing.assert_array_equal(np.asarray(ta.data), np.asarray(tb.data))


def test_legacy_dat(tmp_path):
    import struct

    vals = np.arange(1, 33, dtype="<f4")
    p = tmp_path / "old.dat"
    name = b"blk.0.attn_q.weight"
    p.write_bytes(struct.pack("<i", 1) + struct.pack("<i", len(name)) + name + struct.pack("<ii", 4, 32)
                  + vals.tobytes() + struct.pack("<i", 7) + struct.pack("<i", 5) + b"x.txt")
    im = read_imatrix(p)
    np.testing.assert_allclose(im.weights("blk.0.attn_q.weight"), vals / 4)
    assert im.chunk_count == 7 and im.datasets == ["x.txt"]


def test_bad_files_are_one_line(calibrated, tmp_path, capsys, tiny_hf_dir):
    f32, txt, out = calibrated
    data = out.read_bytes()
    cases = {"cut.gguf": data[:len(data) // 2], "junk.gguf": b"\x05\x00\x00\x00garbage"}
    for fname, blob in cases.items():
        (tmp_path / fname).write_bytes(blob)
        with pytest.raises(GGQError) as e:
            read_imatrix(tmp_path / fname)
        assert fname in str(e.value) and "\n" not in str(e.value)
    im = read_imatrix(out)
    im.sums = {"blk.99.nothing.weight": np.ones((1, 64))}
    im.counts = {"blk.99.nothing.weight": np.array([1])}
    im.cov = {}
    other = tmp_path / "other.gguf"
    write_imatrix(other, im)
    capsys.readouterr()
    assert cli_main(["convert", str(tiny_hf_dir), "-o", str(tmp_path / "x.ggq"), "-t", "q8_0",
                     "--imatrix", str(other)]) == 1
    err = capsys.readouterr().err
    assert "names a tensor" in err and err.count("\n") == 1
    assert not (tmp_path / "x.ggq").exists()
    # --method gptq without Hessians
    im = read_imatrix(out)
    im.cov = {}
    nohess = tmp_path / "nohess.gguf"
    write_imatrix(nohess, im)
    assert cli_main(["convert", str(tiny_hf_dir), "-o", str(tmp_path / "y.ggq"), "-t", "q8_0",
                     "--imatrix", str(nohess), "--method", "gptq"]) == 1
    assert "calibrate --hessian" in capsys.readouterr().err
    # an existing output is kept
    assert cli_main(["calibrate", str(f32), "-f", str(txt), "-o", str(out), "-c", "32"]) == 1
    assert "already exists" in capsys.readouterr().err


def test_convert_with_imatrix_records_provenance(calibrated, tiny_hf_dir, tmp_path):
    from ggq.format import GGQReader

    _, _, out = calibrated
    for method, want in (("imatrix", "imatrix"), ("gptq", "gptq"), ("auto", "gptq")):
        q = tmp_path / f"{method}.ggq"
        rep = convert_model(tiny_hf_dir, q, preset="q4_0", imatrix=out, method=method, progress=False)
        assert rep.imatrix
        with GGQReader(q) as r:
            md = r.metadata
            methods = json.loads(md["quantization.tensor_methods"])
        assert md["quantization.imatrix"] is True and md["quantization.imatrix_file"] == out.name
        assert md["quantization.imatrix_chunks"] == read_imatrix(out).chunk_count
        for name, e in methods.items():
            if name.startswith("blk.") and e["type"] == "Q4_0":
                assert e["method"] == want and e["imatrix"] == out.name
            elif e["type"] == "Q4_0":  # token_embd: no statistics
                assert e["method"] == "rtn-search" and "imatrix" not in e


@pytest.mark.parametrize("qt", [t for t in all_types() if not t.is_float], ids=lambda t: t.name)
def test_every_quantizer_uses_the_importance(qt):
    """On rows whose columns matter very unequally, the importance-weighted error is lower with
    the matrix than without it."""
    rng = np.random.default_rng(11)
    cols = 512
    x = rng.standard_t(5, size=(16, cols)).astype(np.float32)
    imp = np.exp(rng.normal(0, 2.0, cols)).astype(np.float32)
    kw = {"search": True} if "search" in __import__("inspect").signature(qt.quantize).parameters else {}

    def err(q):
        return float((imp * (qt.dequantize(q, cols) - x) ** 2).sum())

    plain = err(qt.quantize(x, **kw))
    weighted = err(qt.quantize(x, imatrix=imp, **kw))
    assert weighted < 0.97 * plain, (qt.name, plain, weighted)


def test_process_output_tied(calibrated, tiny_hf_dir, tmp_path):
    """The default (--process-output) on a tied model: the output product's input under
    token_embd.weight, the output norm's output (so its mean square per token is about that
    norm's weights')."""
    f32, txt, _ = calibrated
    out = tmp_path / "po.gguf"
    assert cli_main(["calibrate", str(f32), "-f", str(txt), "-o", str(out), "-c", "32", "--hessian"]) == 0
    im = read_imatrix(out)
    assert "token_embd.weight" in im.sums and "output.weight" not in im.sums
    assert im.counts["token_embd.weight"].tolist() == im.counts["blk.0.attn_q.weight"].tolist()
    from ggq.format import GGQReader

    with GGQReader(f32) as r:
        g = r.dequantize("output_norm.weight").astype(np.float64)
    # rmsnorm output: each token's mean of (x/rms)^2 is 1, so sum_j w_j / g_j^2 / cols = 1
    w = im.weights("token_embd.weight").astype(np.float64)
    assert (w / (g * g)).mean() == pytest.approx(1.0, rel=1e-3)
    # convert then runs GPTQ on the tied embedding too, which lowers the output product's error
    # tr(D H D^T) on the recorded inputs against the plain search
    files = {m: tmp_path / f"{m}.ggq" for m in ("gptq", "plain")}
    convert_model(tiny_hf_dir, files["gptq"], preset="q4_0", imatrix=out, method="gptq", progress=False)
    convert_model(tiny_hf_dir, files["plain"], preset="q4_0", progress=False)
    with GGQReader(files["gptq"]) as r:
        assert json.loads(r.metadata["quantization.tensor_methods"])["token_embd.weight"]["method"] == "gptq"
    with GGQReader(f32) as r:
        emb = r.dequantize("token_embd.weight").astype(np.float64)
    h = im.hessian("token_embd.weight").astype(np.float64)

    def out_err(path):
        with GGQReader(path) as r:
            d = r.dequantize("token_embd.weight").astype(np.float64) - emb
        return float(np.einsum("ij,jk,ik->", d, h, d))
    assert out_err(files["gptq"]) < 0.9 * out_err(files["plain"])


def test_fit_preset_rules_follow_the_importance_matrix(calibrated, tiny_hf_dir, tmp_path):
    """ggq convert -t q4_k_m_fit --imatrix on a model whose rows fall back (64/128 wide): the
    FIT_IMATRIX_RULES apply to the tensors the file covers (attn_v, attn_k -> Q8_0) and leave the
    tied embedding, which a file without the output product's statistics does not cover, at the
    plain fit preset's type; without an imatrix, the plain fit preset."""
    from ggq.format import GGQReader

    _, _, out = calibrated  # made with --no-process-output: no token_embd.weight entry
    plain, ruled = tmp_path / "plain.ggq", tmp_path / "ruled.ggq"
    convert_model(tiny_hf_dir, plain, preset="q4_k_m_fit", progress=False)
    convert_model(tiny_hf_dir, ruled, preset="q4_k_m_fit", imatrix=out, method="imatrix", progress=False)

    def types(path):
        with GGQReader(path) as r:
            return {n: t.qtype.name for n, t in r.tensors.items()}
    p, r = types(plain), types(ruled)
    assert {r[f"blk.{i}.{c}.weight"] for i in range(2) for c in ("attn_v", "attn_k")} == {"Q8_0"}
    assert p["blk.0.attn_k.weight"] != "Q8_0"
    assert r["token_embd.weight"] == p["token_embd.weight"]
