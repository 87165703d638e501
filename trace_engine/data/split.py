"""Prompt-disjoint, category-stratified train1 / train2 / (val) / test splits with exact sizes.

* Per-category train sizes come from largest-remainder allocation of `train_size` over the category sizes
  (`largest_remainder`), so they add up to `train_size` exactly and each is within one of its exact quota.
* Pairs that share a prompt (`prompt_key`) form a group that always lands in one split, so no prompt is in both
  train and test. A group may hold pairs of several categories; `select_groups` picks whole groups whose category
  counts hit the per-category targets exactly: seeded greedy fill, then an exact repair search over the deficit
  (bounded knapsack over the groups' count vectors), then, for small targets, an exhaustive search that proves
  infeasibility. An infeasible request fails with `SplitError` saying which counts cannot be reached.
* train2 is a subset of train1, stratified by largest remainder over train1's category counts.
* The optional validation split is carved (whole prompt groups, stratified) from the non-train prompts; test is
  everything else. Later stages choose their settings on validation, never on test.
* Every random choice uses its own seed derived from the one user seed; the manifest records them all.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trace_engine.categories import CATEGORIES
from trace_engine.data.io import write_json, write_jsonl
from trace_engine.data.noise import make_noisy, rate_label
from trace_engine.data.pairs import PreferencePair, prompt_key, sha256_text

Vector = tuple[int, ...]  # pair counts per category, in CATEGORIES order
MAX_REPAIR_STATES = 2_000_000  # cap on the deficit search space (vectors <= deficit)
MAX_EXHAUSTIVE_STATES = 300_000  # targets small enough to prove infeasibility exhaustively
MAX_REMOVALS = 3  # how many already-picked groups the repair may give back
MAX_REMOVAL_TYPES = 12  # ... chosen among this many distinct count vectors (smallest first)


class SplitError(ValueError):
    """The requested split cannot be made; the message says which request and why."""


@dataclass(frozen=True)
class PromptGroup:
    """All pairs that share one prompt: their positions in the input and their counts per category."""

    key: str
    members: tuple[int, ...]
    counts: Vector


@dataclass
class SplitResult:
    train1: list[PreferencePair]
    train2: list[PreferencePair]
    val: list[PreferencePair]
    test: list[PreferencePair]
    manifest: dict[str, Any] = field(default_factory=dict)


def derive_seed(seed: int, purpose: str) -> int:
    """An independent 64-bit seed per random choice, so adding one choice never shifts another."""
    return int(sha256_text(str(seed), purpose)[:16], 16)


def largest_remainder(total: int, sizes: Mapping[str, int]) -> dict[str, int]:
    """Split `total` over bins in proportion to `sizes`: floors of the exact quotas, then one more to each of the
    bins with the largest remainders. Ties go to the larger bin, then to the earlier bin name (deterministic)."""
    population = sum(sizes.values())
    if total < 0 or total > population:
        raise SplitError(f"cannot allocate {total} items over bins holding {population}")
    if population == 0:
        return dict.fromkeys(sizes, 0)
    allocation = {name: total * size // population for name, size in sizes.items()}
    remainder = {name: total * size % population for name, size in sizes.items()}
    left = total - sum(allocation.values())
    for name in sorted(sizes, key=lambda n: (-remainder[n], -sizes[n], n))[:left]:
        allocation[name] += 1
    return allocation


def group_by_prompt(pairs: Sequence[PreferencePair]) -> list[PromptGroup]:
    """Prompt groups in first-appearance order."""
    members: dict[str, list[int]] = {}
    for index, pair in enumerate(pairs):
        members.setdefault(prompt_key(pair.prompt), []).append(index)
    groups = []
    for key, indices in members.items():
        counts = Counter(pairs[i].extra["category"] for i in indices)
        groups.append(PromptGroup(key, tuple(indices), tuple(counts[c] for c in CATEGORIES)))
    return groups


def select_groups(groups: Sequence[PromptGroup], target: Vector, rng: random.Random) -> list[int]:
    """Indices of groups whose counts sum exactly to `target`; raises SplitError when that is impossible."""
    _check_divisibility(groups, target)
    order = list(range(len(groups)))
    rng.shuffle(order)
    chosen: list[int] = []
    deficit = list(target)
    for g in order:
        if not any(deficit):
            break
        counts = groups[g].counts
        if all(c <= d for c, d in zip(counts, deficit, strict=True)):
            chosen.append(g)
            deficit = [d - c for d, c in zip(deficit, counts, strict=True)]
    if any(deficit):
        chosen = _repair(groups, order, chosen, tuple(deficit))
    return chosen


def _check_divisibility(groups: Sequence[PromptGroup], target: Vector) -> None:
    """A cheap proof of infeasibility at any size: if every prompt holds a multiple of k pairs of a category, the
    target for that category must be a multiple of k too."""
    for i, (category, wanted) in enumerate(zip(CATEGORIES, target, strict=True)):
        step = math.gcd(*(g.counts[i] for g in groups))
        if step > 1 and wanted % step:
            raise SplitError(f"infeasible split: every prompt has a multiple of {step} {category} pairs, so exactly "
                             f"{wanted} {category} pairs cannot be picked without splitting a prompt (splits are "
                             "prompt-disjoint); choose a different size")


def _repair(groups: Sequence[PromptGroup], order: list[int], chosen: list[int], deficit: Vector) -> list[int]:
    """Close a greedy deficit: add unpicked groups, giving back up to MAX_REMOVALS picked ones if needed."""
    chosen_set = set(chosen)
    unpicked = _by_type(groups, [g for g in order if g not in chosen_set])
    picked = _by_type(groups, [g for g in reversed(order) if g in chosen_set])  # last picked first
    for removal in _removal_options(picked):
        need = tuple(d + sum(vec[i] for vec in removal) for i, d in enumerate(deficit))
        fill = _exact_fill(need, {t: len(gs) for t, gs in unpicked.items()})
        if fill is None:
            continue
        removed = _take(picked, Counter(removal))
        return [g for g in chosen if g not in removed] + sorted(_take(unpicked, fill))
    target = tuple(d + sum(groups[g].counts[i] for g in chosen) for i, d in enumerate(deficit))
    fill = _exhaustive(groups, target)
    if fill is None:
        raise SplitError(_infeasible_message(groups, target))
    return sorted(_take(_by_type(groups, order), fill))


def _by_type(groups: Sequence[PromptGroup], indices: Sequence[int]) -> dict[Vector, list[int]]:
    by_type: dict[Vector, list[int]] = {}
    for g in indices:
        by_type.setdefault(groups[g].counts, []).append(g)
    return by_type


def _take(by_type: Mapping[Vector, list[int]], counts: Mapping[Vector, int]) -> set[int]:
    """The first `counts[t]` groups of each type (the lists are already in seeded order)."""
    return {g for t, k in counts.items() for g in by_type[t][:k]}


def _removal_options(picked: Mapping[Vector, list[int]]) -> list[tuple[Vector, ...]]:
    """Multisets of picked group types to give back: none first, then one, two, ... up to MAX_REMOVALS."""
    options: list[tuple[Vector, ...]] = [()]
    types = sorted(picked, key=lambda t: (sum(t), t))[:MAX_REMOVAL_TYPES]
    frontier: list[tuple[Vector, ...]] = [()]
    for _ in range(MAX_REMOVALS):
        grown = []
        for combo in frontier:
            start = types.index(combo[-1]) if combo else 0
            for t in types[start:]:
                candidate = (*combo, t)
                if Counter(candidate)[t] <= len(picked[t]):
                    grown.append(candidate)
        options += grown
        frontier = grown
    return options


def _state_count(target: Vector) -> int:
    count = 1
    for t in target:
        count *= t + 1
    return count


def _exact_fill(target: Vector, available: Mapping[Vector, int], max_states: int = MAX_REPAIR_STATES) -> dict[Vector, int] | None:
    """How many groups of each type sum exactly to `target` (bounded knapsack over count vectors), or None."""
    if _state_count(target) > max_states:
        return None
    zero = tuple(0 for _ in target)
    parent: dict[Vector, tuple[Vector, Vector, int] | None] = {zero: None}
    for vec in sorted(available):
        if not any(vec) or any(v > t for v, t in zip(vec, target, strict=True)):
            continue
        max_use = min(available[vec], *(t // v for v, t in zip(vec, target, strict=True) if v))
        for state in list(parent):
            current = state
            for k in range(1, max_use + 1):
                current = tuple(a + b for a, b in zip(current, vec, strict=True))
                if any(c > t for c, t in zip(current, target, strict=True)):
                    break
                parent.setdefault(current, (state, vec, k))
        if target in parent:
            break
    if target not in parent:
        return None
    fill: Counter[Vector] = Counter()
    state = target
    while (step := parent[state]) is not None:
        state, vec, k = step
        fill[vec] += k
    return dict(fill)


def _exhaustive(groups: Sequence[PromptGroup], target: Vector) -> dict[Vector, int] | None:
    """Search every combination of groups (for the target or, when smaller, its complement: the groups left out);
    None means no combination exists."""
    available = Counter(g.counts for g in groups)
    totals = tuple(sum(g.counts[i] for g in groups) for i in range(len(target)))
    complement = tuple(t - x for t, x in zip(totals, target, strict=True))
    use_complement = _state_count(complement) < _state_count(target)
    goal = complement if use_complement else target
    if _state_count(goal) > MAX_EXHAUSTIVE_STATES:
        raise SplitError(
            f"could not find whole prompts with exactly {_fmt(target)} pairs (the search gave up on a target this "
            "large); try another --seed or a slightly different size"
        )
    fill = _exact_fill(goal, available, max_states=MAX_EXHAUSTIVE_STATES)
    if fill is None or not use_complement:
        return fill
    return {vec: n - fill.get(vec, 0) for vec, n in available.items()}


def _infeasible_message(groups: Sequence[PromptGroup], target: Vector) -> str:
    multi = sum(1 for g in groups if sum(g.counts) > 1)
    largest = max((sum(g.counts) for g in groups), default=0)
    return (
        f"infeasible split: no set of whole prompts holds exactly {_fmt(target)} pairs. Splits are prompt-disjoint, "
        f"so pairs sharing a prompt stay together ({multi} of {len(groups)} prompts have several pairs, up to "
        f"{largest}); choose a different size"
    )


def _fmt(vector: Vector) -> str:
    return ", ".join(f"{c}={n}" for c, n in zip(CATEGORIES, vector, strict=True))


def category_counts(pairs: Sequence[PreferencePair]) -> dict[str, int]:
    counts = Counter(p.extra.get("category") for p in pairs)
    return {c: counts[c] for c in CATEGORIES}


def check_categories(pairs: Sequence[PreferencePair]) -> None:
    bad = [p.id for p in pairs if p.extra.get("category") not in CATEGORIES]
    if bad:
        raise SplitError(f"{len(bad)} pair(s) have no valid category ({', '.join(CATEGORIES)}), e.g. id {bad[0]!r}; "
                         "split a triaged file")


def make_splits(
    pairs: Sequence[PreferencePair], *, train_size: int, train2_size: int, val_size: int = 0, seed: int = 0
) -> SplitResult:
    """Split triaged pairs (each with `extra['category']`); outputs keep input order."""
    check_categories(pairs)
    total = len(pairs)
    if train_size < 1 or train2_size < 0 or val_size < 0:
        raise SplitError("train size must be at least 1; train2 and val sizes must not be negative")
    if train2_size > train_size:
        raise SplitError(f"train2 size {train2_size} exceeds train size {train_size} (train2 is a subset of train1)")
    if train_size + val_size >= total:
        raise SplitError(f"train ({train_size}) + val ({val_size}) must leave at least one of the {total} pairs for test")
    seeds = {name: derive_seed(seed, name) for name in ("train1", "val", "train2")}
    groups = group_by_prompt(pairs)
    sizes = category_counts(pairs)

    train1_target = largest_remainder(train_size, sizes)
    train1_groups = _pick(groups, train1_target, seeds["train1"], "train1")
    train1_idx = sorted(i for g in train1_groups for i in groups[g].members)

    train1_group_set = set(train1_groups)
    rest_groups = [groups[g] for g in range(len(groups)) if g not in train1_group_set]
    rest_sizes = Counter(pairs[i].extra["category"] for grp in rest_groups for i in grp.members)
    val_target = largest_remainder(val_size, {c: rest_sizes[c] for c in CATEGORIES})
    val_picked = _pick(rest_groups, val_target, seeds["val"], "val") if val_size else []
    val_idx = sorted(i for g in val_picked for i in rest_groups[g].members)

    train1_sizes = category_counts([pairs[i] for i in train1_idx])
    train2_target = largest_remainder(train2_size, train1_sizes)
    train2_idx = _stratified_subset(pairs, train1_idx, train2_target, random.Random(seeds["train2"]))

    taken = set(train1_idx) | set(val_idx)
    test_idx = [i for i in range(total) if i not in taken]
    result = SplitResult(
        train1=[pairs[i] for i in train1_idx], train2=[pairs[i] for i in train2_idx],
        val=[pairs[i] for i in val_idx], test=[pairs[i] for i in test_idx],
    )
    result.manifest = _manifest(result, groups, seed, seeds, {"train1": train1_target, "train2": train2_target,
                                                              "val": val_target})
    result.manifest["requested"] = {"train_size": train_size, "train2_size": train2_size, "val_size": val_size}
    return result


def _pick(groups: Sequence[PromptGroup], target: Mapping[str, int], seed: int, name: str) -> list[int]:
    try:
        return select_groups(groups, tuple(target[c] for c in CATEGORIES), random.Random(seed))
    except SplitError as exc:
        raise SplitError(f"{name}: {exc}") from None


def _stratified_subset(
    pairs: Sequence[PreferencePair], indices: Sequence[int], target: Mapping[str, int], rng: random.Random
) -> list[int]:
    picked: list[int] = []
    for category in CATEGORIES:
        members = [i for i in indices if pairs[i].extra["category"] == category]
        rng.shuffle(members)
        picked += members[: target[category]]
    return sorted(picked)


def _manifest(result: SplitResult, groups: Sequence[PromptGroup], seed: int, seeds: Mapping[str, int],
              targets: Mapping[str, Mapping[str, int]]) -> dict[str, Any]:
    splits = {"train1": result.train1, "train2": result.train2, "val": result.val, "test": result.test}
    train_prompts = {prompt_key(p.prompt) for p in result.train1}
    test_prompts = {prompt_key(p.prompt) for p in result.test}
    val_prompts = {prompt_key(p.prompt) for p in result.val}
    return {
        "seed": seed,
        "derived_seeds": dict(seeds),
        "allocation": "largest_remainder",
        "total_pairs": len(result.train1) + len(result.val) + len(result.test),
        "total_prompts": len(groups),
        "prompts_with_several_pairs": sum(1 for g in groups if len(g.members) > 1),
        "targets": {name: dict(t) for name, t in targets.items()},
        "splits": {name: {"pairs": len(items), "prompts": len({prompt_key(p.prompt) for p in items}),
                          "per_category": category_counts(items)} for name, items in splits.items()},
        "checks": {
            "train_test_prompt_overlap": len(train_prompts & test_prompts),
            "train_val_prompt_overlap": len(train_prompts & val_prompts),
            "val_test_prompt_overlap": len(val_prompts & test_prompts),
            "train2_subset_of_train1": {p.id for p in result.train2} <= {p.id for p in result.train1},
        },
    }


def write_splits(
    result: SplitResult,
    out_dir: str | Path,
    *,
    noise_rates: Sequence[float | str] = (),
    noise_seed: int = 0,
    extra_manifest: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write train1/train2/test(/val) JSONL, nested noisy copies of train1 and train2, then `manifest.json` last
    (its presence means the folder is complete). Every file is written atomically. Returns the manifest."""
    out = Path(out_dir)
    files = {"train1": "train1.jsonl", "train2": "train2.jsonl", "test": "test.jsonl"}
    if result.val:
        files["val"] = "val.jsonl"
    for name, file_name in files.items():
        write_jsonl(out / file_name, (p.to_row() for p in getattr(result, name)))
    noise_report: dict[str, dict[str, Any]] = {}
    for name in ("train1", "train2"):
        for rate in sorted(noise_rates, key=float):
            noisy, stats = make_noisy(getattr(result, name), rate, noise_seed)
            file_name = f"noisy/{name}_noisy{rate_label(rate)}.jsonl"
            write_jsonl(out / file_name, (p.to_row() for p in noisy))
            noise_report.setdefault(name, {})[rate_label(rate)] = {"file": file_name, **stats}
    manifest = {
        **result.manifest,
        **(extra_manifest or {}),
        "files": files,
        "noise": {"seed": noise_seed, "rates": [float(r) for r in sorted(noise_rates, key=float)],
                  "nested": True, "splits": noise_report},
    }
    write_json(out / "manifest.json", manifest)
    return manifest
