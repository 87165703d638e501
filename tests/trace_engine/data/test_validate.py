"""Row validation: every problem reported with its row and field, duplicates, derived ids, strict mode."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trace_engine.data.load import load_pairs
from trace_engine.data.validate import DatasetValidationError, derive_pair_id

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How do I bake bread?"}]


def row(i: int, **overrides: Any) -> dict[str, Any]:
    data = {"id": f"id-{i}", "prompt": f"prompt {i}", "chosen": f"good {i}", "rejected": f"bad {i}"}
    data.update(overrides)
    return data


def issues_of(report: Any) -> set[tuple[int | None, str | None, str]]:
    return {(i.row, i.field, i.kind) for i in report.issues}


def test_valid_rows_keep_chat_prompts_and_extra_fields(write_lines: Callable[..., Path]) -> None:
    path = write_lines([row(1, prompt=CHAT, category="RETAIN", meta={"src": "x"}), row(2)])
    pairs, report = load_pairs(path)
    assert report.ok and report.pairs_kept == 2 and report.rows_read == 2
    assert pairs[0].prompt == CHAT
    assert pairs[0].extra == {"category": "RETAIN", "meta": {"src": "x"}}
    assert pairs[0].to_row() == row(1, prompt=CHAT, category="RETAIN", meta={"src": "x"})


def test_same_rows_read_identically_from_json_and_parquet(tmp_path: Path) -> None:
    rows = [row(1, prompt=CHAT, score=0.25), row(2, prompt=CHAT, score=0.5)]
    (tmp_path / "p.json").write_text(json.dumps(rows), encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    from_json, _ = load_pairs(tmp_path / "p.json")
    from_parquet, report = load_pairs(tmp_path / "p.parquet")
    assert report.format == "parquet" and report.ok
    assert [p.to_row() for p in from_parquet] == [p.to_row() for p in from_json] == rows


@pytest.mark.parametrize(
    "bad, field, kind",
    [
        (row(0, chosen=None), "chosen", "missing_field"),
        ({"id": "x", "prompt": "p", "chosen": "c"}, "rejected", "missing_field"),
        (row(0, prompt="   "), "prompt", "empty_field"),
        (row(0, rejected=""), "rejected", "empty_field"),
        (row(0, chosen=3), "chosen", "wrong_type"),
        (row(0, prompt={"text": "p"}), "prompt", "wrong_type"),
        (row(0, chosen="same", rejected="same"), "rejected", "identical_responses"),
        (row(0, prompt=[]), "prompt", "bad_chat_messages"),
        (row(0, prompt=["hi"]), "prompt[0]", "bad_chat_messages"),
        (row(0, prompt=[{"role": "human", "content": "hi"}]), "prompt[0].role", "bad_chat_messages"),
        (row(0, prompt=[CHAT[0], {"role": "user"}]), "prompt[1].content", "bad_chat_messages"),
        (row(0, prompt=[{"role": "user", "content": " "}]), "prompt", "empty_field"),
        (row(0, id=""), "id", "empty_field"),
        (row(0, id=1.5), "id", "wrong_type"),
        ([1, 2], None, "not_an_object"),
    ],
)
def test_each_malformed_row_is_reported_with_row_and_field_and_skipped(
    write_lines: Callable[..., Path], bad: Any, field: str | None, kind: str
) -> None:
    path = write_lines([row(1), bad, row(3)])
    pairs, report = load_pairs(path)
    assert [p.id for p in pairs] == ["id-1", "id-3"]
    assert (2, field, kind) in issues_of(report)
    assert report.rows_skipped == 1 and report.error_count >= 1 and not report.ok


def test_values_json_cannot_store_are_reported(tmp_path: Path) -> None:
    rows = [row(i, prompt=[{"role": "user", "content": f"q{i}", "when": b"y" if i == 2 else None}],
                blob=b"x" if i == 1 else None) for i in (1, 2, 3)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    pairs, report = load_pairs(tmp_path / "p.parquet")
    assert [p.id for p in pairs] == ["id-3"]
    assert issues_of(report) == {(1, "blob", "wrong_type"), (2, "prompt[0]", "bad_chat_messages")}


def test_bad_json_line_reports_its_line_number(write_lines: Callable[..., Path]) -> None:
    path = write_lines([row(1), "", '{"id": "x", "prompt": ', row(4)])
    pairs, report = load_pairs(path)
    assert [p.id for p in pairs] == ["id-1", "id-4"]
    assert issues_of(report) == {(3, None, "bad_json")}


def test_one_row_with_several_problems_lists_each_field(write_lines: Callable[..., Path]) -> None:
    _, report = load_pairs(write_lines([{"prompt": [{"role": "user", "content": 1}], "chosen": "", "rejected": 2}]))
    assert issues_of(report) == {
        (1, "prompt[0].content", "bad_chat_messages"), (1, "chosen", "empty_field"), (1, "rejected", "wrong_type"),
    }
    assert report.rows_skipped == 1 and report.error_count == 3


def test_duplicate_pairs_are_dropped_by_default_and_kept_on_request(write_lines: Callable[..., Path]) -> None:
    path = write_lines([row(1), row(2), row(9, prompt="prompt 1", chosen="good 1", rejected="bad 1")])
    pairs, report = load_pairs(path)
    assert [p.id for p in pairs] == ["id-1", "id-2"]
    assert report.duplicates_dropped == 1 and report.ok  # a duplicate is a warning, not an error
    assert [(i.row, i.kind, i.severity) for i in report.issues] == [(3, "duplicate_pair", "warning")]
    assert "row 1" in report.issues[0].message
    pairs, report = load_pairs(path, drop_duplicates=False)
    assert [p.id for p in pairs] == ["id-1", "id-2", "id-9"] and report.duplicates_kept == 1


def test_duplicate_id_is_an_error_for_the_later_row(write_lines: Callable[..., Path]) -> None:
    pairs, report = load_pairs(write_lines([row(1), row(2, id="id-1")]))
    assert [p.chosen for p in pairs] == ["good 1"]
    assert issues_of(report) == {(2, "id", "duplicate_id")} and not report.ok


def test_missing_ids_are_derived_from_content_and_stable(write_lines: Callable[..., Path]) -> None:
    rows = [{k: v for k, v in row(i, prompt=CHAT if i == 2 else f"p{i}").items() if k != "id"} for i in (1, 2)]
    first, report = load_pairs(write_lines(rows, "a.jsonl"))
    again, _ = load_pairs(write_lines(list(reversed(rows)), "b.jsonl"))
    assert report.ids_derived == 2
    assert first[0].id == derive_pair_id("p1", "good 1", "bad 1") and first[0].id.startswith("pair-")
    assert {p.id for p in first} == {p.id for p in again} and first[0].id != first[1].id
    assert derive_pair_id("p", "a", "b") != derive_pair_id("p", "b", "a")


def test_integer_ids_become_strings(write_lines: Callable[..., Path]) -> None:
    pairs, _ = load_pairs(write_lines([row(1, id=7)]))
    assert pairs[0].id == "7"


def test_strict_checks_every_row_then_raises_with_the_report(write_lines: Callable[..., Path]) -> None:
    path = write_lines([row(1, chosen=""), row(2), "{oops", row(4)])
    with pytest.raises(DatasetValidationError) as caught:
        load_pairs(path, strict=True)
    report = caught.value.report
    assert report.rows_read == 4 and report.pairs_kept == 2
    assert issues_of(report) == {(1, "chosen", "empty_field"), (3, None, "bad_json")}
    clean, report = load_pairs(write_lines([row(1), row(2)], "clean.jsonl"), strict=True)
    assert len(clean) == 2 and report.ok


def test_category_is_checked_only_when_required(write_lines: Callable[..., Path]) -> None:
    path = write_lines([row(1, category="INVERT"), row(2, category="invert"), row(3)])
    assert load_pairs(path)[1].ok
    pairs, report = load_pairs(path, require_category=True)
    assert [p.id for p in pairs] == ["id-1"]
    assert issues_of(report) == {(2, "category", "bad_category"), (3, "category", "missing_field")}


def test_report_dict_and_text_carry_counts_and_issues(write_lines: Callable[..., Path]) -> None:
    _, report = load_pairs(write_lines([row(1), row(2, rejected=None), row(1)]), max_stored_issues=1)
    data = report.to_dict()
    assert data["rows_read"] == 3 and data["pairs_kept"] == 1 and data["rows_skipped"] == 1
    assert data["error_count"] == 1 and data["warning_count"] == 1 and data["duplicates_dropped"] == 1
    assert data["issues"] == [{"row": 2, "field": "rejected", "kind": "missing_field", "severity": "error",
                               "message": "rejected is missing"}]
    assert data["issues_not_stored"] == 1
    json.dumps(data)  # serialisable for the HTTP endpoint
    text = report.format_text()
    assert "row 2, field 'rejected'" in text and "errors: 1; warnings: 1" in text and "1 more" in text
