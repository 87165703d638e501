"""Issue 10: progress went backwards after a resume. A resumed stage restarts from its last checkpoint or verdict
cache and re-reports smaller counts at first; the recorded `done` (and every progress event a client sees) never
drops below what was already reported."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from core.db.access.events import list_events
from core.db.access.jobs import load_job
from core.db.access.stages import record_progress, start_stage
from core.db.engine import session_scope
from core.db.models import Job, StageProgress, utcnow
from core.db.states import EventType, JobState, Stage
from worker import runner
from worker.context import StageContext, StageResult

from .conftest import new_job, synthetic_body


def recorded_done(services: runner.WorkerServices, job_id: str, stage: Stage) -> int:
    with session_scope(services.sessions) as session:
        progress = session.get(StageProgress, (job_id, stage.value))
        assert progress is not None
        return int(progress.done)


def progress_events(services: runner.WorkerServices, job_id: str) -> list[int]:
    with session_scope(services.sessions) as session:
        tenant_id = load_job(session, job_id=job_id).tenant_id
        return [e.data["done"] for e in list_events(session, tenant_id=tenant_id, job_id=job_id, limit=1000)
                if e.type == EventType.PROGRESS.value]


def test_recorded_progress_never_goes_down(services: runner.WorkerServices) -> None:
    job_id = new_job(services, synthetic_body())
    with session_scope(services.sessions) as session:
        start_stage(session, job_id=job_id, stage=Stage.VALIDATE, total=10)
        record_progress(session, job_id=job_id, stage=Stage.VALIDATE, done=7, total=10)
        later = record_progress(session, job_id=job_id, stage=Stage.VALIDATE, done=3, total=10)
        assert (later.done, later.total) == (7, 10)
        shrunk = record_progress(session, job_id=job_id, stage=Stage.VALIDATE, done=8, total=5)
        assert (shrunk.done, shrunk.total) == (8, 10)  # a total below what is done is not taken either
    assert progress_events(services, job_id) == [7, 7, 8]


def test_progress_is_monotonic_across_a_crash_and_resume(services: runner.WorkerServices,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The first attempt reports 1..6 of 10, then its process dies (SystemExit: the lease is left to expire); the
    second attempt resumes from its last checkpoint (3) and reports 3..10."""
    job_id = new_job(services, synthetic_body())
    seen: list[int] = []

    def dies_at_six(ctx: StageContext) -> StageResult:
        for done in range(1, 7):
            ctx.tick(done, 10)
        raise SystemExit("worker process killed")

    def resumes_from_three(ctx: StageContext) -> StageResult:
        for done in range(3, 11):
            ctx.tick(done, 10)
            seen.append(recorded_done(services, job_id, Stage.VALIDATE))
        return StageResult(metrics={"pairs": 10})

    monkeypatch.setitem(runner.STAGE_FUNCTIONS, Stage.VALIDATE, dies_at_six)
    with pytest.raises(SystemExit):
        runner.run_stage(services, job_id, Stage.VALIDATE, "w1")
    assert recorded_done(services, job_id, Stage.VALIDATE) == 6
    with session_scope(services.sessions) as session:  # w1's lease expired
        session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))

    monkeypatch.setitem(runner.STAGE_FUNCTIONS, Stage.VALIDATE, resumes_from_three)
    assert runner.run_stage(services, job_id, Stage.VALIDATE, "w2") == runner.DONE
    assert seen == [6, 6, 6, 6, 7, 8, 9, 10], f"recorded done while the resumed attempt re-reported 3..10: {seen}"
    events = progress_events(services, job_id)
    assert events == sorted(events), f"progress events went backwards: {events}"
    with session_scope(services.sessions) as session:
        job = load_job(session, job_id=job_id)
        assert job.state == JobState.TRIAGING.value
        stage_started = [e.data for e in list_events(session, tenant_id=job.tenant_id, job_id=job_id, limit=1000)
                         if e.type == EventType.STAGE_STARTED.value]
    assert [s["done"] for s in stage_started] == [0, 6]  # the resumed start shows the progress kept
