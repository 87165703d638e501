"""Jobs: creation (idempotent per key), tenant-scoped reads, the worker's unscoped `load_job`, and every state
change (`transition_job`, `request_cancel`, `retry_job`) as a compare-and-set UPDATE that `states` allows, so
the API (cancel) and workers (stage changes) never overwrite each other's state on Postgres or SQLite."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core.db.access.common import (
    NotFound,
    Page,
    dialect_insert,
    newest_first,
    tenant_owned,
)
from core.db.access.events import add_event
from core.db.models import Job, StageProgress, new_id, utcnow
from core.db.states import (
    PARKED_STATES,
    STAGE_STATE,
    STATE_STAGE,
    EventType,
    InvalidTransition,
    JobState,
    Stage,
    check_transition,
    is_terminal,
)

_MAX_CAS_TRIES = 5


class IdempotencyConflict(ValueError):
    """The Idempotency-Key was used before with a different request body."""

    def __init__(self, job_id: str):
        self.job_id = job_id
        super().__init__(f"Idempotency-Key already used for job {job_id} with a different request body")


def create_job(
    session: Session, *, tenant_id: str, request: dict[str, Any], body_hash: str,
    idempotency_key: str | None = None, kind: str = "realign",
) -> tuple[Job, bool]:
    """Insert a queued job; returns (job, created). With an idempotency key already used: the same body returns
    the existing job (created=False), a different body raises `IdempotencyConflict`."""
    if idempotency_key is not None:
        existing = job_by_idempotency_key(session, tenant_id=tenant_id, idempotency_key=idempotency_key)
        if existing is not None:
            return _replay(existing, body_hash), False
    now = utcnow()
    values = {"id": new_id("job"), "tenant_id": tenant_id, "kind": kind, "state": JobState.QUEUED.value, "stage": None,
              "request": request, "idempotency_key": idempotency_key, "body_hash": body_hash, "metrics": {},
              "artifacts": {}, "category_counts": {}, "cancel_requested": False, "attempts": 0,
              "created_at": now, "updated_at": now}
    # ON CONFLICT DO NOTHING: a concurrent request with the same key cannot make a second job (no savepoints,
    # which pysqlite does not handle well).
    statement = (dialect_insert(session, Job).values(**values)
                 .on_conflict_do_nothing(index_elements=["tenant_id", "idempotency_key"]).returning(Job.id))
    if session.execute(statement).scalar() is None:
        existing = job_by_idempotency_key(session, tenant_id=tenant_id, idempotency_key=str(idempotency_key))
        if existing is None:
            raise RuntimeError(f"job insert for idempotency key {idempotency_key!r} conflicted but no job exists")
        return _replay(existing, body_hash), False
    job = session.get(Job, values["id"])
    assert job is not None
    add_event(session, job_id=job.id, type=EventType.STATE_CHANGED, data={"from": None, "to": JobState.QUEUED.value})
    return job, True


def job_by_idempotency_key(session: Session, *, tenant_id: str, idempotency_key: str) -> Job | None:
    """The tenant's job this Idempotency-Key created, if any (a replay is not a new job for quotas)."""
    return session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == idempotency_key))


def _replay(existing: Job, body_hash: str) -> Job:
    if existing.body_hash != body_hash:  # the kind is part of the hash (see api.routes)
        raise IdempotencyConflict(existing.id)
    return existing


def get_job(session: Session, *, tenant_id: str, job_id: str) -> Job:
    return tenant_owned(session, Job, tenant_id=tenant_id, object_id=job_id, label="job")


def lock_job(session: Session, *, tenant_id: str, job_id: str) -> Job:
    """The tenant's job, row-locked on Postgres until the transaction ends (so a review change and a continue
    cannot interleave); another tenant's job is NotFound like a missing one."""
    return tenant_owned(session, Job, tenant_id=tenant_id, object_id=job_id, label="job", for_update=True)


def get_job_with_progress(session: Session, *, tenant_id: str, job_id: str) -> tuple[Job, list[StageProgress]]:
    """The job and its stage progress rows in one round trip (the hot GET /v1/jobs/{id} path)."""
    rows = session.execute(
        select(Job, StageProgress).outerjoin(StageProgress, StageProgress.job_id == Job.id)
        .where(Job.id == job_id, Job.tenant_id == tenant_id)
    ).all()
    if not rows:
        raise NotFound(f"job {job_id} not found")
    return rows[0][0], [progress for _, progress in rows if progress is not None]


def load_job(session: Session, *, job_id: str) -> Job:
    """Worker-side read (no tenant scoping); always fresh from the database."""
    job = session.scalar(select(Job).where(Job.id == job_id).execution_options(populate_existing=True))
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job


def list_jobs(
    session: Session, *, tenant_id: str, limit: int, cursor: str | None = None,
    states: Sequence[JobState] | None = None,
) -> Page[Job]:
    """Newest first, optionally only in some states."""
    where = [Job.state.in_([s.value for s in states])] if states else []
    return newest_first(session, Job, tenant_id=tenant_id, limit=limit, cursor=cursor, where=where)


def count_jobs_by_state(session: Session) -> dict[str, int]:
    rows = session.execute(select(Job.state, func.count()).group_by(Job.state)).all()
    return {state: count for state, count in rows}


def _compare_and_set(session: Session, *, job_id: str, current: JobState, values: dict[str, Any]) -> bool:
    result = session.execute(
        update(Job).where(Job.id == job_id, Job.state == current.value).values(**values)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def _current_state(session: Session, job_id: str) -> JobState:
    state = session.scalar(select(Job.state).where(Job.id == job_id))
    if state is None:
        raise NotFound(f"job {job_id} not found")
    return JobState(state)


def transition_job(
    session: Session, *, job_id: str, to_state: JobState, error: Mapping[str, Any] | None = None,
) -> bool:
    """Move the job to `to_state` if the state machine allows it from its current state.

    Returns False when the job is already in `to_state` (a resumed stage repeating its own start), True when it
    moved; raises `InvalidTransition` otherwise. Emits a `state_changed` event.
    """
    for _ in range(_MAX_CAS_TRIES):
        current = _current_state(session, job_id)
        if current == to_state:
            return False
        check_transition(job_id, current, to_state)
        now = utcnow()
        values: dict[str, Any] = {"state": to_state.value, "updated_at": now}
        if to_state in STATE_STAGE:
            values["stage"] = STATE_STAGE[to_state].value
        if is_terminal(to_state):
            values.update(finished_at=now, lease_owner=None, lease_expires_at=None)
        if to_state == JobState.CANCELLING:
            values["cancel_requested"] = True
        if error is not None:
            values["error"] = dict(error)
        if _compare_and_set(session, job_id=job_id, current=current, values=values):
            data: dict[str, Any] = {"from": current.value, "to": to_state.value}
            if error is not None:
                data["error"] = dict(error)
            add_event(session, job_id=job_id, type=EventType.STATE_CHANGED, data=data)
            _refresh(session, job_id)
            return True
    raise InvalidTransition(job_id, _current_state(session, job_id), to_state)


def request_cancel(session: Session, *, tenant_id: str, job_id: str) -> Job:
    """Queued -> cancelled at once; running -> cancelling (the worker stops and finishes it); cancelling stays.
    A finished job raises `InvalidTransition`."""
    get_job(session, tenant_id=tenant_id, job_id=job_id)
    for _ in range(_MAX_CAS_TRIES):
        current = _current_state(session, job_id)
        if current == JobState.CANCELLING:
            break
        unheld = current == JobState.QUEUED or current in PARKED_STATES  # no worker to stop: cancelled at once
        target = JobState.CANCELLED if unheld else JobState.CANCELLING
        check_transition(job_id, current, target)
        try:
            if transition_job(session, job_id=job_id, to_state=target):
                add_event(session, job_id=job_id, type=EventType.CANCEL_REQUESTED, data={"from": current.value})
                session.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True)
                                .execution_options(synchronize_session=False))
                break
        except InvalidTransition:  # the state moved under us; read it again
            continue
    return _refresh(session, job_id)


def _refresh(session: Session, job_id: str) -> Job:
    session.flush()
    return load_job(session, job_id=job_id)


def set_job_results(
    session: Session, *, job_id: str, metrics: Mapping[str, Any] | None = None,
    artifacts: Mapping[str, Any] | None = None, category_counts: Mapping[str, int] | None = None,
) -> Job:
    """Merge metrics/artifacts (keys overwrite) and replace category counts."""
    job = load_job(session, job_id=job_id)
    if metrics:
        job.metrics = {**(job.metrics or {}), **metrics}
    if artifacts:
        job.artifacts = {**(job.artifacts or {}), **artifacts}
    if category_counts is not None:
        job.category_counts = dict(category_counts)
    job.updated_at = utcnow()
    session.flush()
    return job


def retry_job(session: Session, *, tenant_id: str, job_id: str) -> tuple[Job, Stage]:
    """A failed job goes back to the stage it failed in (earlier stages' results, stored verdicts and training
    checkpoints are kept, so the stage resumes), with that stage's attempt count reset. Returns (job, stage to
    enqueue); raises `NotFound`, or `InvalidTransition` unless the job is failed."""
    job = get_job(session, tenant_id=tenant_id, job_id=job_id)
    current = JobState(job.state)
    stage = Stage(job.stage) if job.stage else Stage.VALIDATE
    target = STAGE_STATE[stage]
    if current != JobState.FAILED:  # a queued job would pass the check below (queued -> validating is allowed)
        raise InvalidTransition(job_id, current, target)
    check_transition(job_id, current, target, retry=True)
    previous_error = job.error
    now = utcnow()
    moved = _compare_and_set(session, job_id=job_id, current=current, values={
        "state": target.value, "stage": stage.value, "error": None, "finished_at": None, "cancel_requested": False,
        "lease_owner": None, "lease_expires_at": None, "enqueued_at": None, "updated_at": now})
    if not moved:
        raise InvalidTransition(job_id, _current_state(session, job_id), target)
    session.execute(update(StageProgress).where(StageProgress.job_id == job_id, StageProgress.stage == stage.value)
                    .values(attempts=0, last_error=None, completed_at=None)
                    .execution_options(synchronize_session=False))
    add_event(session, job_id=job_id, type=EventType.STATE_CHANGED, data={"from": current.value, "to": target.value})
    add_event(session, job_id=job_id, type=EventType.RETRIED, stage=stage,
              data={"stage": stage.value, "previous_error": previous_error})
    return _refresh(session, job_id), stage
