"""Stage ownership: a worker's lease on a job (acquire, heartbeat, release), and what the reaper re-queues (expired
leases, lost enqueues, messages nobody picked up)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from core.db.access.events import add_event
from core.db.access.stages import fail_exhausted, stage_progress
from core.db.models import Job, utcnow
from core.db.states import REQUEUE_STATES, STATE_STAGE, EventType, JobState, Stage

LEASE_EXPIRED_ERROR = {"kind": "lease_expired", "message": "the worker running it stopped heart-beating (it was "
                       "killed, ran out of memory, or lost the database) and its lease expired"}


@dataclass(frozen=True)
class Heartbeat:
    held: bool  # False: the lease expired and someone else may own the stage now; stop working
    cancel_requested: bool


def acquire_lease(session: Session, *, job_id: str, owner: str, ttl_s: float) -> bool:
    """Take the job's stage lease if free, expired, or already ours; counts an attempt."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id,
               or_(Job.lease_owner.is_(None), Job.lease_owner == owner, Job.lease_expires_at < now))
        .values(lease_owner=owner, lease_expires_at=now + timedelta(seconds=ttl_s), heartbeat_at=now,
                attempts=Job.attempts + 1)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def heartbeat(session: Session, *, job_id: str, owner: str, ttl_s: float) -> Heartbeat:
    now = utcnow()
    result = session.execute(
        update(Job).where(Job.id == job_id, Job.lease_owner == owner)
        .values(lease_expires_at=now + timedelta(seconds=ttl_s), heartbeat_at=now)
        .execution_options(synchronize_session=False)
    )
    cancel = bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))
    return Heartbeat(held=result.rowcount == 1, cancel_requested=cancel)  # type: ignore[attr-defined]


def release_lease(session: Session, *, job_id: str, owner: str) -> bool:
    result = session.execute(
        update(Job).where(Job.id == job_id, Job.lease_owner == owner)
        .values(lease_owner=None, lease_expires_at=None).execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def expired_leases(session: Session, *, now: datetime | None = None, limit: int = 100) -> list[tuple[str, str]]:
    """(job id, stage) of live jobs whose stage owner stopped heart-beating: the reaper re-queues these."""
    now = now or utcnow()
    rows = session.execute(
        select(Job.id, Job.stage).where(Job.lease_expires_at < now, Job.lease_owner.is_not(None),
                                        Job.state.not_in([s.value for s in (JobState.SUCCEEDED, JobState.FAILED,
                                                                             JobState.CANCELLED)]))
        .order_by(Job.lease_expires_at).limit(limit)
    ).all()
    return [(job_id, stage or Stage.VALIDATE.value) for job_id, stage in rows]


def stale_queued_jobs(session: Session, *, older_than_s: float, limit: int = 100) -> list[str]:
    """Queued jobs never picked up (e.g. the enqueue failed): the reaper enqueues them again."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    return list(session.scalars(
        select(Job.id).where(Job.state == JobState.QUEUED.value, Job.lease_owner.is_(None),
                             Job.created_at < cutoff).order_by(Job.id).limit(limit)
    ))


@dataclass(frozen=True)
class Requeue:
    job_id: str
    stage: Stage | None  # None: the job was cancelling with nobody working on it; finish the cancel instead
    reason: str
    failed: bool = False  # the stage ran out of attempts: the job was failed, nothing to enqueue


def claim_requeues(session: Session, *, older_than_s: float, enqueue_grace_s: float | None = None,
                   max_attempts: int | None = None, limit: int = 100) -> list[Requeue]:
    """Live jobs nobody works on: an expired lease (the owner died), a hand-over whose enqueue was never
    confirmed for `enqueue_grace_s` (the send failed or its sender died: noticed in seconds), or no lease and no
    change for `older_than_s` (a message the broker lost, or one a dead worker took with it). Each one is claimed
    by a compare-and-set that clears the lease and bumps `updated_at`, so concurrent reapers re-queue it once per
    period. An expired lease of a stage already started `max_attempts` times fails the job instead."""
    now = utcnow()
    cutoff = now - timedelta(seconds=older_than_s)
    unleased = Job.lease_owner.is_(None)
    stale = [Job.lease_expires_at < now, unleased & (Job.updated_at < cutoff)]
    if enqueue_grace_s is not None:
        stale.append(unleased & Job.enqueued_at.is_(None)
                     & (Job.updated_at < now - timedelta(seconds=enqueue_grace_s)))
    rows = session.execute(
        select(Job.id, Job.state, Job.lease_owner, Job.lease_expires_at, Job.updated_at)
        .where(Job.state.in_(REQUEUE_STATES), or_(*stale))
        .order_by(Job.id).limit(limit)
    ).all()
    claimed = []
    for job_id, state, owner, _expires, updated in rows:
        condition = [Job.id == job_id, Job.state == state]
        condition.append(Job.lease_owner == owner if owner is not None else Job.lease_owner.is_(None))
        condition.append(Job.updated_at == updated)
        result = session.execute(update(Job).where(*condition)
                                 .values(lease_owner=None, lease_expires_at=None, updated_at=now, enqueued_at=None)
                                 .execution_options(synchronize_session=False))
        if result.rowcount != 1:  # type: ignore[attr-defined]
            continue  # another reaper (or the owner) got there first
        job_state = JobState(state)
        reason = "lease expired" if owner is not None else "not picked up"
        stage = (None if job_state == JobState.CANCELLING
                 else Stage.VALIDATE if job_state == JobState.QUEUED else STATE_STAGE[job_state])
        if owner is not None and stage is not None:
            progress = stage_progress(session, job_id=job_id, stage=stage)
            if progress is not None:  # a started stage whose owner died: that attempt ended here
                if progress.last_error is None:  # the runner may have recorded the crash itself
                    progress.last_error = {"stage": stage.value, **LEASE_EXPIRED_ERROR}
                    session.flush()
                if max_attempts is not None and (progress.attempts or 0) >= max_attempts:
                    fail_exhausted(session, job_id=job_id, stage=stage, attempts=progress.attempts,
                                   last_error=progress.last_error)
                    claimed.append(Requeue(job_id, stage, "attempts exhausted", failed=True))
                    continue
        add_event(session, job_id=job_id, type=EventType.WARNING, stage=stage,
                  data={"message": f"re-queued: {reason}", "previous_owner": owner})
        claimed.append(Requeue(job_id, stage, reason))
    return claimed


def expect_enqueue(session: Session, *, job_id: str) -> None:
    """The job is being handed to its next stage: until `mark_enqueued` confirms the message was sent, the
    reaper treats it as a possibly lost enqueue (see `claim_requeues`)."""
    session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=None)
                    .execution_options(synchronize_session=False))


def mark_enqueued(session: Session, *, job_id: str) -> None:
    """The broker accepted the job's next message (does not touch `updated_at`, which the reaper compares)."""
    session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=utcnow())
                    .execution_options(synchronize_session=False))
