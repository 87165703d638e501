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
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

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


@dataclass(frozen=True)
class VariantSpec:
    """pairs: 'relabelled' (triaged chosen/rejected, INVERT swapped) or 'original' (texts as in the input).
    every_row: when set, every row gets this use and categories are not read (no triage).
    invert/punish/retain: the use of each category's rows (None = row not trained on).
    weights: 'impact' (the row's impact_score for INVERT/PUNISH) or 'uniform'.
    pref_loss: fixed preference loss for baselines that define one (None = the config's choice)."""

    pairs: str = "relabelled"
    every_row: RowUse | None = None
    invert: RowUse | None = None
    punish: RowUse | None = None
    retain: RowUse | None = None
    weights: str = "uniform"
    pref_loss: str | None = None
    description: str = ""


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
        pairs="original", every_row="npo_dispreferred", weights="uniform",
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

CATEGORIES = ("INVERT", "PUNISH", "RETAIN")
_SKIPPED_CATEGORIES = ("ERROR",)


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
    if spec.weights == "impact" and effective not in SCORED_PREF_LOSSES:
        raise DataError(
            f"impact scores support pref_loss {' or '.join(SCORED_PREF_LOSSES)}, not {effective!r}, and variant "
            f"{variant!r} weights pairs by impact scores: use one of those losses, or a uniform-weight variant "
            f"(no_impact, rdpo) to train with {effective}")


def prepare_examples(rows: list[dict[str, Any]], variant: str) -> PreparedData:
    """Rows -> examples for `variant`, with clear errors for anything the variant cannot use."""
    spec = get_variant(variant)
    counts: Counter[str] = Counter()
    examples: list[Example] = []
    missing_scores: list[str] = []
    missing_oracle: list[str] = []
    for i, row in enumerate(rows):
        row_id = str(row.get("id", i))
        category = None if spec.every_row else _category(row, row_id)
        if category in _SKIPPED_CATEGORIES:
            counts["skipped_error_rows"] += 1
            continue
        use = spec.every_row or {"INVERT": spec.invert, "PUNISH": spec.punish, "RETAIN": spec.retain}[category]
        if use is None:
            counts[f"unused_{category}"] += 1
            continue
        preferred, dispreferred = _texts(row, spec.pairs, row_id)
        kind = _kind(use)
        if use in ("oracle_pref", "oracle_pref_or_npo"):
            oracle = row.get("oracle_response")
            if isinstance(oracle, str) and oracle.strip():
                preferred, dispreferred, kind = oracle, preferred, LossKind.PREF  # y_c over y_w
            elif use == "oracle_pref":
                missing_oracle.append(row_id)
                continue
            else:
                kind = LossKind.DUAL_NPO
                counts["oracle_fallback_npo"] += 1
        weight = 1.0
        if spec.weights == "impact" and category in ("INVERT", "PUNISH"):
            score = row.get("impact_score")
            if not isinstance(score, (int, float)) or isinstance(score, bool) or not math.isfinite(score):
                missing_scores.append(row_id)
                continue
            if score < 0:
                raise DataError(f"row {row_id}: impact_score {score} is negative; scoring clamps weights at 0")
            weight = float(score)
        if weight == 0.0:
            counts["skipped_zero_weight"] += 1
            continue
        counts[kind.name] += 1
        examples.append(Example(row_id, row["prompt"], preferred, dispreferred, kind, weight, category))
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
    if not spec.every_row and not any(e.category in ("INVERT", "PUNISH") for e in examples):
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
