"""Readers (JSONL, JSON array, Parquet) and the atomic JSONL writer."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trace_engine.data.io import (
    DatasetError,
    detect_format,
    iter_jsonl_objects,
    iter_raw_rows,
    read_jsonl,
    write_jsonl,
)


def test_jsonl_rows_carry_line_numbers_and_bad_lines_do_not_stop_reading(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{"a": 2\n{"a": 3}\n\xff\xfe\n{"a": 4}\n')
    rows = list(iter_raw_rows(path))
    assert [r.row for r in rows] == [1, 3, 4, 5, 6]  # the blank line 2 is skipped but counted
    assert rows[0].data == {"a": 1} and rows[2].data == {"a": 3} and rows[4].data == {"a": 4}
    assert rows[1].data is None and "invalid JSON" in (rows[1].error or "")
    assert "UTF-8" in (rows[3].error or "")


def test_json_array_rows_are_numbered_from_one(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps([{"a": 1}, {"a": 2}]), encoding="utf-8")
    assert [(r.row, r.data) for r in iter_raw_rows(path)] == [(1, {"a": 1}), (2, {"a": 2})]


@pytest.mark.parametrize("content, message", [("[1, 2", "not valid JSON"), ('{"a": 1}', "expected a JSON array")])
def test_json_file_level_problems_raise_a_clear_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "p.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DatasetError, match=message):
        list(iter_raw_rows(path))


def test_parquet_rows_keep_nested_values(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    prompts = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "yo"}]]
    table = pa.table({"prompt": prompts, "chosen": ["a", "b"], "score": [0.5, 1.5]})
    pq.write_table(table, path, row_group_size=1)
    rows = list(iter_raw_rows(path))
    assert [r.row for r in rows] == [1, 2]
    assert rows[1].data == {"prompt": [{"role": "user", "content": "yo"}], "chosen": "b", "score": 1.5}


def test_format_detection_and_errors(tmp_path: Path) -> None:
    assert detect_format(Path("x.JSONL")) == "jsonl"
    assert detect_format(Path("x.txt"), "json") == "json"
    with pytest.raises(DatasetError, match="--format"):
        detect_format(Path("x.txt"))
    with pytest.raises(DatasetError, match="no such file"):
        list(iter_raw_rows(tmp_path / "missing.jsonl"))
    with pytest.raises(DatasetError, match="not a readable Parquet"):
        (tmp_path / "bad.parquet").write_text("nope", encoding="utf-8")
        list(iter_raw_rows(tmp_path / "bad.parquet"))
    with pytest.raises(DatasetError, match="directory"):
        list(iter_raw_rows(tmp_path))


def test_write_jsonl_round_trips_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "out.jsonl"
    rows = [{"id": "1", "prompt": "é"}, {"id": "2", "prompt": [{"role": "user", "content": "x"}]}]
    assert write_jsonl(path, rows) == 2
    assert [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] == rows
    assert [p.name for p in path.parent.iterdir()] == ["out.jsonl"]


def test_write_jsonl_failure_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    write_jsonl(path, [{"id": "old"}])

    def rows_then_crash():
        yield {"id": "new"}
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        write_jsonl(path, rows_then_crash())
    assert path.read_text(encoding="utf-8") == '{"id": "old"}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_read_jsonl_gives_the_rows_the_engine_wrote_and_refuses_a_damaged_one(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    write_jsonl(path, [{"step": 1}, {"step": 2}])
    assert list(read_jsonl(path)) == [{"step": 1}, {"step": 2}]
    path.write_text('{"step": 1}\n{"step": 2\n', encoding="utf-8")
    with pytest.raises(DatasetError, match="row 2"):
        list(read_jsonl(path))


def test_a_file_being_appended_to_yields_its_whole_objects_only(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 1}\n[1, 2]\n\n{"step": 2}\n{"step": 3, "lo')  # a list row, a torn last line
    assert list(iter_jsonl_objects(path)) == [{"step": 1}, {"step": 2}]
    assert list(iter_jsonl_objects(path, max_lines=3)) == [{"step": 1}]  # line 4 is past the bound
