"""Prompt-disjoint stratified splits: exact sizes, largest remainder, subsets, determinism, infeasibility."""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from trace_engine.categories import CATEGORIES
from trace_engine.data.pairs import PreferencePair, prompt_key
from trace_engine.data.split import (
    PromptGroup,
    SplitError,
    largest_remainder,
    make_splits,
    select_groups,
    write_splits,
)


def make_pairs(group_sizes: list[int], seed: int = 0) -> list[PreferencePair]:
    """One prompt per entry of `group_sizes`, with that many pairs of random categories."""
    rng = random.Random(seed)
    pairs = []
    for p, size in enumerate(group_sizes):
        prompt = [{"role": "user", "content": f"prompt {p}"}] if p % 3 == 0 else f"prompt {p}"
        for j in range(size):
            pairs.append(PreferencePair(f"{p}-{j}", prompt, f"c{p}-{j}", f"r{p}-{j}",
                                        {"category": rng.choice(CATEGORIES)}))
    return pairs


def per_category(pairs: list[PreferencePair]) -> dict[str, int]:
    counts = Counter(p.extra["category"] for p in pairs)
    return {c: counts[c] for c in CATEGORIES}


def prompts(pairs: list[PreferencePair]) -> set[str]:
    return {prompt_key(p.prompt) for p in pairs}


def test_largest_remainder_hand_examples() -> None:
    # quotas 2.5, 1.5, 1.0 -> floors 2, 1, 1; one left; tie of remainders: the larger bin (INVERT) wins.
    # (Python's round() would give 2, 2, 1.)
    assert largest_remainder(5, {"INVERT": 5, "PUNISH": 3, "RETAIN": 2}) == {"INVERT": 3, "PUNISH": 1, "RETAIN": 1}
    # quotas 3.5, 3.5, 3.0: tie on remainder and on size -> name order.
    assert largest_remainder(10, {"PUNISH": 7, "INVERT": 7, "RETAIN": 6}) == {"PUNISH": 3, "INVERT": 4, "RETAIN": 3}
    # quotas 0.6, 0.3, 0.1 -> the largest remainder gets the single item.
    assert largest_remainder(1, {"INVERT": 6, "PUNISH": 3, "RETAIN": 1}) == {"INVERT": 1, "PUNISH": 0, "RETAIN": 0}
    assert largest_remainder(0, {"INVERT": 0, "PUNISH": 0, "RETAIN": 0}) == {"INVERT": 0, "PUNISH": 0, "RETAIN": 0}
    with pytest.raises(SplitError):
        largest_remainder(4, {"INVERT": 1, "PUNISH": 2})


def test_largest_remainder_sums_exactly_and_stays_within_one_of_the_quota() -> None:
    rng = random.Random(1)
    for _ in range(200):
        sizes = {c: rng.randint(0, 50) for c in CATEGORIES}
        total = rng.randint(0, sum(sizes.values()))
        got = largest_remainder(total, sizes)
        assert sum(got.values()) == total
        population = sum(sizes.values()) or 1
        assert all(abs(got[c] - total * sizes[c] / population) < 1 for c in CATEGORIES)


def test_split_invariants_with_shared_prompts_and_validation() -> None:
    pairs = make_pairs([1, 2, 3, 1, 1, 4, 1, 2, 1, 1] * 12)
    result = make_splits(pairs, train_size=100, train2_size=41, val_size=30, seed=7)
    assert (len(result.train1), len(result.train2), len(result.val)) == (100, 41, 30)
    assert len(result.test) == len(pairs) - 130
    assert per_category(result.train1) == largest_remainder(100, per_category(pairs))
    assert per_category(result.train2) == largest_remainder(41, per_category(result.train1))
    assert {p.id for p in result.train2} <= {p.id for p in result.train1}
    assert not prompts(result.train1) & prompts(result.test)
    assert not prompts(result.train1) & prompts(result.val)
    assert not prompts(result.val) & prompts(result.test)
    assert sorted(p.id for p in result.train1 + result.val + result.test) == sorted(p.id for p in pairs)
    checks = result.manifest["checks"]
    assert checks == {"train_test_prompt_overlap": 0, "train_val_prompt_overlap": 0, "val_test_prompt_overlap": 0,
                      "train2_subset_of_train1": True}
    assert result.manifest["splits"]["train1"]["per_category"] == per_category(result.train1)


def test_same_seed_same_split_other_seed_other_split() -> None:
    pairs = make_pairs([1, 2, 1, 3] * 30)
    ids = [[p.id for p in make_splits(pairs, train_size=80, train2_size=30, seed=s).train1]
           for s in (3, 3, 4)]
    assert ids[0] == ids[1] and ids[0] != ids[2]
    manifest = make_splits(pairs, train_size=80, train2_size=30, seed=3).manifest
    assert manifest["seed"] == 3 and set(manifest["derived_seeds"]) == {"train1", "val", "train2"}


def test_infeasible_split_says_what_cannot_be_reached() -> None:
    # prompt 0: two RETAIN pairs; prompt 1: two INVERT + one RETAIN. A train size of 1 needs exactly one RETAIN
    # pair, which no set of whole prompts holds (and no divisibility argument shows it).
    categories = [["RETAIN", "RETAIN"], ["INVERT", "INVERT", "RETAIN"]]
    pairs = [PreferencePair(f"{p}-{j}", f"prompt {p}", f"c{p}{j}", f"r{p}{j}", {"category": c})
             for p, cats in enumerate(categories) for j, c in enumerate(cats)]
    with pytest.raises(SplitError, match=r"train1: infeasible split: .*INVERT=0, PUNISH=0, RETAIN=1.*prompt-disjoint"):
        make_splits(pairs, train_size=1, train2_size=1, seed=0)


def test_odd_target_over_pairs_of_two_is_infeasible() -> None:
    pairs = [PreferencePair(f"{p}-{j}", f"prompt {p}", f"c{p}{j}", f"r{p}{j}", {"category": CATEGORIES[p % 3]})
             for p in range(6) for j in range(2)]
    with pytest.raises(SplitError, match="train1: infeasible split: every prompt has a multiple of 2"):
        make_splits(pairs, train_size=3, train2_size=1, seed=0)
    assert len(make_splits(pairs, train_size=6, train2_size=3, seed=0).train1) == 6


@pytest.mark.parametrize("kwargs, message", [
    ({"train_size": 10, "train2_size": 11}, "exceeds"),
    ({"train_size": 10, "train2_size": 1, "val_size": 2}, "at least one"),
    ({"train_size": 0, "train2_size": 0}, "at least 1"),
])
def test_bad_sizes_are_refused(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(SplitError, match=message):
        make_splits(make_pairs([1] * 12), **kwargs)


def test_pairs_without_category_are_refused() -> None:
    pairs = make_pairs([1, 1, 1])
    pairs[1].extra.pop("category")
    with pytest.raises(SplitError, match="no valid category.*'1-0'"):
        make_splits(pairs, train_size=1, train2_size=1)


def _brute_force_feasible(groups: list[PromptGroup], target: tuple[int, ...]) -> bool:
    for r in range(len(groups) + 1):
        for combo in itertools.combinations(groups, r):
            if tuple(map(sum, zip(*(g.counts for g in combo), strict=True))) == target or (not combo and not any(target)):
                return True
    return False


def test_group_selection_matches_brute_force_on_small_instances() -> None:
    rng = random.Random(5)
    for trial in range(300):
        groups = [PromptGroup(f"g{i}", (i,), tuple(rng.choice([0, 0, 1, 2, 3]) for _ in CATEGORIES))
                  for i in range(rng.randint(1, 9))]
        groups = [g for g in groups if any(g.counts)] or [PromptGroup("g", (0,), (1, 0, 0))]
        totals = [sum(g.counts[i] for g in groups) for i in range(3)]
        if trial % 2:  # a target some subset reaches (exercises the greedy + repair), else any target
            subset = [g for g in groups if rng.random() < 0.5]
            target = tuple(sum(g.counts[i] for g in subset) for i in range(3))
        else:
            target = tuple(rng.randint(0, t) for t in totals)
        feasible = _brute_force_feasible(groups, target)
        try:
            picked = select_groups(groups, target, random.Random(trial))
        except SplitError as exc:
            assert not feasible, f"missed a feasible target {target} for {[g.counts for g in groups]}"
            assert "infeasible" in str(exc)
            continue
        assert feasible
        assert len(set(picked)) == len(picked)
        assert tuple(sum(groups[g].counts[i] for g in picked) for i in range(3)) == target


def test_large_infeasible_target_is_proved_by_divisibility() -> None:
    pairs = [PreferencePair(f"{p}-{j}", f"prompt {p}", f"c{p}{j}", f"r{p}{j}", {"category": CATEGORIES[p % 3]})
             for p in range(3000) for j in range(2)]
    with pytest.raises(SplitError, match="multiple of 2 INVERT pairs, so exactly 1001 INVERT"):
        make_splits(pairs, train_size=3003, train2_size=1, seed=0)


def test_large_split_is_exact_and_fast() -> None:
    pairs = make_pairs([1, 1, 1, 2, 3, 5] * 2000, seed=2)  # 26k pairs, 12k prompts
    result = make_splits(pairs, train_size=20_000, train2_size=10_000, val_size=1_000, seed=1)
    assert per_category(result.train1) == largest_remainder(20_000, per_category(pairs))
    assert len(result.val) == 1_000 and not prompts(result.train1) & prompts(result.test)


def test_write_splits_files_and_manifest(tmp_path: Path) -> None:
    pairs = make_pairs([1, 2] * 20)
    result = make_splits(pairs, train_size=30, train2_size=10, val_size=5, seed=1)
    manifest = write_splits(result, tmp_path, noise_rates=["0.2", "0.1"], noise_seed=9)
    names = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.jsonl"))
    assert names == ["noisy/train1_noisy10pct.jsonl", "noisy/train1_noisy20pct.jsonl",
                     "noisy/train2_noisy10pct.jsonl", "noisy/train2_noisy20pct.jsonl",
                     "test.jsonl", "train1.jsonl", "train2.jsonl", "val.jsonl"]
    train1 = [json.loads(line) for line in (tmp_path / "train1.jsonl").read_text(encoding="utf-8").splitlines()]
    assert train1 == [p.to_row() for p in result.train1]
    on_disk = json.loads((tmp_path / "manifest.json").read_text(encoding="utf-8"))
    assert on_disk == manifest and on_disk["noise"]["rates"] == [0.1, 0.2]
    assert on_disk["noise"]["splits"]["train1"]["10pct"]["corrupted"] == 3
