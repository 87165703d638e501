from __future__ import annotations

import pytest

from trace_engine.categories import Category
from trace_engine.data.pairs import PreferencePair
from trace_engine.judge.base import Verdict
from trace_engine.triage.categorize import categorize, triaged_row

OK = Verdict("compliant")
BAD = Verdict("violating", ("C1",), "breaks C1")


@pytest.mark.parametrize(
    ("chosen", "rejected", "expected"),
    [
        (BAD, OK, Category.INVERT),
        (BAD, BAD, Category.PUNISH),
        (OK, OK, Category.RETAIN),
        (OK, BAD, Category.RETAIN),
        (None, OK, Category.ERROR),
        (OK, None, Category.ERROR),
        (BAD, None, Category.ERROR),
        (None, None, Category.ERROR),
    ],
)
def test_category_table(chosen: Verdict | None, rejected: Verdict | None, expected: Category) -> None:
    assert categorize(chosen, rejected) is expected


def _row(chosen: Verdict | None, rejected: Verdict | None, **kw: object) -> dict:
    pair = PreferencePair(
        id="a", prompt="q", chosen="old chosen", rejected="old rejected", extra={"src": "x"}
    )
    return triaged_row(pair, chosen, rejected, judge_id="j", policy_sha256="h", template_version="v", **kw)


def test_invert_row_swaps_texts_and_verdicts_follow_them() -> None:
    row = _row(BAD, OK)
    assert row["category"] == "INVERT" and row["swapped"] is True
    assert (row["chosen"], row["rejected"]) == ("old rejected", "old chosen")
    assert (row["original_chosen"], row["original_rejected"]) == ("old chosen", "old rejected")
    assert row["chosen_verdict"]["verdict"] == "compliant"
    assert row["rejected_verdict"] == {"verdict": "violating", "clauses": ["C1"], "rationale": "breaks C1"}
    assert row["src"] == "x" and row["judge_id"] == "j" and row["policy_sha256"] == "h"


@pytest.mark.parametrize(("chosen", "rejected"), [(BAD, BAD), (OK, BAD), (OK, OK)])
def test_other_categories_keep_the_pair(chosen: Verdict, rejected: Verdict) -> None:
    row = _row(chosen, rejected)
    assert row["swapped"] is False
    assert (row["chosen"], row["rejected"]) == ("old chosen", "old rejected")
    assert row["chosen_verdict"]["verdict"] == chosen.verdict
    assert "error" not in row


def test_error_row_is_listed_not_retained() -> None:
    row = _row(OK, None, error="rejected: HTTP 500")
    assert row["category"] == "ERROR" and row["error"] == "rejected: HTTP 500"
    assert row["rejected_verdict"] is None and row["swapped"] is False


def test_oracle_fields_and_stale_fields() -> None:
    pair = PreferencePair(id="a", prompt="q", chosen="c", rejected="r", extra={"oracle_response": "stale"})
    row = triaged_row(
        pair, BAD, BAD, judge_id="j", policy_sha256="h", template_version="v", oracle_error="boom"
    )
    assert row["oracle_error"] == "boom" and "oracle_response" not in row
    row = triaged_row(
        pair, BAD, BAD, judge_id="j", policy_sha256="h", template_version="v", oracle_response="y_c"
    )
    assert row["oracle_response"] == "y_c" and "oracle_error" not in row
