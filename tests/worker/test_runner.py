"""The stage runner on a real database: leases, skips, cancel within seconds, failures, hand-over, reaper."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update

from core.db.access.events import list_events
from core.db.access.jobs import load_job, request_cancel
from core.db.access.leases import acquire_lease
from core.db.engine import session_scope
from core.db.models import Job, utcnow
from core.db.states import EventType, JobState, Stage
from worker import runner
from worker.context import StageContext, StageResult

from .conftest import new_job, synthetic_body


def job_state(services: runner.WorkerServices, job_id: str) -> Job:
    with session_scope(services.sessions) as session:
        return load_job(session, job_id=job_id)


def events(services: runner.WorkerServices, job_id: str) -> list[Any]:
    with session_scope(services.sessions) as session:
        tenant_id = load_job(session, job_id=job_id).tenant_id
        return list_events(session, tenant_id=tenant_id, job_id=job_id, limit=1000)


def test_validate_then_hand_over_to_triage(services: runner.WorkerServices) -> None:
    job_id = new_job(services, synthetic_body())
    assert runner.run_stage(services, job_id, Stage.VALIDATE, "w1") == runner.DONE
    job = job_state(services, job_id)
    assert job.state == JobState.TRIAGING.value and job.lease_owner is None
    assert services.enqueue.calls == [(job_id, "triage")]  # type: ignore[attr-defined]
    assert (services.settings.data_dir / "jobs" / job_id / "data" / "pairs.jsonl").is_file()
    assert job.metrics["pairs"] == 16


def test_duplicate_message_for_a_finished_stage_is_skipped(services: runner.WorkerServices) -> None:
    job_id = new_job(services, synthetic_body())
    assert runner.run_stage(services, job_id, Stage.VALIDATE, "w1") == runner.DONE
    assert runner.run_stage(services, job_id, Stage.VALIDATE, "w2") == runner.SKIPPED
    assert job_state(services, job_id).lease_owner is None


def test_a_live_lease_makes_another_owner_back_off(services: runner.WorkerServices) -> None:
    job_id = new_job(services, synthetic_body())
    with session_scope(services.sessions) as session:
        assert acquire_lease(session, job_id=job_id, owner="alive", ttl_s=60)
    assert runner.run_stage(services, job_id, Stage.VALIDATE, "w2") == runner.BUSY
    assert job_state(services, job_id).state == JobState.QUEUED.value


def test_bad_dataset_fails_in_validating_with_a_clear_error(services: runner.WorkerServices) -> None:
    job_id = new_job(services, synthetic_body(dataset={"type": "path", "path": "missing.jsonl"}))
    assert runner.run_stage(services, job_id, Stage.VALIDATE, "w1") == runner.FAILED
    job = job_state(services, job_id)
    assert job.state == JobState.FAILED.value
    assert job.error["stage"] == "validate" and job.error["kind"] == "dataset_invalid"
    assert "missing.jsonl" in job.error["message"]
    assert services.enqueue.calls == []  # type: ignore[attr-defined]


def test_unpinned_hub_model_fails_validation(services: runner.WorkerServices) -> None:
    job_id = new_job(services, synthetic_body(base_model={"name_or_path": "org/some-model"}))
    assert runner.run_stage(services, job_id, Stage.VALIDATE, "w1") == runner.FAILED
    error = job_state(services, job_id).error
    assert error["kind"] == "model_unreachable" and "pinned revision" in error["message"]


def test_cancel_stops_a_running_stage_within_seconds(services: runner.WorkerServices,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    job_id = new_job(services, synthetic_body())
    ticks = []

    def endless(ctx: StageContext) -> StageResult:
        for i in range(1_000_000):
            ctx.tick(i, None)
            ticks.append(i)
            time.sleep(0.01)
        return StageResult()

    monkeypatch.setitem(runner.STAGE_FUNCTIONS, Stage.VALIDATE, endless)
    outcome: list[str] = []
    thread = threading.Thread(target=lambda: outcome.append(runner.run_stage(services, job_id, Stage.VALIDATE, "w")))
    thread.start()
    while len(ticks) < 5:
        time.sleep(0.01)
    with session_scope(services.sessions) as session:
        tenant_id = load_job(session, job_id=job_id).tenant_id
        request_cancel(session, tenant_id=tenant_id, job_id=job_id)
    asked = time.monotonic()
    thread.join(10)
    assert outcome == [runner.CANCELLED]
    assert time.monotonic() - asked < 2.0
    job = job_state(services, job_id)
    assert job.state == JobState.CANCELLED.value and job.lease_owner is None


def test_a_stolen_lease_stops_the_stage_without_touching_the_job(services: runner.WorkerServices,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    job_id = new_job(services, synthetic_body())
    started = threading.Event()

    def slow(ctx: StageContext) -> StageResult:
        started.set()
        for i in range(1000):
            ctx.tick(i, None)
            time.sleep(0.01)
        return StageResult()

    monkeypatch.setitem(runner.STAGE_FUNCTIONS, Stage.VALIDATE, slow)
    outcome: list[str] = []
    thread = threading.Thread(target=lambda: outcome.append(runner.run_stage(services, job_id, Stage.VALIDATE, "w")))
    thread.start()
    started.wait(5)
    with session_scope(services.sessions) as session:  # the reaper gave the stage to someone else
        session.execute(update(Job).where(Job.id == job_id).values(lease_owner="other"))
    thread.join(10)
    assert outcome == [runner.LEASE_LOST]
    job = job_state(services, job_id)
    assert job.state == JobState.VALIDATING.value and job.lease_owner == "other"


def test_a_crashing_stage_fails_the_job_and_records_the_error(services: runner.WorkerServices,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    job_id = new_job(services, synthetic_body())

    def broken(ctx: StageContext) -> StageResult:
        raise RuntimeError("disk on fire")

    monkeypatch.setitem(runner.STAGE_FUNCTIONS, Stage.VALIDATE, broken)
    assert runner.run_stage(services, job_id, Stage.VALIDATE, "w") == runner.FAILED
    job = job_state(services, job_id)
    assert job.state == "failed" and job.error == {"stage": "validate", "kind": "internal_error",
                                                  "message": "RuntimeError: disk on fire"}
    assert any(e.type == EventType.ERROR.value for e in events(services, job_id))


def _age(services: runner.WorkerServices, job_id: str, **values: Any) -> None:
    with session_scope(services.sessions) as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))


def test_reaper_requeues_an_expired_lease_once(services: runner.WorkerServices) -> None:
    job_id = new_job(services, synthetic_body())
    past = utcnow() - timedelta(seconds=30)
    _age(services, job_id, state="triaging", stage="triage", lease_owner="dead", lease_expires_at=past)
    assert runner.reap_once(services) == 1
    assert runner.reap_once(services) == 0  # claimed: not re-queued again until requeue_after_s passes
    assert services.enqueue.calls == [(job_id, "triage")]  # type: ignore[attr-defined]
    job = job_state(services, job_id)
    assert job.lease_owner is None
    assert any(e.type == "warning" and "lease expired" in e.data["message"] for e in events(services, job_id))


def test_reaper_requeues_forgotten_jobs_and_finishes_orphaned_cancels(services: runner.WorkerServices) -> None:
    queued, between, cancelling, fresh = (new_job(services, synthetic_body()) for _ in range(4))
    old = utcnow() - timedelta(seconds=600)
    _age(services, queued, updated_at=old)
    _age(services, between, state="scoring", stage="score", updated_at=old)
    _age(services, cancelling, state="cancelling", stage="train", cancel_requested=True, updated_at=old)
    assert runner.reap_once(services) == 3
    assert sorted(services.enqueue.calls) == sorted([(queued, "validate"), (between, "score")])  # type: ignore[attr-defined]
    assert job_state(services, cancelling).state == "cancelled"
    assert job_state(services, fresh).state == "queued"
