"""Shares with percentile-bootstrap confidence intervals (numpy, vectorised, seeded).

Every evaluation number is a share of 0/1 outcomes (compliant, attack succeeded, refused, correct), so one
`Rate` type and one bootstrap serve all suites. Pure numpy; no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 2000
DEFAULT_CONFIDENCE = 0.95
DEFAULT_SEED = 0
_MAX_CELLS = 4_000_000  # resample-matrix cells per chunk: bounds memory for large n


@dataclass(frozen=True)
class Rate:
    """k successes out of n scored items (errors excluded from n, counted apart), with a bootstrap CI."""

    value: float | None
    ci_low: float | None
    ci_high: float | None
    n: int
    k: int
    errors: int = 0
    higher_is_better: bool = True

    def to_dict(self) -> dict:
        return {
            "value": self.value,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "n": self.n,
            "k": self.k,
            "errors": self.errors,
            "higher_is_better": self.higher_is_better,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Rate:
        return cls(
            value=d["value"],
            ci_low=d["ci_low"],
            ci_high=d["ci_high"],
            n=int(d["n"]),
            k=int(d["k"]),
            errors=int(d.get("errors", 0)),
            higher_is_better=bool(d.get("higher_is_better", True)),
        )


def bootstrap_ci(
    outcomes: Sequence[float] | np.ndarray,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = DEFAULT_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `outcomes`.

    Resamples are drawn as an index matrix [resamples, n] (in chunks, so memory stays bounded) and averaged in
    one numpy reduction. Same seed and data -> same interval.
    """
    x = np.asarray(outcomes, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError("bootstrap_ci needs a non-empty 1-d sequence of outcomes")
    if resamples < 1000:
        raise ValueError(f"use at least 1000 bootstrap resamples (got {resamples})")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n = x.size
    rng = np.random.default_rng(seed)
    chunk = max(1, _MAX_CELLS // n)
    means = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, chunk):
        stop = min(start + chunk, resamples)
        idx = rng.integers(0, n, size=(stop - start, n))  # [chunk, n]
        means[start:stop] = x[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def rate(
    outcomes: Sequence[bool | None],
    *,
    higher_is_better: bool = True,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = DEFAULT_SEED,
) -> Rate:
    """Share of True among the non-None outcomes; None marks an item that could not be scored (an error)."""
    scored = [bool(o) for o in outcomes if o is not None]
    errors = len(outcomes) - len(scored)
    if not scored:
        return Rate(None, None, None, 0, 0, errors, higher_is_better)
    k = sum(scored)
    low, high = bootstrap_ci(scored, resamples=resamples, confidence=confidence, seed=seed)
    return Rate(k / len(scored), low, high, len(scored), k, errors, higher_is_better)
