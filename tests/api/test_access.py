"""Data access used by the worker: guarded transitions, stage progress, leases (on SQLite and Postgres)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from core.db.access.events import list_events
from core.db.access.jobs import _compare_and_set, create_job, load_job, request_cancel, transition_job
from core.db.access.leases import acquire_lease, expired_leases, heartbeat, release_lease
from core.db.access.stages import complete_stage, record_progress, start_stage
from core.db.access.tenants import get_or_create_tenant
from core.db.engine import make_engine, make_session_factory, session_scope, upgrade_head
from core.db.models import Job, utcnow
from core.db.states import InvalidTransition, JobState, Stage
from core.settings import Settings


@pytest.fixture
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(settings.sqlalchemy_url)
    upgrade_head(engine)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def job_id(sessions: sessionmaker[Session]) -> str:
    with session_scope(sessions) as session:
        tenant = get_or_create_tenant(session, name=f"t-{utcnow().timestamp()}")
        job, created = create_job(session, tenant_id=tenant.id, request={}, body_hash="h")
        assert created
        return job.id


def state(sessions: sessionmaker[Session], job_id: str) -> str:
    with sessions() as session:
        return load_job(session, job_id=job_id).state


def test_transitions_are_guarded_and_repeatable(sessions: sessionmaker[Session], job_id: str) -> None:
    with session_scope(sessions) as session:
        with pytest.raises(InvalidTransition):
            transition_job(session, job_id=job_id, to_state=JobState.TRAINING)
        assert transition_job(session, job_id=job_id, to_state=JobState.VALIDATING) is True
        assert transition_job(session, job_id=job_id, to_state=JobState.VALIDATING) is False  # resumed
    assert state(sessions, job_id) == "validating"
    with session_scope(sessions) as session:
        transition_job(session, job_id=job_id, to_state=JobState.FAILED, error={"message": "judge 401"})
    with sessions() as session:
        job = load_job(session, job_id=job_id)
        assert job.finished_at is not None and job.error == {"message": "judge 401"} and job.stage == "validate"
        events = list_events(session, tenant_id=job.tenant_id, job_id=job_id, limit=10)
        assert [e.data.get("to") for e in events] == ["queued", "validating", "failed"]


def test_compare_and_set_refuses_a_stale_state(sessions: sessionmaker[Session], job_id: str) -> None:
    with session_scope(sessions) as session:
        transition_job(session, job_id=job_id, to_state=JobState.VALIDATING)
    with session_scope(sessions) as session:  # a writer that still believes the job is queued
        moved = _compare_and_set(session, job_id=job_id, current=JobState.QUEUED,
                                 values={"state": JobState.CANCELLED.value})
        assert moved is False
    assert state(sessions, job_id) == "validating"


def test_resumed_stage_keeps_its_progress(sessions: sessionmaker[Session], job_id: str) -> None:
    with session_scope(sessions) as session:
        start_stage(session, job_id=job_id, stage=Stage.VALIDATE)
        start_stage(session, job_id=job_id, stage=Stage.TRIAGE, total=10)
        record_progress(session, job_id=job_id, stage=Stage.TRIAGE, done=4, event=False)
    with session_scope(sessions) as session:  # the worker died; the re-queued stage starts again
        progress = start_stage(session, job_id=job_id, stage=Stage.TRIAGE, total=10)
        assert progress.done == 4
        done = complete_stage(session, job_id=job_id, stage=Stage.TRIAGE)
        assert done.done == 10 and done.completed_at is not None


def test_leases_expire_and_are_reported_to_the_reaper(sessions: sessionmaker[Session], job_id: str) -> None:
    with session_scope(sessions) as session:
        start_stage(session, job_id=job_id, stage=Stage.VALIDATE)
        assert acquire_lease(session, job_id=job_id, owner="worker-a", ttl_s=60)
        assert not acquire_lease(session, job_id=job_id, owner="worker-b", ttl_s=60)
        assert heartbeat(session, job_id=job_id, owner="worker-a", ttl_s=60).held
        assert expired_leases(session) == []
    with session_scope(sessions) as session:
        later = utcnow() + timedelta(seconds=120)
        assert expired_leases(session, now=later) == [(job_id, "validate")]
        session.get(Job, job_id).lease_expires_at = utcnow() - timedelta(seconds=1)
    with session_scope(sessions) as session:
        assert acquire_lease(session, job_id=job_id, owner="worker-b", ttl_s=60)
        assert not heartbeat(session, job_id=job_id, owner="worker-a", ttl_s=60).held
        tenant_id = load_job(session, job_id=job_id).tenant_id
        request_cancel(session, tenant_id=tenant_id, job_id=job_id)
        beat = heartbeat(session, job_id=job_id, owner="worker-b", ttl_s=60)
        assert beat.held and beat.cancel_requested
        assert release_lease(session, job_id=job_id, owner="worker-b")
    with sessions() as session:
        job = load_job(session, job_id=job_id)
        assert job.lease_owner is None and job.attempts == 2 and job.state == "cancelling"


def test_concurrent_requests_with_one_idempotency_key_make_one_job(sessions: sessionmaker[Session]) -> None:
    import threading

    with session_scope(sessions) as session:
        tenant_id = get_or_create_tenant(session, name=f"race-{utcnow().timestamp()}").id
    barrier, results = threading.Barrier(4), []

    def submit() -> None:
        barrier.wait()
        with session_scope(sessions) as session:
            job, created = create_job(session, tenant_id=tenant_id, request={}, body_hash="same",
                                      idempotency_key="once")
            results.append((job.id, created))

    threads = [threading.Thread(target=submit) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(results) == 4 and len({job_id for job_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1
