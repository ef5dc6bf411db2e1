"""tools/bench.py's pure helpers (parsing, statistics, README markers). No benchmarks here."""
import importlib.util
import json
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("ggq_tools_bench", Path(__file__).resolve().parent.parent / "tools" / "bench.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_parse_llama_bench_json():
    recs = [{"build_commit": "0c1e570", "build_number": 1, "n_prompt": 128, "n_gen": 0, "avg_ts": 424.5, "stddev_ts": 3.0},
            {"build_commit": "0c1e570", "build_number": 1, "n_prompt": 512, "n_gen": 0, "avg_ts": 400.0, "stddev_ts": 1.0},
            {"build_commit": "0c1e570", "build_number": 1, "n_prompt": 0, "n_gen": 64, "avg_ts": 104.25, "stddev_ts": 2.0}]
    res, info = bench.parse_llama_bench_json(json.dumps(recs))
    assert res == {"pp128": 424.5, "pp512": 400.0, "tg64": 104.25}
    assert info["build_commit"] == "0c1e570"


def test_parse_ggq_bench():
    out = """| model                                  |       size |   params | backend | threads | test |          t/s |
| -------------------------------------- | ---------: | -------: | ------- | ------: | ---: | -----------: |
| Smollm2 135M q4_k_m | 100.35 MiB | 134.52 M | numba   |       2 | pp128 | 310.12 ± 5.00 |
| Smollm2 135M q4_k_m | 100.35 MiB | 134.52 M | numba   |       2 |  tg64 |  61.50 ± 0.25 |
"""
    assert bench.parse_ggq_bench(out) == {"pp128": 310.12, "tg64": 61.5}


def test_parse_run_stats():
    line = ("ggq: m.ggq: load 274 ms | prompt 13 tok 410.5 tok/s | generation 32 tok 65.9 tok/s | "
            "first text after 430 ms | stop: length | threads 2")
    assert bench.parse_run_stats(line) == {"gen_tokens": 32, "gen_tps": 65.9, "prompt_tps": 410.5,
                                           "load_ms": 274.0, "first_ms": 430.0}
    assert bench.parse_run_stats("nothing here") == {}


def test_parse_time_v():
    text = "\tUser time (seconds): 1.00\n\tMaximum resident set size (kbytes): 311296\n\tExit status: 0\n"
    assert bench.parse_time_v(text) == 311296
    assert bench.parse_time_v("") is None


def test_spread_and_formatting():
    assert bench.spread([3.0, 1.0, 2.0]) == (2.0, 1.0, 3.0)
    assert bench.spread([]) is None
    assert bench.fmt_spread([100.0, 120.0, 110.0]) == "110.0 (100.0–120.0)"
    assert bench.fmt_spread([5.0]) == "5.0"
    assert bench.fmt_spread([]) == "n/a"
    assert bench.ratio([60.0, 61.0, 65.0], [100.0, 104.0, 113.0]) == pytest.approx(61 / 104)
    assert bench.fmt_ratio(bench.ratio([61.0], [104.0])) == "0.59×"
    assert bench.fmt_ratio(None) == "n/a"
    assert bench.ratio([1.0], []) is None


def test_parse_size_and_human():
    assert bench.parse_size("16M") == 16 << 20
    assert bench.parse_size("1G") == 1 << 30
    assert bench.parse_size("32768K") == 32 << 20
    assert bench.parse_size("4096") == 4096
    assert bench.human_bytes(1 << 30) == "1 GiB"
    with pytest.raises(ValueError):
        bench.parse_size("lots")


def test_weight_bytes_per_token():
    t = {"token_embd.weight": ((1000, 64), 5000), "output_norm.weight": ((64,), 256),
         "blk.0.attn_q.weight": ((64, 64), 100), "blk.0.attn_norm.weight": ((64,), 256),
         "blk.0.ffn_down.weight": ((64, 128), 200)}
    assert bench.weight_bytes_per_token(t) == 100 + 200 + 5000  # tied: the embedding is the output matrix
    t["output.weight"] = ((1000, 64), 7000)
    assert bench.weight_bytes_per_token(t) == 100 + 200 + 7000


def test_replace_marked():
    text = "intro\n<!-- bench:begin -->\nold table\n<!-- bench:end -->\ntail\n"
    assert bench.replace_marked(text, "new\n") == "intro\n<!-- bench:begin -->\nnew\n<!-- bench:end -->\ntail\n"
    assert bench.replace_marked("no markers", "x") is None
    assert bench.replace_marked("<!-- bench:end --> then <!-- bench:begin -->", "x") is None
    assert bench.replace_marked("only <!-- bench:begin -->", "x") is None
