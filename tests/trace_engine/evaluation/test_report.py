from __future__ import annotations

import json

import pytest

from trace_engine.evaluation.report import (
    EvalReport,
    SuiteResult,
    compare_reports,
    render_comparison,
    render_markdown,
)
from trace_engine.evaluation.stats import Rate, rate


def _report(tpa: float, asr: float, judge: str = "openai:gpt-4o", triage: str | None = "openai:gpt-4o-mini"):
    n = 100
    suites = {
        "tpa": SuiteResult("tpa", {"overall": rate([True] * int(tpa * n) + [False] * (n - int(tpa * n)))}),
        "asr": SuiteResult(
            "asr",
            {"overall": rate([True] * int(asr * n) + [False] * (n - int(asr * n)), higher_is_better=False)},
            records=[{"x": 1}],
            notes=["a note"],
        ),
    }
    return EvalReport(
        model={"model": "m", "revision": None, "adapter": "ad"},
        eval_judge_id=judge,
        triage_judge_id=triage,
        policy={"name": "p", "sha256": "ab" * 32},
        settings={"seed": 0},
        suites=suites,
        created_at="2026-01-01T00:00:00+00:00",
        judge_usage={"calls": 3},
    )


def test_report_round_trips_through_json_without_records():
    report = _report(0.6, 0.2)
    text = report.to_json()
    data = json.loads(text)
    assert data["eval_judge_id"] == "openai:gpt-4o" and data["triage_judge_id"] == "openai:gpt-4o-mini"
    assert data["same_judge_as_triage"] is False
    assert "records" not in data["suites"]["asr"]
    back = EvalReport.from_dict(data)
    assert back.metric_table() == report.metric_table()
    assert back.suites["asr"].notes == ["a note"] and back.judge_usage == {"calls": 3}
    with pytest.raises(ValueError, match="schema"):
        EvalReport.from_dict({**data, "schema": 99})


def test_markdown_has_tables_with_cis_and_the_circularity_warning():
    md = render_markdown(_report(0.6, 0.2, judge="j", triage="j"))
    assert "| overall | 60.0 | [" in md and "| lower |" in md
    assert "evaluation judge is the triage judge" in md
    assert "circular" not in render_markdown(_report(0.6, 0.2))


def test_compare_reports_direction_aware():
    before, after = _report(0.5, 0.3), _report(0.7, 0.1)
    after.suites["tpa"].metrics["category=INVERT"] = Rate(0.9, 0.8, 1.0, 10, 9)
    deltas = {d.metric: d for d in compare_reports(before, after)}
    assert deltas["tpa/overall"].delta == pytest.approx(0.2) and deltas["tpa/overall"].improved is True
    assert (
        deltas["asr/overall"].delta == pytest.approx(-0.2) and deltas["asr/overall"].improved is True
    )  # lower
    assert deltas["tpa/category=INVERT"].before is None and deltas["tpa/category=INVERT"].delta is None
    worse = {d.metric: d for d in compare_reports(after, before)}
    assert worse["asr/overall"].improved is False
    same = {d.metric: d for d in compare_reports(before, before)}
    assert same["tpa/overall"].improved is None and same["tpa/overall"].intervals_overlap is True
    table = render_comparison(list(deltas.values()))
    assert "| tpa/overall | 50.0 | 70.0 | +20.0 | yes |" in table
    assert "| tpa/category=INVERT | missing | 90.0 | n/a |" in table
