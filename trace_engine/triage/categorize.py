"""Triage decision (design.md §2) and the triaged row it produces: pure functions, no I/O.

Row layout written to `triaged.jsonl` (one per input pair, in input order):

- every original field of the pair (`id`, `prompt`, extra fields), then
- `chosen` / `rejected`: the pair *as used for training*. For INVERT they are swapped (preferred = old rejected);
  for every other category they are the original texts.
- `original_chosen` / `original_rejected`: the texts exactly as they were in the input.
- `swapped`: true only for INVERT.
- `category`: INVERT, PUNISH, RETAIN, or ERROR (a verdict is missing because the judge failed; never RETAIN).
- `chosen_verdict` / `rejected_verdict`: the verdict of the text now in `chosen` / `rejected` (they follow the text
  through the swap), each {verdict, clauses, rationale}, or null when that verdict is missing.
- `judge_id`, `policy_sha256`, `template_version`: what produced the verdicts.
- `oracle_response` (PUNISH with --oracle, when the rewrite succeeded) or `oracle_error` (when it failed).
- `error` (ERROR rows only): why the verdict is missing.
"""

from __future__ import annotations

from typing import Any

from trace_engine.categories import Category
from trace_engine.data.pairs import PreferencePair
from trace_engine.judge.base import Verdict


def categorize(chosen: Verdict | None, rejected: Verdict | None) -> Category:
    """INVERT / PUNISH / RETAIN from the two verdicts; ERROR when a verdict the decision needs is missing.

    A compliant chosen is RETAIN whatever the rejected verdict is, but we still require both verdicts: a pair with
    a missing verdict is listed as ERROR so a re-run retries it instead of silently keeping it.
    """
    if chosen is None or rejected is None:
        return Category.ERROR
    if not chosen.violating:
        return Category.RETAIN
    return Category.PUNISH if rejected.violating else Category.INVERT


def triaged_row(
    pair: PreferencePair,
    chosen_verdict: Verdict | None,
    rejected_verdict: Verdict | None,
    *,
    judge_id: str,
    policy_sha256: str,
    template_version: str,
    error: str | None = None,
    oracle_response: str | None = None,
    oracle_error: str | None = None,
) -> dict[str, Any]:
    """The output row for one pair (layout in the module docstring)."""
    category = categorize(chosen_verdict, rejected_verdict)
    swapped = category is Category.INVERT
    row: dict[str, Any] = pair.to_row()
    row.update(
        {
            "category": category.value,
            "swapped": swapped,
            "chosen": pair.rejected if swapped else pair.chosen,
            "rejected": pair.chosen if swapped else pair.rejected,
            "original_chosen": pair.chosen,
            "original_rejected": pair.rejected,
            "chosen_verdict": _verdict_dict(rejected_verdict if swapped else chosen_verdict),
            "rejected_verdict": _verdict_dict(chosen_verdict if swapped else rejected_verdict),
            "judge_id": judge_id,
            "policy_sha256": policy_sha256,
            "template_version": template_version,
        }
    )
    for stale in ("oracle_response", "oracle_error", "error"):
        row.pop(stale, None)  # a re-triaged file must not carry a previous run's fields
    if category is Category.ERROR:
        row["error"] = error or "verdict missing"
    if oracle_response is not None:
        row["oracle_response"] = oracle_response
    if oracle_error is not None:
        row["oracle_error"] = oracle_error
    return row


def _verdict_dict(verdict: Verdict | None) -> dict[str, Any] | None:
    return verdict.to_dict() if verdict is not None else None
