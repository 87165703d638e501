"""Issue 10: `POST /v1/jobs/{id}/retry` puts a failed job back in the stage it failed in, keeping what the earlier
stages did (they are not run again: triage verdicts are not recomputed); a job that did not fail is a 409, another
tenant's job a 404. The real stage runner on the API's database; validate and triage are the real (synthetic)
stages, the scoring stage is replaced by one that fails once. (tests/faults/test_api_and_storage.py retries a
training stage that failed on read-only storage.)"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select, update

from core.db.engine import session_scope
from core.db.models import Job, TriageItem
from core.db.states import JobState, Stage
from worker import runner
from worker.context import StageContext, StageFailed, StageResult

from .support import Harness, assert_problem, realign_body

pytestmark = pytest.mark.parametrize("settings", ["postgres"], indirect=True)


def job(h: Harness, job_id: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    response = h.client.get(f"/v1/jobs/{job_id}", headers=headers or h.headers)
    assert response.status_code == 200, response.text
    return response.json()


def retry(h: Harness, job_id: str, headers: dict[str, str] | None = None) -> Any:
    return h.client.post(f"/v1/jobs/{job_id}/retry", headers=headers or h.headers)


def verdicts(h: Harness, job_id: str) -> list[tuple[Any, ...]]:
    with session_scope(h.sessions) as session:
        rows = session.execute(select(TriageItem).where(TriageItem.job_id == job_id)
                               .order_by(TriageItem.pair_id)).scalars().all()
        return [(r.pair_id, r.category, r.created_at) for r in rows]


def test_a_failed_job_retries_from_the_stage_it_failed_in_keeping_earlier_work(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    worker = runner.WorkerServices(harness.settings, harness.sessions, harness.enqueuer)
    submitted = harness.client.post("/v1/realign", json=realign_body(), headers=harness.headers)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    assert runner.run_stage(worker, job_id, Stage.VALIDATE, "w") == runner.DONE
    assert runner.run_stage(worker, job_id, Stage.TRIAGE, "w") == runner.DONE
    triaged = verdicts(harness, job_id)
    assert len(triaged) == 16

    def scorer_fails(ctx: StageContext) -> StageResult:
        raise StageFailed("the scoring GPU ran out of memory", kind="out_of_memory")

    monkeypatch.setitem(runner.STAGE_FUNCTIONS, Stage.SCORE, scorer_fails)
    assert runner.run_stage(worker, job_id, Stage.SCORE, "w") == runner.FAILED
    failed = job(harness, job_id)
    assert failed["state"] == "failed" and failed["error"]["stage"] == "score", failed

    ran: list[Stage] = []

    def must_not_run(ctx: StageContext) -> StageResult:
        raise AssertionError("a completed stage ran again")

    def scorer_works(ctx: StageContext) -> StageResult:
        ran.append(Stage.SCORE)
        return StageResult(metrics={"scored": 16})

    for done_stage in (Stage.VALIDATE, Stage.TRIAGE):
        monkeypatch.setitem(runner.STAGE_FUNCTIONS, done_stage, must_not_run)
    monkeypatch.setitem(runner.STAGE_FUNCTIONS, Stage.SCORE, scorer_works)
    harness.enqueuer.calls.clear()

    response = retry(harness, job_id)
    assert response.status_code == 202, f"{response.status_code} {response.text[:300]}"
    retried = response.json()
    assert retried["state"] == "scoring" and retried["stage"] == "score" and retried["error"] is None, retried
    assert retried["metrics"]["pairs"] == 16 and retried["category_counts"] == failed["category_counts"]
    assert harness.enqueuer.calls == [(job_id, "score")]  # the failed stage, not the first one
    for stale in (Stage.VALIDATE, Stage.TRIAGE):  # stale messages for finished stages are skipped
        assert runner.run_stage(worker, job_id, stale, "w") == runner.SKIPPED
    assert runner.run_stage(worker, job_id, Stage.SCORE, "w") == runner.DONE
    assert ran == [Stage.SCORE]
    after = job(harness, job_id)
    assert after["state"] == JobState.TRAINING.value and after["metrics"]["scored"] == 16
    assert verdicts(harness, job_id) == triaged  # the same verdict rows: nothing recomputed or rewritten
    assert harness.enqueuer.calls[-1] == (job_id, "train")


def test_only_a_failed_job_can_be_retried_and_only_by_its_tenant(harness: Harness) -> None:
    submitted = harness.client.post("/v1/realign", json=realign_body(), headers=harness.headers)
    job_id = submitted.json()["id"]
    for state in (JobState.QUEUED, JobState.TRIAGING, JobState.SUCCEEDED, JobState.CANCELLED):
        with session_scope(harness.sessions) as session:
            session.execute(update(Job).where(Job.id == job_id).values(state=state.value))
        problem = assert_problem(retry(harness, job_id), 409)
        assert f"is {state.value}; only a failed job can be retried" in problem["detail"], problem
        assert job(harness, job_id)["state"] == state.value  # untouched
    with session_scope(harness.sessions) as session:
        session.execute(update(Job).where(Job.id == job_id).values(state="failed", stage="triage",
                                                                    error={"stage": "triage", "kind": "x"}))
    other = harness.new_headers("other")
    problem = assert_problem(retry(harness, job_id, headers=other), 404)
    assert job_id in problem["detail"], problem  # the job is unknown to that tenant (not a missing route)
    assert job(harness, job_id)["state"] == "failed"
    assert retry(harness, job_id).status_code == 202  # its own tenant can
