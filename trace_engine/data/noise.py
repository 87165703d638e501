"""Nested label-noise splits for robustness studies.

One seeded order of the items (a hash of seed and pair id), and each rate corrupts a prefix of it, so the 10% set
is inside the 20% set. Each item's corruption is decided once from its own hash, so it is the same at every rate:
`category_flip` (category replaced by a uniformly random different category, texts unchanged) or `pair_swap`
(chosen and rejected exchanged, category unchanged), each with probability 1/2. The corrupted copy records what
was done in `extra['noise']`. The stats say how much noise each method really sees: a plain DPO baseline ignores
categories, so only swaps are noise to it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from trace_engine.categories import CATEGORIES
from trace_engine.data.pairs import PreferencePair, sha256_text

_UNIT = float(2**64)


def _uniform(seed: int, purpose: str, pair_id: str) -> float:
    return int(sha256_text(str(seed), purpose, pair_id)[:16], 16) / _UNIT


def noisy_count(total: int, rate: float | str) -> int:
    """round(total * rate), halves rounded up, computed in decimal so 0.1 * 25 is 2.5 -> 3, not 2.4999."""
    value = Decimal(str(rate))
    if not Decimal(0) < value <= Decimal(1):
        raise ValueError(f"noise rate must be in (0, 1], got {rate}")
    return int((value * total).to_integral_value(rounding=ROUND_HALF_UP))


def rate_label(rate: float | str) -> str:
    """File-name label: 0.1 -> '10pct', 0.125 -> '12p5pct'."""
    percent = (Decimal(str(rate)) * 100).normalize()
    text = format(percent, "f")
    return text.replace(".", "p") + "pct"


def corruption_order(pairs: Sequence[PreferencePair], seed: int) -> list[int]:
    """The one seeded permutation every rate takes a prefix of."""
    return sorted(range(len(pairs)), key=lambda i: (_uniform(seed, "noise-order", pairs[i].id), i))


def corrupt(pair: PreferencePair, seed: int) -> PreferencePair:
    """This item's corruption, the same at every rate (decided from a hash of seed and pair id)."""
    if _uniform(seed, "noise-kind", pair.id) < 0.5:
        old = pair.extra["category"]
        others = [c.value for c in CATEGORIES if c != old]
        new = others[min(int(_uniform(seed, "noise-flip", pair.id) * len(others)), len(others) - 1)]
        noise = {"kind": "category_flip", "original_category": old, "new_category": new}
        return replace(pair, extra={**pair.extra, "category": new, "noise": noise})
    return replace(pair, chosen=pair.rejected, rejected=pair.chosen, extra={**pair.extra, "noise": {"kind": "pair_swap"}})


def make_noisy(pairs: Sequence[PreferencePair], rate: float | str, seed: int) -> tuple[list[PreferencePair], dict[str, Any]]:
    """A copy of `pairs` (input order) with the first round(N * rate) items of the seeded order corrupted."""
    count = noisy_count(len(pairs), rate)
    corrupted = set(corruption_order(pairs, seed)[:count])
    noisy = [corrupt(p, seed) if i in corrupted else p for i, p in enumerate(pairs)]
    kinds = Counter(noisy[i].extra["noise"]["kind"] for i in corrupted)
    transitions = Counter(
        f"{n['original_category']}->{n['new_category']}"
        for i in corrupted if (n := noisy[i].extra["noise"])["kind"] == "category_flip"
    )
    total = len(pairs) or 1
    stats = {
        "rate": float(rate), "pairs": len(pairs), "corrupted": count,
        "category_flip": kinds["category_flip"], "pair_swap": kinds["pair_swap"],
        "flips_by_transition": dict(sorted(transitions.items())),
        "effective_noise_trace": count / total,  # share of items with a wrong label of any kind
        "effective_noise_dpo": kinds["pair_swap"] / total,  # what a plain DPO baseline sees: swaps only
        "per_category_after": dict(Counter(p.extra["category"] for p in noisy)),
    }
    return noisy, stats
