"""Triage review, shared by the API (which records a reviewer's overrides) and the worker (which trains on them).

A job created with `review: true` parks in `awaiting_review` after triage. The reviewer's category overrides live
in `triage_items` (with the judge's original category); `POST /v1/jobs/{id}/continue` writes them to the job's
`triage/review.json`, and the scoring and training stages read the triaged rows through `apply_review`, so the
judge's `triaged.jsonl` stays as the judge wrote it. Pure stdlib: no database, no torch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from trace_engine.categories import CATEGORIES, Category

REVIEW_FILE = "triage/review.json"


def write_review(job_dir: Path, overrides: Mapping[str, str]) -> Path:
    """`{pair_id: category}` to the job's review file, atomically (a crash leaves the old file or the new)."""
    path = job_dir / REVIEW_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps({"overrides": dict(overrides)}, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(temporary, path)
    return path


def read_review(job_dir: Path) -> dict[str, str]:
    path = job_dir / REVIEW_FILE
    if not path.is_file():
        return {}
    return dict(json.loads(path.read_text(encoding="utf-8")).get("overrides") or {})


def reviewed_row(row: Mapping[str, Any], category: str) -> dict[str, Any]:
    """The triaged row as triage would have written it for `category`: INVERT trains on the swapped pair, every
    other category on the original texts; the verdicts follow their texts; `review` keeps the judge's category."""
    if category not in CATEGORIES:  # a reviewer decides; ERROR means a verdict is missing
        raise ValueError(f"not a reviewable category: {category!r}")
    out = dict(row)
    was_swapped = bool(row.get("swapped"))
    original_chosen = row.get("original_chosen", row["rejected"] if was_swapped else row["chosen"])
    original_rejected = row.get("original_rejected", row["chosen"] if was_swapped else row["rejected"])
    verdict_of_original_chosen = row.get("rejected_verdict") if was_swapped else row.get("chosen_verdict")
    verdict_of_original_rejected = row.get("chosen_verdict") if was_swapped else row.get("rejected_verdict")
    swap = category == Category.INVERT
    out.update({
        "category": category, "swapped": swap,
        "chosen": original_rejected if swap else original_chosen,
        "rejected": original_chosen if swap else original_rejected,
        "chosen_verdict": verdict_of_original_rejected if swap else verdict_of_original_chosen,
        "rejected_verdict": verdict_of_original_chosen if swap else verdict_of_original_rejected,
        "review": {"original_category": row.get("category")},
    })
    out.pop("error", None)
    return out


def apply_review(rows: Iterable[Mapping[str, Any]], overrides: Mapping[str, str]) -> list[dict[str, Any]]:
    """Rows with the reviewer's categories applied (rows without an override, or with their own category, as
    they are)."""
    return [reviewed_row(row, overrides[str(row["id"])])
            if str(row["id"]) in overrides and overrides[str(row["id"])] != row.get("category") else dict(row)
            for row in rows]
