"""Variants and baselines as data (design.md §5): which rows get which loss, with which weights.

A triaged row (see `trace_engine.triage.categorize`) becomes at most one `Example`: a (prompt, preferred,
dispreferred) triple, the loss it gets, and its weight. Rows that would get no loss or weight 0 are dropped here,
so they never reach a batch. Everything is checked before any model is loaded.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum, IntEnum
from typing import Any

from trace_engine.categories import CATEGORIES, CONFLICT_CATEGORIES, Category
from trace_engine.data.pairs import Prompt, prompt_key


class LossKind(IntEnum):
    """Per-example loss; the integer is the code used in the per-batch mask tensor."""

    PREF = 0  # ℓ_pref(preferred, dispreferred): DPO, IPO or rDPO
    DUAL_NPO = 1  # NPO on both responses (both violate)
    NPO_DISPREFERRED = 2  # NPO on the dispreferred response only
    KL = 3  # token-level KL to the reference on both responses (anchor)


# How a category's row is used. "oracle_pref" = ℓ_pref(oracle_response, chosen); "oracle_pref_or_npo" falls back
# to dual NPO when the oracle rewrite is missing (never an empty preferred answer).
RowUse = str
_ROW_USES = {"pref", "dual_npo", "npo_dispreferred", "kl", "oracle_pref", "oracle_pref_or_npo"}
_ORACLE_USES = ("oracle_pref", "oracle_pref_or_npo")


@dataclass(frozen=True)
class VariantSpec:
    """pairs: 'relabelled' (triaged chosen/rejected, INVERT swapped) or 'original' (texts as in the input).
    every_row: when set, every row gets this use and categories are not read (no triage).
    invert/punish/retain: the use of each category's rows (None = row not trained on).
    weights: 'impact' (the row's impact_score for INVERT/PUNISH) or 'uniform'.
    pref_loss: fixed preference loss for baselines that define one (None = the config's choice).
    scored_ablation: a uniform-weight variant whose rows `realign score` still scores (to study the scores)."""

    pairs: str = "relabelled"
    every_row: RowUse | None = None
    invert: RowUse | None = None
    punish: RowUse | None = None
    retain: RowUse | None = None
    weights: str = "uniform"
    pref_loss: str | None = None
    scored_ablation: bool = False
    description: str = ""

    @property
    def needs_triage(self) -> bool:
        """Rows must carry a triage category (the service runs the triage stage)."""
        return self.pairs != "original"

    @property
    def needs_scores(self) -> bool:
        """INVERT/PUNISH rows are weighted by impact scores (the service runs the score stage)."""
        return self.weights == "impact"

    @property
    def needs_oracle(self) -> bool:
        """PUNISH rows read the oracle's compliant rewrite (triage asks the judge for one)."""
        return any(use in _ORACLE_USES for use in (self.every_row, self.invert, self.punish, self.retain))

    @property
    def anchors_retain(self) -> bool:
        """RETAIN rows train a KL anchor (what α_KL weighs and the anchor check checks)."""
        return self.use_of(Category.RETAIN) == "kl"

    @property
    def scorable(self) -> bool:
        """Impact scores can be taken for this variant's rows."""
        return self.needs_scores or self.scored_ablation

    def use_of(self, category: str | None) -> RowUse | None:
        """The loss a row of `category` gets (None: the row is not trained on)."""
        if self.every_row:
            return self.every_row
        return {Category.INVERT: self.invert, Category.PUNISH: self.punish, Category.RETAIN: self.retain}[category]

    def scores_weight(self, category: str | None) -> bool:
        """Whether a row of `category` is one impact scores weight: every row of an every-row variant, else the
        conflicting (INVERT, PUNISH) rows."""
        return self.every_row is not None or category in CONFLICT_CATEGORIES


VARIANTS: dict[str, VariantSpec] = {
    "trace": VariantSpec(
        invert="pref", punish="dual_npo", retain="kl", weights="impact",
        description="full TRACE: ℓ_pref on INVERT, dual NPO on PUNISH, KL on RETAIN, impact weights",
    ),
    "trace_oracle": VariantSpec(
        invert="pref", punish="oracle_pref_or_npo", retain="kl", weights="impact",
        description="PUNISH uses ℓ_pref(oracle, chosen); falls back to dual NPO where the oracle rewrite failed",
    ),
    "no_impact": VariantSpec(
        invert="pref", punish="dual_npo", retain="kl", weights="uniform",
        description="TRACE with uniform weights",
    ),
    "no_triage": VariantSpec(
        pairs="original", every_row="npo_dispreferred", weights="uniform", scored_ablation=True,
        description="NPO on every pair's ORIGINAL rejected response (no triage information leaks in)",
    ),
    "no_kl": VariantSpec(
        invert="pref", punish="dual_npo", retain=None, weights="impact",
        description="TRACE without the KL anchor (RETAIN rows unused)",
    ),
    "dpo": VariantSpec(
        pairs="original", every_row="pref", weights="uniform", pref_loss="dpo",
        description="DPO on the original (old-policy) pairs",
    ),
    "naive_oracle_dpo": VariantSpec(
        invert="pref", punish="pref", retain="pref", weights="uniform", pref_loss="dpo",
        description="DPO on the relabelled pairs, uniform weights, no NPO, no KL",
    ),
    "dpo_gold": VariantSpec(
        invert="pref", punish="oracle_pref", retain="pref", weights="uniform", pref_loss="dpo",
        description="upper bound: relabelled pairs, PUNISH preferred = oracle-written compliant answer",
    ),
    "rdpo": VariantSpec(
        invert="pref", punish="pref", retain="pref", weights="uniform", pref_loss="rdpo",
        description="robust DPO (ε > 0) on the relabelled pairs",
    ),
    "ipo": VariantSpec(
        invert="pref", punish="pref", retain="pref", weights="uniform", pref_loss="ipo",
        description="IPO (length-normalised) on the relabelled pairs",
    ),
    "u2a": VariantSpec(
        invert="npo_dispreferred", punish="dual_npo", retain=None, weights="uniform",
        description="unlearning only: NPO on every violating response",
    ),
}
VARIANTS["npo"] = VARIANTS["u2a"]

_SKIPPED_CATEGORIES = (Category.ERROR,)
SCORING_VARIANTS = tuple(name for name, spec in VARIANTS.items() if spec.scorable)


def scored_as(variant: str) -> str:
    """The first scorable variant whose rows are scored exactly like `variant`'s (no_kl -> trace): scores taken
    for one serve the other. A variant no scorable one matches is its own."""
    key = _scoring_key(get_variant(variant))
    return next((name for name in SCORING_VARIANTS if _scoring_key(VARIANTS[name]) == key), variant)


def _scoring_key(spec: VariantSpec) -> tuple[Any, ...]:
    return spec.pairs, spec.every_row, spec.invert, spec.punish, spec.scored_ablation


class SampleKind(str, Enum):
    """Which loss a scored row gets (and so which sequences it reads, in this order); the label scores carry."""

    INVERT = "INVERT"  # ℓ_pref(x, preferred, dispreferred) on the triaged (already swapped) pair
    PUNISH_NPO = "PUNISH_NPO"  # dual NPO on both violating responses (y_w, y_l)
    PUNISH_ORACLE = "PUNISH_ORACLE"  # ℓ_pref(x, y_c, y_w) with the judge-written compliant y_c
    NO_TRIAGE = "NO_TRIAGE"  # ablation: NPO on the pair's ORIGINAL rejected response (one sequence)

    @property
    def loss(self) -> LossKind:
        return _SAMPLE_LOSS[self]

    @property
    def arity(self) -> int:
        """Sequences the loss reads."""
        return 1 if self.loss is LossKind.NPO_DISPREFERRED else 2


_SAMPLE_LOSS = {
    SampleKind.INVERT: LossKind.PREF,
    SampleKind.PUNISH_NPO: LossKind.DUAL_NPO,
    SampleKind.PUNISH_ORACLE: LossKind.PREF,
    SampleKind.NO_TRIAGE: LossKind.NPO_DISPREFERRED,
}


class DataError(ValueError):
    """The training rows do not fit the variant; raised before any model work."""


@dataclass(frozen=True)
class Example:
    """One training example. For DUAL_NPO, preferred/dispreferred are just the two violating responses."""

    row_id: str
    prompt: Prompt
    preferred: str
    dispreferred: str
    kind: LossKind
    weight: float
    category: str | None


@dataclass
class PreparedData:
    examples: list[Example]
    counts: dict[str, int] = field(default_factory=dict)  # per kind, skipped reasons
    provenance: dict[str, list[str]] = field(default_factory=dict)  # policy hashes, judge ids seen in rows

    def data_hash(self) -> str:
        """Hash of exactly what training consumes (texts, kinds, weights), in order."""
        h = hashlib.sha256()
        for e in self.examples:
            rec = [e.row_id, prompt_key(e.prompt), e.preferred, e.dispreferred, int(e.kind), repr(e.weight)]
            h.update(json.dumps(rec, ensure_ascii=False).encode("utf-8"))
            h.update(b"\n")
        return h.hexdigest()


def get_variant(name: str) -> VariantSpec:
    if name not in VARIANTS:
        raise DataError(f"unknown variant {name!r}; known: {', '.join(sorted(VARIANTS))}")
    return VARIANTS[name]


SCORED_PREF_LOSSES = ("dpo", "ipo")  # the preference losses impact scoring takes gradients of (impact.LossSettings)


def check_pref_loss(variant: str, pref_loss: str) -> None:
    """The one rule every entry point applies (CLI, service, training): a variant weighted by impact scores trains
    with a preference loss the scores were taken for. Scoring supports `SCORED_PREF_LOSSES`; anything else would be
    scored with one loss and trained with another."""
    spec = get_variant(variant)
    effective = spec.pref_loss or pref_loss
    if spec.needs_scores and effective not in SCORED_PREF_LOSSES:
        raise DataError(
            f"impact scores support pref_loss {' or '.join(SCORED_PREF_LOSSES)}, not {effective!r}, and variant "
            f"{variant!r} weights pairs by impact scores: use one of those losses, or a uniform-weight variant "
            f"(no_impact, rdpo) to train with {effective}")


@dataclass(frozen=True)
class RowChoice:
    """What one row becomes under a variant: an example (weight 1; the caller applies impact weights) or a skip.

    note: why the row was skipped, or a remark on the example (`oracle_fallback_npo`), for the counts.
    oracle: the preferred response is the oracle's rewrite.
    """

    example: Example | None
    note: str | None = None
    oracle: bool = False

    @property
    def sample_kind(self) -> SampleKind:
        """The label impact scoring gives this row's example."""
        e = self.example
        assert e is not None
        if e.kind is LossKind.PREF:
            return SampleKind.PUNISH_ORACLE if self.oracle else SampleKind.INVERT
        return {LossKind.DUAL_NPO: SampleKind.PUNISH_NPO, LossKind.NPO_DISPREFERRED: SampleKind.NO_TRIAGE}[e.kind]


def choose_row(row: dict[str, Any], index: int, spec: VariantSpec) -> RowChoice:
    """The row selection training and scoring share: which loss a row gets under `spec`, on which texts."""
    row_id = str(row.get("id", index))
    if row.get("category") in _SKIPPED_CATEGORIES:  # a failed verdict: never trained on, not even without triage
        return RowChoice(None, "skipped_error_rows")
    category = None if spec.every_row else _category(row, row_id)
    use = spec.use_of(category)
    if use is None:
        return RowChoice(None, f"unused_{category}")
    preferred, dispreferred = _texts(row, spec.pairs, row_id)
    kind, note, oracle_used = _kind(use), None, False
    if use in _ORACLE_USES:
        oracle = row.get("oracle_response")
        if isinstance(oracle, str) and oracle.strip():
            preferred, dispreferred, kind, oracle_used = oracle, preferred, LossKind.PREF, True  # y_c over y_w
        elif use == "oracle_pref":
            return RowChoice(None, "missing_oracle")
        else:
            kind, note = LossKind.DUAL_NPO, "oracle_fallback_npo"
    return RowChoice(Example(row_id, row["prompt"], preferred, dispreferred, kind, 1.0, category), note, oracle_used)


def anchor_weight(row: Mapping[str, Any], row_id: str) -> float:
    """A RETAIN row's KL-anchor weight set by scoring's anchor check (`scoring.WeightShaping.check_anchors`)."""
    value = row["anchor_weight"]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise DataError(f"row {row_id}: anchor_weight must be a number >= 0, got {value!r}")
    return float(value)


def prepare_examples(rows: list[dict[str, Any]], variant: str) -> PreparedData:
    """Rows -> examples for `variant`, with clear errors for anything the variant cannot use."""
    spec = get_variant(variant)
    counts: Counter[str] = Counter()
    examples: list[Example] = []
    missing_scores: list[str] = []
    missing_oracle: list[str] = []
    for i, row in enumerate(rows):
        choice = choose_row(row, i, spec)
        example = choice.example
        if example is None:
            if choice.note == "missing_oracle":
                missing_oracle.append(str(row.get("id", i)))
            else:
                counts[str(choice.note)] += 1
            continue
        if choice.note:
            counts[choice.note] += 1
        weight = 1.0
        if spec.needs_scores and spec.scores_weight(example.category):
            score = row.get("impact_score")
            if not isinstance(score, (int, float)) or isinstance(score, bool) or not math.isfinite(score):
                missing_scores.append(example.row_id)
                continue
            if score < 0:
                raise DataError(f"row {example.row_id}: impact_score {score} is negative; scoring clamps weights at 0")
            weight = float(score)
        elif spec.needs_scores and example.kind is LossKind.KL and "anchor_weight" in row:
            weight = anchor_weight(row, example.row_id)
        if weight == 0.0:
            counts["skipped_zero_weight"] += 1
            continue
        counts[example.kind.name] += 1
        examples.append(replace(example, weight=weight))
    if missing_scores:
        raise DataError(
            f"variant {variant!r} weights conflicting pairs by impact, but {len(missing_scores)} INVERT/PUNISH rows "
            f"have no numeric impact_score (first: {missing_scores[:3]}); run scoring first or use 'no_impact'"
        )
    if missing_oracle:
        raise DataError(
            f"variant {variant!r} needs an oracle_response for every PUNISH row; {len(missing_oracle)} lack one "
            f"(first: {missing_oracle[:3]}); re-run triage with the oracle, or use 'trace_oracle' (NPO fallback)"
        )
    if not spec.every_row and not any(e.category in CONFLICT_CATEGORIES for e in examples):
        raise DataError(
            f"no INVERT or PUNISH rows to train on for variant {variant!r} (empty conflict set): the new policy "
            "changes nothing in this data, or every conflicting row has weight 0"
        )
    if not examples:
        raise DataError(f"no rows to train on for variant {variant!r}")
    provenance = {
        key: sorted({str(r[key]) for r in rows if r.get(key)}) for key in ("policy_sha256", "judge_id", "template_version")
    }
    return PreparedData(examples, dict(counts), provenance)


def _category(row: dict[str, Any], row_id: str) -> str:
    category = row.get("category")
    if category not in CATEGORIES and category not in _SKIPPED_CATEGORIES:
        raise DataError(
            f"row {row_id}: unknown category {category!r}; expected one of {', '.join(CATEGORIES)} "
            "(run triage first, or use a variant that needs no triage: 'dpo', 'no_triage')"
        )
    return category


def _texts(row: dict[str, Any], pairs: str, row_id: str) -> tuple[str, str]:
    if pairs == "original":
        chosen = row.get("original_chosen", row.get("chosen"))
        rejected = row.get("original_rejected", row.get("rejected"))
    else:
        chosen, rejected = row.get("chosen"), row.get("rejected")
    if not isinstance(chosen, str) or not isinstance(rejected, str) or "prompt" not in row:
        raise DataError(f"row {row_id}: needs a prompt and string chosen/rejected responses")
    return chosen, rejected


def _kind(use: RowUse) -> LossKind:
    if use not in _ROW_USES:
        raise DataError(f"unknown row use {use!r}")
    return {
        "pref": LossKind.PREF,
        "dual_npo": LossKind.DUAL_NPO,
        "npo_dispreferred": LossKind.NPO_DISPREFERRED,
        "kl": LossKind.KL,
        "oracle_pref": LossKind.PREF,
        "oracle_pref_or_npo": LossKind.PREF,
    }[use]
