"""The gold batch (design.md §3, the paper's Algorithm 2): B pairs that express the NEW policy.

Up to B/3 RETAIN pairs as they are, up to B/3 INVERT pairs (already swapped by triage), and the rest PUNISH prompts
paired as (x, a compliant response, y_w). The compliant response is the prompt's own oracle rewrite when one exists,
otherwise one drawn from the compliant pool (RETAIN chosen ∪ INVERT preferred) of a DIFFERENT prompt.
Deterministic for a given seed and row order; uses its own `random.Random`, never the global RNG.

Which rows the batch may come from (`gold_candidates`): all triaged rows (published), or only rows marked
`"trusted": true` (e.g. a few dozen pairs whose triage a person checked). Noisy triage labels that reach the gold
batch corrupt g_J for every score (docs/benchmarks.md, noise robustness), so trusted rows are worth marking.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from trace_engine.categories import Category
from trace_engine.data.pairs import Prompt, prompt_key

RETAIN, INVERT, PUNISH = Category.RETAIN, Category.INVERT, Category.PUNISH
ORACLE = "oracle"
GoldSource = Literal["all", "trusted", "auto"]
GOLD_SOURCES: tuple[str, ...] = ("all", "trusted", "auto")
MAX_DRAWS = 10_000  # rejection-sampling bound; only reached if nearly every pool entry shares the prompt


@dataclass(frozen=True)
class GoldPair:
    """One gold preference: `chosen` is compliant under the new policy, `rejected` is not (or is less so).

    compliant_source: for PUNISH entries, "oracle" or the id of the pair whose compliant response was borrowed.
    """

    source_id: str
    category: str
    prompt: Prompt
    chosen: str
    rejected: str
    compliant_source: str | None = None


@dataclass(frozen=True)
class GoldReport:
    """What went into the batch and what could not (never silent)."""

    requested: int
    retain: int
    invert: int
    punish: int
    punish_with_oracle: int
    punish_skipped_no_compliant: int

    @property
    def size(self) -> int:
        return self.retain + self.invert + self.punish


def is_trusted(row: Mapping[str, Any]) -> bool:
    """Only a JSON `true` counts (a string "false" must not make a row trusted)."""
    return row.get("trusted") is True


def gold_candidates(rows: Sequence[Mapping[str, Any]], source: str) -> list[Mapping[str, Any]]:
    """Rows the gold batch may be drawn from: `all`, `trusted` (rows with `"trusted": true`; an error if there are
    none) or `auto` (the trusted rows when any row is trusted, else all)."""
    if source not in GOLD_SOURCES:
        raise ValueError(f"gold source must be one of {', '.join(GOLD_SOURCES)}, got {source!r}")
    if source == "all":
        return list(rows)
    trusted = [r for r in rows if is_trusted(r)]
    if source == "trusted" and not trusted:
        raise ValueError('gold source "trusted" needs rows marked "trusted": true, and none is')
    return trusted or list(rows)


def build_gold_batch(
    rows: Sequence[Mapping[str, Any]], size: int, seed: int
) -> tuple[list[GoldPair], GoldReport]:
    """Algorithm 2 over triaged rows (`category`, `id`, `prompt`, `chosen`, `rejected`, optional `oracle_response`).

    The batch can be smaller than `size` when a category runs short; the report says by how much.
    ERROR rows are ignored.
    """
    if size < 1:
        raise ValueError(f"gold batch size must be >= 1, got {size}")
    rng = random.Random(seed)
    by_cat: dict[str, list[Mapping[str, Any]]] = {RETAIN: [], INVERT: [], PUNISH: []}
    for row in rows:
        cat = str(row.get("category", ""))
        if cat in by_cat:
            by_cat[cat].append(row)
    third = size // 3
    retain = rng.sample(by_cat[RETAIN], min(third, len(by_cat[RETAIN])))
    invert = rng.sample(by_cat[INVERT], min(third, len(by_cat[INVERT])))
    gold = [_as_is(r, RETAIN) for r in retain] + [_as_is(r, INVERT) for r in invert]

    pool = [(prompt_key(r["prompt"]), str(r["chosen"]), str(r["id"])) for r in by_cat[RETAIN] + by_cat[INVERT]]
    pool_counts = Counter(key for key, _, _ in pool)
    oracle_by_prompt = _oracle_responses(by_cat[PUNISH])
    n_punish = size - len(gold)
    punish = rng.sample(by_cat[PUNISH], min(n_punish, len(by_cat[PUNISH])))
    with_oracle = skipped = 0
    for row in punish:
        key = prompt_key(row["prompt"])
        oracle = _usable_oracle(row) or oracle_by_prompt.get(key)
        if oracle is not None:
            gold.append(_punish_pair(row, oracle, ORACLE))
            with_oracle += 1
            continue
        drawn = _draw_other_prompt(rng, pool, pool_counts, key)
        if drawn is None:
            skipped += 1
            continue
        gold.append(_punish_pair(row, drawn[1], drawn[2]))
    report = GoldReport(
        requested=size,
        retain=len(retain),
        invert=len(invert),
        punish=len(punish) - skipped,
        punish_with_oracle=with_oracle,
        punish_skipped_no_compliant=skipped,
    )
    return gold, report


def _as_is(row: Mapping[str, Any], category: str) -> GoldPair:
    return GoldPair(str(row["id"]), category, row["prompt"], str(row["chosen"]), str(row["rejected"]))


def _punish_pair(row: Mapping[str, Any], compliant: str, source: str) -> GoldPair:
    # y_w = the PUNISH pair's (violating) chosen response becomes the dispreferred side.
    return GoldPair(str(row["id"]), PUNISH, row["prompt"], compliant, str(row["chosen"]), source)


def _usable_oracle(row: Mapping[str, Any]) -> str | None:
    """A judge-written compliant rewrite; an empty one (failed call) is never used as a preferred answer."""
    text = row.get("oracle_response")
    return text if isinstance(text, str) and text.strip() else None


def _oracle_responses(punish_rows: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """First usable oracle rewrite per prompt, so a prompt's rewrite serves all its PUNISH pairs."""
    out: dict[str, str] = {}
    for row in punish_rows:
        text = _usable_oracle(row)
        if text is not None:
            out.setdefault(prompt_key(row["prompt"]), text)
    return out


def _draw_other_prompt(
    rng: random.Random, pool: list[tuple[str, str, str]], counts: Counter, key: str
) -> tuple[str, str, str] | None:
    """Uniform draw from pool entries whose prompt differs from `key`; None when there is none."""
    if len(pool) - counts.get(key, 0) <= 0:
        return None
    for _ in range(MAX_DRAWS):
        entry = rng.choice(pool)
        if entry[0] != key:
            return entry
    others = [e for e in pool if e[0] != key]  # pathological pool: fall back to an exact draw
    return rng.choice(others)
