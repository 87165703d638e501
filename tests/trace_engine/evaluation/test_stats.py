from __future__ import annotations

import numpy as np
import pytest

from trace_engine.evaluation.stats import Rate, bootstrap_ci, rate


def test_ci_contains_point_estimate_and_is_deterministic_by_seed():
    outcomes = [1] * 30 + [0] * 70
    low, high = bootstrap_ci(outcomes, seed=7)
    assert low <= 0.3 <= high
    assert 0.18 < low < 0.3 < high < 0.42  # normal approx: 0.3 +- 1.96*0.046
    assert bootstrap_ci(outcomes, seed=7) == (low, high)
    scores = np.random.default_rng(0).random(37)  # continuous values: another seed must move the quantiles
    assert bootstrap_ci(scores, seed=7) == bootstrap_ci(scores, seed=7)
    assert bootstrap_ci(scores, seed=7) != bootstrap_ci(scores, seed=8)


def test_ci_narrows_with_more_data():
    small = bootstrap_ci([1, 0] * 10, seed=0)
    large = bootstrap_ci([1, 0] * 1000, seed=0)
    assert (large[1] - large[0]) < (small[1] - small[0]) / 5


def test_ci_matches_a_slow_loop_bootstrap():
    """The vectorised chunked resampling draws what a per-resample loop with the same generator draws."""
    x = np.array([1, 1, 0, 1, 0, 0, 0, 1, 1, 1], dtype=float)
    rng = np.random.default_rng(3)
    means = np.array([x[rng.integers(0, x.size, size=(1, x.size))].mean() for _ in range(1000)])
    expected = tuple(float(v) for v in np.quantile(means, [0.025, 0.975]))
    assert bootstrap_ci(x, resamples=1000, seed=3) == pytest.approx(expected)


def test_degenerate_and_bad_inputs():
    assert bootstrap_ci([1, 1, 1]) == (1.0, 1.0)
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="at least 1000"):
        bootstrap_ci([1, 0], resamples=100)


def test_rate_excludes_and_counts_errors():
    r = rate([True, False, None, True, None], higher_is_better=False)
    assert (r.value, r.n, r.k, r.errors, r.higher_is_better) == (2 / 3, 3, 2, 2, False)
    assert r.ci_low <= r.value <= r.ci_high
    assert Rate.from_dict(r.to_dict()) == r
    empty = rate([None, None])
    assert (empty.value, empty.n, empty.errors) == (None, 0, 2)
