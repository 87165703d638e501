"""Triage review (issue 13): a job created with `review: true` parks in `awaiting_review` after triage (the real
runner and the real synthetic validate / triage stages, on Postgres and SQLite), a reviewer overrides categories
(tenant-scoped; 409 outside awaiting_review; 422 for a bad category), and `POST .../continue` enqueues scoring,
whose input rows carry the reviewer's categories (INVERT swapped, the others as in the data)."""

from __future__ import annotations

from typing import Any

import pytest

from core.db.states import JobState, Stage
from core.registry import job_folder
from core.review import REVIEW_FILE, apply_review, read_review
from worker import runner
from worker.context import StageContext, StageResult
from worker.inputs import training_rows

from .support import Harness, assert_problem, realign_body


def triaged_job(h: Harness, **overrides: Any) -> tuple[str, runner.WorkerServices]:
    worker = runner.WorkerServices(h.settings, h.sessions, h.enqueuer)
    submitted = h.client.post("/v1/realign", json=realign_body(**overrides), headers=h.headers)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    assert runner.run_stage(worker, job_id, Stage.VALIDATE, "w") == runner.DONE
    assert runner.run_stage(worker, job_id, Stage.TRIAGE, "w") == runner.DONE
    return job_id, worker


def items(h: Harness, job_id: str) -> list[dict[str, Any]]:
    response = h.client.get(f"/v1/jobs/{job_id}/triage", params={"limit": 100}, headers=h.headers)
    assert response.status_code == 200, response.text
    return response.json()["data"]


def patch(h: Harness, job_id: str, pair_id: str, body: Any, headers: dict[str, str] | None = None) -> Any:
    return h.client.patch(f"/v1/jobs/{job_id}/triage/{pair_id}", json=body, headers=headers or h.headers)


def test_a_reviewed_job_parks_after_triage_and_trains_on_the_reviewers_categories(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    job_id, worker = triaged_job(harness, review=True)
    job = harness.client.get(f"/v1/jobs/{job_id}", headers=harness.headers).json()
    assert job["state"] == "awaiting_review" and job["stage"] == "triage", job
    assert job["request"]["review"] is True
    assert harness.enqueuer.calls == [(job_id, "validate"), (job_id, "triage")]  # nothing after triage
    rows = items(harness, job_id)
    retain = next(r for r in rows if r["category"] == "RETAIN")
    invert = next(r for r in rows if r["category"] == "INVERT")
    before = job["category_counts"]

    changed = patch(harness, job_id, retain["pair_id"], {"category": "INVERT"})
    assert changed.status_code == 200, changed.text
    assert changed.json()["category"] == "INVERT" and changed.json()["original_category"] == "RETAIN"
    assert patch(harness, job_id, invert["pair_id"], {"category": "PUNISH"}).status_code == 200
    # back to the judge's category: the override is cleared
    assert patch(harness, job_id, invert["pair_id"], {"category": "INVERT"}).json()["original_category"] is None
    after = harness.client.get(f"/v1/jobs/{job_id}", headers=harness.headers).json()["category_counts"]
    assert after["INVERT"] == before["INVERT"] + 1 and after["RETAIN"] == before["RETAIN"] - 1
    review = harness.client.get(f"/v1/jobs/{job_id}/review", headers=harness.headers).json()
    assert review["awaiting_review"] is True
    assert [(o["pair_id"], o["category"], o["original_category"]) for o in review["overrides"]] == [
        (retain["pair_id"], "INVERT", "RETAIN")]

    continued = harness.client.post(f"/v1/jobs/{job_id}/continue", headers=harness.headers)
    assert continued.status_code == 202, continued.text
    assert continued.json()["state"] == "scoring"
    assert harness.enqueuer.calls[-1] == (job_id, "score")
    assert read_review(job_folder(harness.settings, job_id)) == {retain["pair_id"]: "INVERT"}

    seen: list[dict[str, Any]] = []

    def scorer(ctx: StageContext) -> StageResult:  # what the real scoring stage would read
        seen.extend(training_rows(ctx))
        return StageResult(metrics={"scored": len(seen)})

    monkeypatch.setitem(runner.STAGE_FUNCTIONS, Stage.SCORE, scorer)
    assert runner.run_stage(worker, job_id, Stage.SCORE, "w") == runner.DONE
    row = next(r for r in seen if r["id"] == retain["pair_id"])
    assert row["category"] == "INVERT" and row["swapped"] is True
    assert row["chosen"] == row["original_rejected"] and row["rejected"] == row["original_chosen"]
    assert row["review"] == {"original_category": "RETAIN"}
    untouched = next(r for r in seen if r["id"] == invert["pair_id"])
    assert untouched["category"] == "INVERT" and "review" not in untouched

    # the job has moved on: categories are frozen and continue is refused
    assert_problem(patch(harness, job_id, retain["pair_id"], {"category": "RETAIN"}), 409)
    assert_problem(harness.client.post(f"/v1/jobs/{job_id}/continue", headers=harness.headers), 409)


def test_a_job_without_review_never_parks_and_refuses_review_changes(harness: Harness) -> None:
    job_id, _ = triaged_job(harness)
    job = harness.client.get(f"/v1/jobs/{job_id}", headers=harness.headers).json()
    assert job["state"] == "scoring"
    pair = items(harness, job_id)[0]["pair_id"]
    problem = assert_problem(patch(harness, job_id, pair, {"category": "RETAIN"}), 409)
    assert "review" in problem["detail"]
    assert_problem(harness.client.post(f"/v1/jobs/{job_id}/continue", headers=harness.headers), 409)


def test_review_inputs_are_checked_and_tenant_scoped(harness: Harness) -> None:
    job_id, _ = triaged_job(harness, review=True)
    pair = items(harness, job_id)[0]["pair_id"]
    for bad in ({"category": "ERROR"}, {"category": "invert"}, {"category": 3}, {}, {"category": "RETAIN", "x": 1},
                ["RETAIN"]):
        assert_problem(patch(harness, job_id, pair, bad), 422)
    assert_problem(patch(harness, job_id, "no-such-pair", {"category": "RETAIN"}), 404)
    assert_problem(patch(harness, "job_000000000000ffffffffffffffff", pair, {"category": "RETAIN"}), 404)
    other = harness.new_headers("other")
    assert_problem(patch(harness, job_id, pair, {"category": "RETAIN"}, headers=other), 404)
    assert_problem(harness.client.post(f"/v1/jobs/{job_id}/continue", headers=other), 404)
    assert_problem(harness.client.get(f"/v1/jobs/{job_id}/review", headers=other), 404)
    assert harness.client.patch(f"/v1/jobs/{job_id}/triage/{pair}", json={"category": "RETAIN"}).status_code == 401
    assert harness.client.get(f"/v1/jobs/{job_id}", headers=harness.headers).json()["state"] == "awaiting_review"


def test_a_job_awaiting_review_is_cancelled_at_once_and_never_requeued(harness: Harness) -> None:
    job_id, worker = triaged_job(harness, review=True)
    from datetime import timedelta

    from sqlalchemy import update

    from core.db.engine import session_scope
    from core.db.models import Job, utcnow

    with session_scope(harness.sessions) as session:  # parked long ago, no lease, no enqueue confirmed
        session.execute(update(Job).where(Job.id == job_id).values(updated_at=utcnow() - timedelta(hours=2),
                                                                  enqueued_at=None))
    before = list(harness.enqueuer.calls)
    runner.reap_once(worker)  # (on a shared database it may requeue other tests' jobs: only this one is checked)
    assert [c for c in harness.enqueuer.calls[len(before):] if c[0] == job_id] == []
    assert harness.client.get(f"/v1/jobs/{job_id}", headers=harness.headers).json()["state"] == \
        JobState.AWAITING_REVIEW.value
    cancelled = harness.client.post(f"/v1/jobs/{job_id}/cancel", headers=harness.headers)
    assert cancelled.status_code == 202 and cancelled.json()["state"] == JobState.CANCELLED.value, cancelled.text


def test_apply_review_reorients_each_category() -> None:
    row = {"id": "p", "prompt": "q", "category": "INVERT", "swapped": True, "chosen": "B", "rejected": "A",
           "original_chosen": "A", "original_rejected": "B", "chosen_verdict": {"v": "b"},
           "rejected_verdict": {"v": "a"}}
    punish = apply_review([row], {"p": "PUNISH"})[0]
    assert (punish["chosen"], punish["rejected"], punish["swapped"]) == ("A", "B", False)
    assert punish["chosen_verdict"] == {"v": "a"} and punish["rejected_verdict"] == {"v": "b"}
    back = apply_review([punish], {"p": "INVERT"})[0]
    assert (back["chosen"], back["rejected"], back["swapped"]) == ("B", "A", True)
    assert back["chosen_verdict"] == {"v": "b"}
    assert apply_review([row], {"other": "RETAIN"}) == [row] and apply_review([row], {"p": "INVERT"}) == [row]
    assert REVIEW_FILE.startswith("triage/")


def test_continue_refuses_a_stored_request_that_no_longer_validates(harness: Harness) -> None:
    from sqlalchemy import update

    from core.db.engine import session_scope
    from core.db.models import Job

    job_id, _ = triaged_job(harness, review=True)
    stored = harness.client.get(f"/v1/jobs/{job_id}", headers=harness.headers).json()["request"]
    stale = {**stored, "judge": {**stored["judge"], "base_url": "http://old.example"}}  # refused since issue 10
    with session_scope(harness.sessions) as session:
        session.execute(update(Job).where(Job.id == job_id).values(request=stale))
    problem = assert_problem(harness.client.post(f"/v1/jobs/{job_id}/continue", headers=harness.headers), 409)
    assert "submit it again" in problem["detail"]
    assert harness.client.get(f"/v1/jobs/{job_id}", headers=harness.headers).json()["state"] == "awaiting_review"
