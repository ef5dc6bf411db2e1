"""Sampler: each filter checked against a direct computation, seeds, invalid values."""
import math

import numpy as np
import pytest

from ggq.errors import UsageError
from ggq.runtime.sampler import Sampler


def _logits(n=1000, seed=0):
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32) * 3


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def test_greedy_is_argmax():
    s = Sampler(temperature=0)
    for seed in range(5):
        lg = _logits(seed=seed)
        assert s(lg) == int(np.argmax(lg))


def test_greedy_applies_repeat_penalty_like_llama_cpp():
    lg = np.array([1.0, 2.0, 1.9, -0.5], dtype=np.float32)
    s = Sampler(temperature=0, repeat_penalty=1.5)
    assert s(lg, history=[1]) == 2            # 2.0 / 1.5 < 1.9
    pen = s.penalize(lg, [1, 3, 3])
    np.testing.assert_allclose(pen, [1.0, 2.0 / 1.5, 1.9, -0.75])
    # only the last repeat_last_n tokens count
    s2 = Sampler(temperature=0, repeat_penalty=1.5, repeat_last_n=1)
    np.testing.assert_allclose(s2.penalize(lg, [1, 3]), [1.0, 2.0, 1.9, -0.75])


def test_top_k_keeps_k_largest():
    lg = _logits()
    ids, p = Sampler(temperature=1.0, top_k=10, top_p=1.0, min_p=0.0).candidates(lg)
    assert set(ids) == set(np.argsort(-lg)[:10])
    np.testing.assert_allclose(p, _softmax(lg[ids].astype(np.float64)), rtol=1e-12)


def test_top_p_keeps_smallest_prefix_reaching_p():
    lg = _logits()
    order = np.argsort(-lg)
    probs = _softmax(lg.astype(np.float64))[order]
    for top_p in (0.1, 0.5, 0.9):
        ids, _ = Sampler(temperature=1.0, top_k=0, top_p=top_p, min_p=0.0).candidates(lg)
        k = int(np.argmax(np.cumsum(probs) >= top_p)) + 1
        assert list(ids) == list(order[:k])


def test_min_p_relative_to_max():
    lg = _logits()
    probs = _softmax(lg.astype(np.float64))
    ids, _ = Sampler(temperature=1.0, top_k=0, top_p=1.0, min_p=0.2).candidates(lg)
    assert set(ids) == set(np.nonzero(probs >= 0.2 * probs.max() * (1 - 1e-9))[0])


def test_temperature_scales_distribution():
    lg = _logits(50)
    ids, p = Sampler(temperature=0.5, top_k=0, top_p=1.0, min_p=0.0).candidates(lg)
    np.testing.assert_allclose(p, _softmax(lg[ids].astype(np.float64) / 0.5), rtol=1e-10)


def test_sampling_frequencies_follow_probabilities():
    lg = np.log(np.array([0.5, 0.3, 0.2]))
    s = Sampler(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=0)
    counts = np.bincount([s(lg) for _ in range(20000)], minlength=3) / 20000
    np.testing.assert_allclose(counts, [0.5, 0.3, 0.2], atol=0.015)


def test_same_seed_same_sequence():
    lg = [_logits(seed=i) for i in range(30)]
    s1, s2, s3 = Sampler(seed=42), Sampler(seed=42), Sampler(seed=43)
    a = [s1(x) for x in lg]
    assert a == [s2(x) for x in lg]
    assert a != [s3(x) for x in lg]  # 30 draws with several candidates each


@pytest.mark.parametrize("kw,msg", [
    (dict(temperature=-0.1), "temperature"), (dict(temperature=float("nan")), "temperature"),
    (dict(top_k=-1), "top-k"), (dict(top_k=2.5), "top-k"),
    (dict(top_p=0.0), "top-p"), (dict(top_p=1.01), "top-p"),
    (dict(min_p=-0.1), "min-p"), (dict(min_p=1.5), "min-p"),
    (dict(repeat_penalty=0), "repeat-penalty"), (dict(repeat_penalty=-1), "repeat-penalty"),
    (dict(seed=-1), "seed"), (dict(repeat_last_n=-2), "repeat-last-n"),
])
def test_invalid_values(kw, msg):
    with pytest.raises(UsageError, match=msg):
        Sampler(**kw)


def test_disabled_filters_keep_everything():
    lg = _logits(100)
    ids, p = Sampler(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0).candidates(lg)
    assert len(ids) == 100 and math.isclose(p.sum(), 1.0)
