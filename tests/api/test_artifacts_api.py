"""A job's artifacts over HTTP (SQLite and Postgres): the list, downloads by name (validated against the job's
own list, never a path), the per-step metrics history and the impact scores, all tenant-scoped."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

from core.db.access.jobs import create_job
from core.db.engine import session_scope
from core.registry import job_folder

from .support import Harness, assert_problem, realign_body, register_adapter, tenant_of

STEPS = [{"step": i, "epoch": 0, "loss": 1.0 / i, "loss_pref": 0.5 / i, "kl": 0.01 * i, "reward_chosen": 0.1 * i,
          "reward_rejected": -0.1 * i, "margin": 0.2 * i} for i in range(1, 6)]
SCORED = [{"id": f"p{i}", "prompt": f"q{i}", "chosen": "a", "rejected": "b", "category": "INVERT" if i % 2 else
           "RETAIN", "impact_raw": 0.3 * i if i % 2 else None, "impact_score": 0.1 * i if i % 2 else None,
           "impact_kind": "invert" if i % 2 else None} for i in range(7)]


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def worker_outputs(folder: Path, *, torn_metrics: bool = True) -> dict[str, bytes]:
    """What the worker leaves in a job folder (worker.context documents the layout); a crash mid-line in the
    metrics history leaves a torn last line."""
    files = {
        "data/pairs.jsonl": _jsonl([{k: r[k] for k in ("id", "prompt", "chosen", "rejected")} for r in SCORED]),
        "triage/triaged.jsonl": _jsonl([{k: r[k] for k in ("id", "prompt", "category")} for r in SCORED]),
        "triage/summary.json": json.dumps({"counts": {"INVERT": 4, "RETAIN": 3}}),
        "score/scored.jsonl": _jsonl(SCORED),
        "score/summary.json": json.dumps({"scored": 4, "top": [{"id": "p5"}]}),
        "train/metrics.jsonl": _jsonl(STEPS) + ('{"step": 6, "lo' if torn_metrics else ""),
        "eval/report.json": json.dumps({"summary": {"tpa_before": 0.2, "tpa_after": 0.8}}),
        "eval/prompts.jsonl": _jsonl([{"id": "p1", "prompt": "q1", "source": "held_out"}]),
    }
    for relative, text in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text(text)
    return {k: v.encode() for k, v in files.items()}


def finished_job(harness: Harness) -> tuple[str, dict[str, bytes]]:
    """A job of the test tenant with a registered adapter and every artifact file written."""
    tenant = tenant_of(harness.sessions, harness.headers)
    adapter_id = register_adapter(harness.sessions, harness.settings, tenant, adapter_name="kind-v2")
    job_id = harness.client.get(f"/v1/adapters/{adapter_id}", headers=harness.headers).json()["job_id"]
    return job_id, worker_outputs(job_folder(harness.settings, job_id))


def test_the_list_names_each_artifact_with_its_size_hash_and_type(harness: Harness) -> None:
    job_id, files = finished_job(harness)
    listed = harness.client.get(f"/v1/jobs/{job_id}/artifacts", headers=harness.headers)
    assert listed.status_code == 200, listed.text
    by_name = {a["name"]: a for a in listed.json()["data"]}
    assert set(by_name) == {"dataset_snapshot", "triaged", "triage_summary", "scored", "score_summary",
                            "train_metrics", "eval_report", "eval_prompts", "adapter"}
    kinds = {a["kind"] for a in by_name.values()}
    assert {"triaged_pairs", "impact_scores", "metrics_history", "eval_report", "adapter"} <= kinds
    for artifact in by_name.values():
        if artifact["kind"] == "adapter":
            continue
        content = files[artifact["file"]]
        digest = None if artifact["name"] == "triaged" else hashlib.sha256(content).hexdigest()
        assert artifact["size_bytes"] == len(content) and artifact["sha256"] == digest
        assert artifact["url"] == f"/v1/jobs/{job_id}/artifacts/{artifact['name']}"
        assert not artifact["file"].startswith("/") and str(harness.settings.data_dir) not in artifact["file"]
    assert by_name["triaged"]["content_type"] == "application/x-ndjson"
    assert by_name["eval_report"]["content_type"] == "application/json"


def test_each_artifact_downloads_by_name_and_nothing_else_does(harness: Harness) -> None:
    job_id, files = finished_job(harness)
    for name, relative in (("triaged", "triage/triaged.jsonl"), ("scored", "score/scored.jsonl"),
                           ("train_metrics", "train/metrics.jsonl"), ("eval_report", "eval/report.json")):
        response = harness.client.get(f"/v1/jobs/{job_id}/artifacts/{name}", headers=harness.headers)
        assert response.status_code == 200, response.text
        assert response.content == files[relative]
    adapter = harness.client.get(f"/v1/jobs/{job_id}/artifacts/adapter", headers=harness.headers)
    assert adapter.headers["content-type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(adapter.content), mode="r:gz") as tar:
        assert "kind-v2/adapter_config.json" in tar.getnames()
    for bad in ("triage%2Ftriaged.jsonl", "..%2F..%2Frealign.db", "data", "verdicts", "checkpoints", "%2Fetc%2Fpasswd",
                "nope"):
        assert_problem(harness.client.get(f"/v1/jobs/{job_id}/artifacts/{bad}", headers=harness.headers), 404)


def test_judge_failures_in_the_triaged_pairs_are_served_sanitised(harness: Harness) -> None:
    job_id, _ = finished_job(harness)
    triaged = job_folder(harness.settings, job_id) / "triage" / "triaged.jsonl"
    leak = ("judge call failed: 401 from https://judge.internal/v1 Authorization: Bearer sk-live-abcdefghijkl"
            "mnopqrstuvwxyz0123456789 " + "x" * 2000)
    triaged.write_text(json.dumps({"id": "p0", "prompt": "q", "category": "ERROR", "error": leak}) + "\n")
    response = harness.client.get(f"/v1/jobs/{job_id}/artifacts/triaged", headers=harness.headers)
    assert response.status_code == 200
    [row] = [json.loads(line) for line in response.text.splitlines()]
    assert "sk-live" not in row["error"] and len(row["error"]) <= 400 and row["category"] == "ERROR"


def test_a_file_swapped_for_a_symlink_out_of_the_job_is_not_served(harness: Harness, tmp_path: Path) -> None:
    job_id, _ = finished_job(harness)
    secret = tmp_path / "secret.jsonl"
    secret.write_text('{"other": "tenant"}\n')
    triaged = job_folder(harness.settings, job_id) / "triage" / "triaged.jsonl"
    triaged.unlink()
    triaged.symlink_to(secret)
    names = [a["name"] for a in harness.client.get(f"/v1/jobs/{job_id}/artifacts", headers=harness.headers).json()[
        "data"]]
    assert "triaged" not in names
    assert_problem(harness.client.get(f"/v1/jobs/{job_id}/artifacts/triaged", headers=harness.headers), 404)


def test_another_tenant_gets_404_everywhere(harness: Harness) -> None:
    job_id, _ = finished_job(harness)
    other = harness.new_headers("other")
    for path in ("artifacts", "artifacts/triaged", "artifacts/adapter", "metrics", "scores"):
        assert_problem(harness.client.get(f"/v1/jobs/{job_id}/{path}", headers=other), 404)
    assert_problem(harness.client.get(f"/v1/jobs/{job_id}/artifacts"), 401)


def test_the_metrics_history_pages_by_step_and_skips_a_torn_last_line(harness: Harness) -> None:
    job_id, _ = finished_job(harness)
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = harness.client.get(f"/v1/jobs/{job_id}/metrics", params=params, headers=harness.headers)
        assert page.status_code == 200, page.text
        if not page.json()["data"]:
            break
        seen += page.json()["data"]
        cursor = page.json()["next_cursor"]
    assert seen == STEPS  # loss components, rewards and margins of every finished step; the torn step 6 is not
    assert cursor == "5"
    assert_problem(harness.client.get(f"/v1/jobs/{job_id}/metrics", params={"cursor": "x"},
                                      headers=harness.headers), 400)


def test_a_job_that_has_not_trained_yet_has_an_empty_history_and_no_scores(harness: Harness) -> None:
    with session_scope(harness.sessions) as session:
        job, _ = create_job(session, tenant_id=tenant_of(harness.sessions, harness.headers),
                            request=realign_body(), body_hash="h")
        job_id = job.id
    history = harness.client.get(f"/v1/jobs/{job_id}/metrics", headers=harness.headers).json()
    assert history["data"] == [] and history["next_cursor"] is None
    assert_problem(harness.client.get(f"/v1/jobs/{job_id}/scores", headers=harness.headers), 404)
    assert harness.client.get(f"/v1/jobs/{job_id}/artifacts", headers=harness.headers).json()["data"] == []


def test_impact_scores_map_each_pair_to_its_score_in_pages(harness: Harness) -> None:
    job_id, _ = finished_job(harness)
    first = harness.client.get(f"/v1/jobs/{job_id}/scores", params={"limit": 4}, headers=harness.headers).json()
    assert first["summary"] == {"scored": 4}
    second = harness.client.get(f"/v1/jobs/{job_id}/scores", params={"limit": 4, "cursor": first["next_cursor"]},
                                headers=harness.headers).json()
    assert second["next_cursor"] is None
    scores = {s["pair_id"]: s["impact_score"] for s in first["data"] + second["data"]}
    assert scores == {r["id"]: r["impact_score"] for r in SCORED}
    assert first["data"][1] == {"pair_id": "p1", "category": "INVERT", "impact_score": 0.1, "impact_raw": 0.3,
                                "impact_kind": "invert"}
