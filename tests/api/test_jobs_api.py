"""POST /v1/realign, job reads, listing, cancel, events (JSON) and triage paging, on SQLite and Postgres."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from core.db.access.jobs import set_job_results, transition_job
from core.db.access.leases import stale_queued_jobs
from core.db.access.stages import complete_stage, record_progress, start_stage
from core.db.access.triage import add_triage_items
from core.db.engine import session_scope
from core.db.models import StageProgress
from core.db.states import JobState, Stage
from core.settings import JudgeProfile

from .support import Harness, assert_problem, realign_body


def submit(h: Harness, body: dict[str, Any], headers: dict[str, str] | None = None, **extra: str) -> Any:
    return h.client.post("/v1/realign", json=body, headers={**(headers or h.headers), **extra})


def field_errors(problem: dict[str, Any]) -> dict[str, str]:
    return {e["field"]: e["message"] for e in problem["errors"]}


def test_submit_queues_the_job_and_enqueues_validation(harness: Harness, body: dict[str, Any]) -> None:
    response = submit(harness, body)
    assert response.status_code == 202
    job = response.json()
    assert job["state"] == "queued" and job["stage"] is None
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert harness.enqueuer.calls == [(job["id"], "validate")]
    assert job["request"]["method"]["hyperparameters"]["beta"] == 0.3  # defaults filled in
    assert harness.client.get(f"/v1/jobs/{job['id']}", headers=harness.headers).json()["id"] == job["id"]


def test_idempotency_key_returns_the_same_job_for_the_same_body(harness: Harness, body: dict[str, Any]) -> None:
    first = submit(harness, body, **{"Idempotency-Key": "k-1"})
    reordered = json.loads(json.dumps(dict(reversed(list(body.items())))))
    second = submit(harness, reordered, **{"Idempotency-Key": "k-1"})
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert second.headers["idempotent-replayed"] == "true"
    assert len(harness.enqueuer.calls) == 1
    changed = realign_body(metadata={"ticket": "T-2"})
    problem = assert_problem(submit(harness, changed, **{"Idempotency-Key": "k-1"}), 422)
    assert problem["job_id"] == first.json()["id"] and "Idempotency-Key" in field_errors(problem)
    other = submit(harness, body, **{"Idempotency-Key": "k-2"})
    assert other.json()["id"] != first.json()["id"]


def test_same_idempotency_key_in_another_tenant_is_a_different_job(harness: Harness, body: dict[str, Any]) -> None:
    mine = submit(harness, body, **{"Idempotency-Key": "shared"}).json()
    theirs = submit(harness, body, harness.new_headers("other"), **{"Idempotency-Key": "shared"}).json()
    assert mine["id"] != theirs["id"]


def test_validation_errors_are_problems_with_field_details(harness: Harness) -> None:
    cases = {
        "method.variant": realign_body(method={"variant": "bogus"}),
        "judge": realign_body(judge={"provider": "openai", "model": "m", "api_key_secret": "sk-proj-abcdef0123456789"}),
        "dataset.synthetic.n": realign_body(dataset={"type": "synthetic", "n": 0}),
        "policy": realign_body(policy={"name": "x"}),
        "dataset": realign_body(dataset={"type": "ftp", "url": "x"}),
        "metadata.x": None,
    }
    del cases["metadata.x"]
    for field, bad in cases.items():
        problem = assert_problem(submit(harness, bad), 422)
        fields = field_errors(problem)
        assert any(f.startswith(field) for f in fields), (field, fields)
        assert "sk-proj" not in json.dumps(problem)  # a pasted key is never echoed
    assert harness.enqueuer.calls == []


def test_judges_are_named_profiles_never_urls_or_secret_names(harness: Harness, monkeypatch: Any) -> None:
    """More in tests/api/test_security.py."""
    monkeypatch.setenv("JUDGE_KEY", "the-operators-key")  # the profile's key is set on the server
    for judge in ({"provider": "openai", "model": "m", "api_key_secret": "JUDGE_KEY"},
                  {"provider": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1"}):
        problem = assert_problem(submit(harness, realign_body(judge=judge)), 422)
        assert "profile" in field_errors(problem)["judge"]
    harness.settings.judge_profiles = {"default": JudgeProfile(base_url="http://judge.internal/v1",
                                                               api_key_env="JUDGE_KEY", default_model="m")}
    response = submit(harness, realign_body(judge={"provider": "openai"}))
    assert response.status_code == 202, response.text
    assert response.json()["request"]["judge"] == {"provider": "openai", "profile": "default", "model": None,
                                                   "rules_path": None}


def test_dataset_paths_must_stay_inside_the_root(harness: Harness, tmp_path: Any) -> None:
    root = harness.settings.datasets_root
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "pairs.jsonl").write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    outside = tmp_path / "secret.jsonl"
    outside.write_text("x\n")
    (root / "link.jsonl").symlink_to(outside)
    for path in ("../secret.jsonl", "sub/../../secret.jsonl", str(outside), "/etc/passwd", "link.jsonl",
                 "missing.jsonl"):
        problem = assert_problem(submit(harness, realign_body(dataset={"type": "path", "path": path})), 422)
        assert "dataset.path" in field_errors(problem), path
    ok = submit(harness, realign_body(dataset={"type": "path", "path": "sub/pairs.jsonl"}))
    assert ok.status_code == 202


def test_file_dataset_must_belong_to_the_tenant(harness: Harness) -> None:
    upload = harness.client.post("/v1/files", headers=harness.new_headers("other"), files={
        "file": ("p.jsonl", b'{"prompt": "p", "chosen": "a", "rejected": "b"}\n')})
    assert upload.status_code == 201
    file_id = upload.json()["id"]
    problem = assert_problem(submit(harness, realign_body(dataset={"type": "file", "file_id": file_id})), 422)
    assert "dataset.file_id" in field_errors(problem)


def test_hf_dataset_needs_a_revision(harness: Harness) -> None:
    unpinned = {"type": "hf", "repo": "org/data", "split": "train"}
    assert "dataset.hf.revision" in field_errors(assert_problem(submit(harness, realign_body(dataset=unpinned)), 422))
    pinned = {**unpinned, "revision": "a" * 40, "preset": "pku_saferlhf"}
    assert submit(harness, realign_body(dataset=pinned)).status_code == 202


def test_another_tenants_job_is_not_found(harness: Harness, body: dict[str, Any]) -> None:
    job_id = submit(harness, body).json()["id"]
    other = harness.new_headers("other")
    for method, path in (("get", f"/v1/jobs/{job_id}"), ("post", f"/v1/jobs/{job_id}/cancel"),
                         ("get", f"/v1/jobs/{job_id}/events"), ("get", f"/v1/jobs/{job_id}/triage")):
        assert_problem(harness.client.request(method, path, headers=other), 404)
    assert harness.client.get("/v1/jobs", headers=other).json()["data"] == []
    assert harness.client.get(f"/v1/jobs/{job_id}", headers=harness.headers).status_code == 200


def test_pagination_is_stable_and_complete(harness: Harness) -> None:
    created = [submit(harness, realign_body(metadata={"i": i})).json()["id"] for i in range(7)]
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        params: dict[str, Any] = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = harness.client.get("/v1/jobs", params=params, headers=harness.headers).json()
        seen += [job["id"] for job in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(created, reverse=True)  # newest first, no duplicates, none missing
    assert_problem(harness.client.get("/v1/jobs", params={"cursor": "garbage!"}, headers=harness.headers), 400)


def test_state_filter(harness: Harness) -> None:
    ids = [submit(harness, realign_body(metadata={"i": i})).json()["id"] for i in range(3)]
    assert harness.client.post(f"/v1/jobs/{ids[0]}/cancel", headers=harness.headers).status_code == 202
    with session_scope(harness.sessions) as session:
        transition_job(session, job_id=ids[1], to_state=JobState.VALIDATING)
    def listed(*states: str) -> set[str]:
        response = harness.client.get("/v1/jobs", params={"state": list(states)}, headers=harness.headers)
        return {job["id"] for job in response.json()["data"]}
    assert listed("cancelled") == {ids[0]}
    assert listed("validating", "queued") == {ids[1], ids[2]}
    assert_problem(harness.client.get("/v1/jobs", params={"state": "nope"}, headers=harness.headers), 422)


def test_cancel_queued_running_and_finished_jobs(harness: Harness) -> None:
    queued, running, done = (submit(harness, realign_body(metadata={"i": i})).json()["id"] for i in range(3))
    response = harness.client.post(f"/v1/jobs/{queued}/cancel", headers=harness.headers)
    assert response.status_code == 202 and response.json()["state"] == "cancelled"
    with session_scope(harness.sessions) as session:
        start_stage(session, job_id=running, stage=Stage.VALIDATE)
        start_stage(session, job_id=done, stage=Stage.VALIDATE)
        transition_job(session, job_id=done, to_state=JobState.FAILED, error={"message": "boom"})
    response = harness.client.post(f"/v1/jobs/{running}/cancel", headers=harness.headers)
    assert response.json()["state"] == "cancelling" and response.json()["cancel_requested"] is True
    again = harness.client.post(f"/v1/jobs/{running}/cancel", headers=harness.headers)
    assert again.json()["state"] == "cancelling"
    assert "failed" in assert_problem(harness.client.post(f"/v1/jobs/{done}/cancel", headers=harness.headers),
                                      409)["detail"]


def test_job_shows_progress_rate_eta_counts_and_results(harness: Harness, body: dict[str, Any]) -> None:
    job_id = submit(harness, body).json()["id"]
    with session_scope(harness.sessions) as session:
        start_stage(session, job_id=job_id, stage=Stage.VALIDATE)
        complete_stage(session, job_id=job_id, stage=Stage.VALIDATE)
        progress = start_stage(session, job_id=job_id, stage=Stage.TRIAGE, total=100)
        progress.started_at -= timedelta(seconds=10)
        record_progress(session, job_id=job_id, stage=Stage.TRIAGE, done=25)
        add_triage_items(session, job_id=job_id, items=[
            {"pair_id": "a", "position": 0, "category": "INVERT", "verdicts": {}},
            {"pair_id": "b", "position": 1, "category": "RETAIN", "verdicts": {}}])
        set_job_results(session, job_id=job_id, metrics={"triage.cost_usd": 0.5},
                        artifacts={"triaged": "artifacts/x/triaged.jsonl"})
    job = harness.client.get(f"/v1/jobs/{job_id}", headers=harness.headers).json()
    assert job["state"] == "triaging" and job["stage"] == "triage"
    triage = next(p for p in job["progress"] if p["stage"] == "triage")
    assert triage["done"] == 25 and triage["total"] == 100
    assert 2.0 < triage["rate_per_s"] < 2.6 and 28 < triage["eta_s"] < 38
    assert [p["stage"] for p in job["progress"]] == ["validate", "triage"]
    assert job["category_counts"] == {"INVERT": 1, "RETAIN": 1}
    assert job["metrics"] == {"triage.cost_usd": 0.5} and job["artifacts"]["triaged"].endswith(".jsonl")
    with harness.sessions() as session:
        assert session.get(StageProgress, (job_id, "validate")).completed_at is not None


def test_events_list_pages_in_order(harness: Harness, body: dict[str, Any]) -> None:
    job_id = submit(harness, body).json()["id"]
    with session_scope(harness.sessions) as session:
        for stage in (Stage.VALIDATE, Stage.TRIAGE):
            start_stage(session, job_id=job_id, stage=stage, total=4)
            complete_stage(session, job_id=job_id, stage=stage)
    events, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = harness.client.get(f"/v1/jobs/{job_id}/events", params=params, headers=harness.headers).json()
        events += page["data"]
        cursor = page["next_cursor"]
        if not cursor:
            break
    types = [e["type"] for e in events]
    assert types[0] == "state_changed" and types.count("stage_started") == 2 and types.count("stage_completed") == 2
    assert [e["id"] for e in events] == sorted({e["id"] for e in events})
    assert events[1]["data"] == {"from": "queued", "to": "validating"}


def test_triage_paging_and_category_filter(harness: Harness, body: dict[str, Any]) -> None:
    job_id = submit(harness, body).json()["id"]
    categories = ["INVERT", "PUNISH", "RETAIN"]
    items = [{"pair_id": f"p{i}", "position": i, "category": categories[i % 3], "verdicts": {"chosen": "ok"}}
             for i in range(10)]
    with session_scope(harness.sessions) as session:
        assert add_triage_items(session, job_id=job_id, items=items) == 10
        assert add_triage_items(session, job_id=job_id, items=items[:4]) == 0  # resumed stage: no dupes
    url = f"/v1/jobs/{job_id}/triage"
    first = harness.client.get(url, params={"limit": 4}, headers=harness.headers).json()
    second = harness.client.get(url, params={"limit": 4, "cursor": first["next_cursor"]}, headers=harness.headers)
    assert [i["position"] for i in first["data"] + second.json()["data"]] == list(range(8))
    assert first["category_counts"] == {"INVERT": 4, "PUNISH": 3, "RETAIN": 3}
    punish = harness.client.get(url, params={"category": "PUNISH"}, headers=harness.headers).json()
    assert [i["pair_id"] for i in punish["data"]] == ["p1", "p4", "p7"] and punish["next_cursor"] is None
    assert_problem(harness.client.get(url, params={"category": "MAYBE"}, headers=harness.headers), 422)


def test_a_failed_enqueue_keeps_the_job_queued_with_a_warning(harness: Harness, body: dict[str, Any]) -> None:
    harness.enqueuer.fail = True
    response = submit(harness, body)
    assert response.status_code == 202
    job_id = response.json()["id"]
    events = harness.client.get(f"/v1/jobs/{job_id}/events", headers=harness.headers).json()["data"]
    assert events[-1]["type"] == "warning" and "enqueue failed" in events[-1]["data"]["message"]
    with harness.sessions() as session:
        assert job_id in stale_queued_jobs(session, older_than_s=-1)


def test_an_oversized_json_body_is_413_before_parsing(harness: Harness) -> None:
    huge = b'{"policy": {"text": "' + b"x" * (harness.settings.max_json_bytes + 10) + b'"}}'
    response = harness.client.post("/v1/realign", content=huge,
                                   headers={**harness.headers, "Content-Type": "application/json"})
    assert assert_problem(response, 413)["max_bytes"] == harness.settings.max_json_bytes
