"""Nested noisy copies: 10% inside 20%, per-item corruption fixed across rates, recorded and counted."""

from __future__ import annotations

import pytest

from trace_engine.categories import CATEGORIES
from trace_engine.data.noise import corruption_order, make_noisy, noisy_count, rate_label
from trace_engine.data.pairs import PreferencePair


def make_pairs(n: int) -> list[PreferencePair]:
    return [PreferencePair(f"id-{i}", f"prompt {i}", f"chosen {i}", f"rejected {i}",
                           {"category": CATEGORIES[i % 3], "keep": i}) for i in range(n)]


def corrupted(pairs: list[PreferencePair]) -> dict[str, PreferencePair]:
    return {p.id: p for p in pairs if "noise" in p.extra}


def test_rates_are_nested_and_each_item_keeps_its_corruption() -> None:
    pairs = make_pairs(200)
    low, low_stats = make_noisy(pairs, "0.1", seed=3)
    high, high_stats = make_noisy(pairs, "0.2", seed=3)
    low_set, high_set = corrupted(low), corrupted(high)
    assert (len(low_set), len(high_set)) == (20, 40)
    assert set(low_set) < set(high_set)
    for pair_id, pair in low_set.items():
        assert pair == high_set[pair_id]  # same corruption at every rate
    assert low_stats["category_flip"] + low_stats["pair_swap"] == 20
    assert high_stats["pair_swap"] == sum(p.extra["noise"]["kind"] == "pair_swap" for p in high_set.values())
    assert high_stats["effective_noise_dpo"] == high_stats["pair_swap"] / 200
    assert high_stats["effective_noise_trace"] == 0.2
    assert sum(high_stats["flips_by_transition"].values()) == high_stats["category_flip"]


def test_corruptions_are_recorded_and_change_only_what_they_say() -> None:
    pairs = make_pairs(300)
    noisy, stats = make_noisy(pairs, 1, seed=0)
    assert 100 < stats["category_flip"] < 200  # about half each
    for before, after in zip(pairs, noisy, strict=True):
        noise = after.extra["noise"]
        assert after.id == before.id and after.extra["keep"] == before.extra["keep"]
        if noise["kind"] == "category_flip":
            assert (after.chosen, after.rejected) == (before.chosen, before.rejected)
            assert noise["original_category"] == before.extra["category"] != after.extra["category"]
            assert noise["new_category"] == after.extra["category"] in CATEGORIES
        else:
            assert noise == {"kind": "pair_swap"}
            assert (after.chosen, after.rejected) == (before.rejected, before.chosen)
            assert after.extra["category"] == before.extra["category"]
    assert all("noise" not in p.extra for p in pairs)  # the input is not modified


def test_flip_targets_cover_both_other_categories() -> None:
    noisy, stats = make_noisy(make_pairs(300), 1, seed=1)
    assert len(stats["flips_by_transition"]) == 6  # every ordered pair of distinct categories occurs


def test_seed_changes_the_order_and_order_is_a_permutation() -> None:
    pairs = make_pairs(50)
    order = corruption_order(pairs, 1)
    assert sorted(order) == list(range(50))
    assert order == corruption_order(pairs, 1) != corruption_order(pairs, 2)


@pytest.mark.parametrize("total, rate, expected", [(25, "0.1", 3), (10, "0.25", 3), (7, 1, 7), (200, 0.2, 40)])
def test_noisy_count_rounds_half_up(total: int, rate: float | str, expected: int) -> None:
    assert noisy_count(total, rate) == expected


def test_bad_rates_and_labels() -> None:
    with pytest.raises(ValueError):
        noisy_count(10, 0)
    with pytest.raises(ValueError):
        noisy_count(10, "1.5")
    assert (rate_label("0.1"), rate_label(0.2), rate_label("0.125"), rate_label(1)) == ("10pct", "20pct", "12p5pct", "100pct")
