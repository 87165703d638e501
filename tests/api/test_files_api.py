"""POST/GET /v1/files: validated uploads with row-level errors, size limit, id-derived storage, tenant scoping."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq

from .support import Harness, assert_problem

GOOD_ROWS = [{"prompt": f"q{i}", "chosen": "yes", "rejected": "no"} for i in range(3)]


def jsonl(rows: list[object]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def test_upload_jsonl_is_validated_and_stored_by_id(harness: Harness) -> None:
    response = harness.client.post("/v1/files", headers=harness.headers,
                                   files={"file": ("../../evil name.jsonl", jsonl(GOOD_ROWS))})
    assert response.status_code == 201, response.text
    record = response.json()
    assert record["rows"] == 3 and record["pairs"] == 3 and record["format"] == "jsonl"
    assert record["filename"] == "evil name.jsonl" and record["report"]["ok"] is True
    stored = list(harness.settings.files_dir.iterdir())
    assert [p.name for p in stored] == [f"{record['id']}.jsonl"]
    assert harness.client.get(f"/v1/files/{record['id']}", headers=harness.headers).json() == record
    assert [f["id"] for f in harness.client.get("/v1/files", headers=harness.headers).json()["data"]] == [record["id"]]


def test_upload_json_and_parquet(harness: Harness) -> None:
    as_json = harness.client.post("/v1/files", headers=harness.headers,
                                  files={"file": ("p.json", json.dumps(GOOD_ROWS).encode())})
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(GOOD_ROWS), buffer)
    as_parquet = harness.client.post("/v1/files", headers=harness.headers,
                                     files={"file": ("p.parquet", buffer.getvalue())})
    assert (as_json.status_code, as_parquet.status_code) == (201, 201)
    assert as_parquet.json()["pairs"] == 3 and as_json.json()["format"] == "json"


def test_invalid_rows_are_reported_with_row_numbers_and_nothing_is_stored(harness: Harness) -> None:
    rows = [GOOD_ROWS[0], {"prompt": "q", "chosen": "same", "rejected": "same"}, "{not json", {"prompt": "q2"}]
    body = b"".join((r if isinstance(r, str) else json.dumps(r)).encode() + b"\n" for r in rows)
    problem = assert_problem(harness.client.post("/v1/files", headers=harness.headers,
                                                 files={"file": ("bad.jsonl", body)}), 422)
    by_row = {(e["row"], e["field"]) for e in problem["errors"]}
    assert (2, "rejected") in by_row and (4, "chosen") in by_row and any(row == 3 for row, _ in by_row)
    assert problem["report"]["rows_read"] == 4 and problem["report"]["error_count"] >= 3
    assert list(harness.settings.files_dir.iterdir()) == []
    assert harness.client.get("/v1/files", headers=harness.headers).json()["data"] == []


def test_too_large_upload_is_413(harness: Harness) -> None:
    big = jsonl([{"prompt": "p" * 1000 + str(i), "chosen": "a", "rejected": "b"} for i in range(80)])
    assert len(big) > harness.settings.max_upload_bytes
    problem = assert_problem(harness.client.post("/v1/files", headers=harness.headers,
                                                 files={"file": ("big.jsonl", big)}), 413)
    assert problem["max_bytes"] == harness.settings.max_upload_bytes
    assert list(harness.settings.files_dir.iterdir()) == []


def test_unknown_format_and_empty_file(harness: Harness) -> None:
    assert_problem(harness.client.post("/v1/files", headers=harness.headers,
                                       files={"file": ("pairs.csv", b"a,b\n")}), 422)
    assert_problem(harness.client.post("/v1/files", headers=harness.headers,
                                       files={"file": ("empty.jsonl", b"")}), 422)
    assert_problem(harness.client.post("/v1/files", headers=harness.headers), 422)  # no file part


def test_another_tenants_file_is_not_found(harness: Harness) -> None:
    file_id = harness.client.post("/v1/files", headers=harness.headers,
                                  files={"file": ("p.jsonl", jsonl(GOOD_ROWS))}).json()["id"]
    other = harness.new_headers("other")
    assert_problem(harness.client.get(f"/v1/files/{file_id}", headers=other), 404)
    assert harness.client.get("/v1/files", headers=other).json()["data"] == []
