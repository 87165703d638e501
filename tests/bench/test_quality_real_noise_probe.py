"""The noise probe's separation measures: AUC, per-kind summary, and the simulated set of checked rows."""

from __future__ import annotations

import pytest


def test_auc_counts_wins_and_half_ties(probe) -> None:
    assert probe.auc([3.0, 2.0], [1.0, 0.0]) == 1.0
    assert probe.auc([0.0], [1.0]) == 0.0
    assert probe.auc([1.0, 0.0], [1.0]) == pytest.approx(0.25)  # one tie (half), one loss
    assert probe.auc([], [1.0]) is None


def test_separation_splits_clean_from_corrupted_rows(probe) -> None:
    rows = {"a": {}, "b": {}, "c": {"noise": {"kind": "pair_swap"}}}
    s = probe.separation({"a": 2.0, "b": -1.0, "c": -3.0}, rows)
    assert (s["n_clean"], s["n_corrupted"], s["auc"]) == (2, 1, 1.0)
    assert s["mean_clean"] == 0.5 and s["clean_positive"] == 0.5 and s["corrupted_positive"] == 0.0


def test_trusted_rows_are_the_clean_version_of_the_checked_rows(probe) -> None:
    clean = [{"id": str(i), "category": "INVERT"} for i in range(10)]
    noisy = [{**r, "category": "RETAIN", "noise": {"kind": "category_flip"}} if i < 5 else dict(r)
             for i, r in enumerate(clean)]
    out = probe.trusted_rows(clean, noisy, 4, seed=0)
    checked = [r for r in out if r.get("trusted")]
    assert len(checked) == 4 and all(r["category"] == "INVERT" and "noise" not in r for r in checked)
    assert [r["id"] for r in out] == [r["id"] for r in noisy]  # order and the unchecked rows untouched
    assert out == probe.trusted_rows(clean, noisy, 4, seed=0)  # seeded
