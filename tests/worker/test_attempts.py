"""A stage that ends the same way `stage_max_attempts` times fails the job with that error, instead of being
re-queued forever (issue 10: a pair id with a NUL byte kept a job in `triaging`, re-queued every ~30 s, attempts
growing, the tenant never told). The runner and the reaper on a real database, timings scaled down."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from core.db.access import stages as stage_access
from core.db.access.events import list_events
from core.db.access.jobs import load_job
from core.db.access.leases import acquire_lease
from core.db.access.stages import start_stage
from core.db.engine import session_scope
from core.db.models import Job
from core.db.states import JobState, Stage, is_terminal
from worker import runner
from worker.context import StageResult

from .conftest import new_job, synthetic_body

MAX_ATTEMPTS = 3
# what Postgres said when the NUL pair id reached the database at the end of a stage (issue 10)
NUL_ERROR = "PostgreSQL text fields cannot contain NUL (0x00) bytes"


def fast(services: runner.WorkerServices) -> runner.WorkerServices:
    """The same database and queue with leases and the lost-enqueue grace in tenths of a second."""
    settings = services.settings.model_copy(update=dict(lease_ttl_s=0.6, heartbeat_interval_s=0.1,
                                                        enqueue_grace_s=0.2, requeue_after_s=60.0,
                                                        stage_max_attempts=MAX_ATTEMPTS))
    return runner.WorkerServices(settings, services.sessions, services.enqueue)


def load(services: runner.WorkerServices, job_id: str) -> Job:
    with session_scope(services.sessions) as session:
        return load_job(session, job_id=job_id)


def started_attempts(services: runner.WorkerServices, job_id: str, stage: Stage) -> int:
    with session_scope(services.sessions) as session:
        tenant_id = load_job(session, job_id=job_id).tenant_id
        return sum(1 for e in list_events(session, tenant_id=tenant_id, job_id=job_id, limit=1000)
                   if e.type == "stage_started" and e.stage == stage.value)


def deliver_until_settled(services: runner.WorkerServices, job_id: str, deliver: Callable[[str], None],
                          rounds: int = 2 * MAX_ATTEMPTS) -> int:
    """What the queue and the reaper do with a job whose stage never finishes: deliver the message, and while the
    job is live, run the reaper until it re-sends it (an expired lease or an unconfirmed hand-over), then deliver
    again. Returns how many deliveries it took to settle (`rounds + 1` when it never did)."""
    for delivery in range(1, rounds + 1):
        deliver(f"worker-{delivery}")
        sent = len(services.enqueue.calls)  # type: ignore[attr-defined]
        deadline = time.monotonic() + 5.0
        while not is_terminal(load(services, job_id).state):
            runner.reap_once(services)
            if len(services.enqueue.calls) > sent:  # type: ignore[attr-defined]
                break
            assert time.monotonic() < deadline, "the reaper neither re-sent nor failed the job"
            time.sleep(0.05)
        if is_terminal(load(services, job_id).state):
            return delivery
    return rounds + 1


def assert_failed_after_max_attempts(services: runner.WorkerServices, job_id: str, deliveries: int,
                                     reason: str) -> None:
    job = load(services, job_id)
    assert deliveries <= MAX_ATTEMPTS + 1, (f"still {job.state} after {deliveries - 1} deliveries "
                                            f"({started_attempts(services, job_id, Stage.VALIDATE)} starts)")
    assert job.state == JobState.FAILED.value
    assert job.error["stage"] == "validate" and job.error["kind"] == "stage_attempts_exhausted", job.error
    assert job.error["attempts"] == MAX_ATTEMPTS
    assert job.error["message"].startswith(f"stage validate failed {MAX_ATTEMPTS} times; last error: ")
    assert reason in job.error["message"], job.error
    assert job.lease_owner is None
    assert started_attempts(services, job_id, Stage.VALIDATE) == MAX_ATTEMPTS
    with session_scope(services.sessions) as session:
        tenant_id = load_job(session, job_id=job_id).tenant_id
        errors = [e for e in list_events(session, tenant_id=tenant_id, job_id=job_id, limit=1000)
                  if e.type == "error"]
    assert [e.data["kind"] for e in errors] == ["stage_attempts_exhausted"]


def test_an_error_escaping_the_runner_every_time_fails_the_job(services: runner.WorkerServices,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The NUL case: the stage's work succeeds, storing its result fails, the exception escapes the runner (the
    Celery task errors); every re-run ends the same way."""
    services = fast(services)
    job_id = new_job(services, synthetic_body())
    monkeypatch.setitem(runner.STAGE_FUNCTIONS, Stage.VALIDATE, lambda ctx: StageResult(summary={"pairs": 1}))

    def database_refuses(*args: object, **kwargs: object) -> None:
        raise ValueError(NUL_ERROR)

    monkeypatch.setattr(stage_access, "complete_stage", database_refuses)

    def deliver(owner: str) -> None:
        try:
            runner.run_stage(services, job_id, Stage.VALIDATE, owner)
        except ValueError as exc:
            assert str(exc) == NUL_ERROR

    deliveries = deliver_until_settled(services, job_id, deliver)
    assert_failed_after_max_attempts(services, job_id, deliveries, f"ValueError: {NUL_ERROR}")


def test_a_worker_dying_in_the_stage_every_time_fails_the_job(services: runner.WorkerServices) -> None:
    """SIGKILL (or OOM) mid-stage: the stage was started under a lease and nothing else happened; the lease
    expires, the reaper re-queues, and the next worker dies the same way."""
    services = fast(services)
    job_id = new_job(services, synthetic_body())

    def killed_mid_stage(owner: str) -> None:  # what the runner does before the engine call, then nothing
        with session_scope(services.sessions) as session:
            if acquire_lease(session, job_id=job_id, owner=owner, ttl_s=services.settings.lease_ttl_s):
                start_stage(session, job_id=job_id, stage=Stage.VALIDATE)

    deliveries = deliver_until_settled(services, job_id, killed_mid_stage)
    assert_failed_after_max_attempts(services, job_id, deliveries, "stopped heart-beating")

