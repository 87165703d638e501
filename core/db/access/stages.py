"""Stage progress: entering a stage, absolute and monotonic progress, completion, attempts and their last
error."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.db.access.common import of_tenant_jobs
from core.db.access.events import add_event
from core.db.access.jobs import transition_job
from core.db.models import Job, StageProgress, utcnow
from core.db.states import STAGE_STATE, EventType, InvalidTransition, JobState, Stage


def start_stage(session: Session, *, job_id: str, stage: Stage, total: int | None = None) -> StageProgress:
    """Enter the stage's state (no-op if already there: a resumed stage) and open or keep its progress row (a
    resumed stage keeps the `done` recorded so far); counts one more attempt of this (job, stage)."""
    transition_job(session, job_id=job_id, to_state=STAGE_STATE[stage])
    progress = stage_progress(session, job_id=job_id, stage=stage)
    if progress is None:
        progress = StageProgress(job_id=job_id, stage=stage.value, done=0, total=total, attempts=0)
        session.add(progress)
    elif total is not None:
        progress.total = total
    progress.attempts = (progress.attempts or 0) + 1
    progress.last_error = None  # a new attempt; set again if it ends without finishing
    session.flush()
    add_event(session, job_id=job_id, type=EventType.STAGE_STARTED, stage=stage,
              data={"done": progress.done, "total": progress.total, "attempt": progress.attempts})
    return progress


def stage_progress(session: Session, *, job_id: str, stage: Stage) -> StageProgress | None:
    """The (job, stage) row, fresh from the database."""
    return session.scalar(select(StageProgress).where(StageProgress.job_id == job_id,
                                                      StageProgress.stage == stage.value)
                          .execution_options(populate_existing=True))


def record_stage_error(session: Session, *, job_id: str, stage: Stage, error: Mapping[str, Any]) -> None:
    """Remember why the last attempt of this stage ended without finishing (shown when the attempts run out)."""
    session.execute(update(StageProgress).where(StageProgress.job_id == job_id, StageProgress.stage == stage.value)
                    .values(last_error=dict(error)).execution_options(synchronize_session=False))


def fail_exhausted(session: Session, *, job_id: str, stage: Stage, attempts: int,
                   last_error: Mapping[str, Any] | None) -> dict[str, Any]:
    """Fail the job because this stage was started `attempts` times and never finished; returns the error."""
    reason = (last_error or {}).get("message") or "unknown (the worker stopped without saying why)"
    error = {"stage": stage.value, "kind": "stage_attempts_exhausted", "attempts": attempts,
             "message": f"stage {stage.value} failed {attempts} times; last error: {reason}"}
    add_event(session, job_id=job_id, type=EventType.ERROR, stage=stage, data=error)
    with contextlib.suppress(InvalidTransition):  # already terminal
        transition_job(session, job_id=job_id, to_state=JobState.FAILED, error=error)
    session.execute(update(Job).where(Job.id == job_id).values(lease_owner=None, lease_expires_at=None)
                    .execution_options(synchronize_session=False))
    return error


def record_progress(
    session: Session, *, job_id: str, stage: Stage, done: int, total: int | None = None, event: bool = True,
) -> StageProgress:
    """Set the stage's absolute progress (callers throttle how often; `event=False` skips the event).

    Monotonic: `done` never drops below what was recorded (a resumed stage restarts from its last checkpoint or
    cache and re-reports smaller counts at first), and a `total` smaller than that is not taken either."""
    progress = session.get(StageProgress, (job_id, stage.value))
    if progress is None:
        progress = StageProgress(job_id=job_id, stage=stage.value, done=0, total=total, attempts=0)
        session.add(progress)
    progress.done = max(progress.done or 0, done)
    if total is not None and total >= progress.done:
        progress.total = total
    progress.updated_at = utcnow()
    session.flush()
    if event:
        add_event(session, job_id=job_id, type=EventType.PROGRESS, stage=stage,
                  data={"done": progress.done, "total": progress.total})
    return progress


def complete_stage(
    session: Session, *, job_id: str, stage: Stage, summary: Mapping[str, Any] | None = None,
) -> StageProgress:
    progress = record_progress(session, job_id=job_id, stage=stage,
                               done=_done_at_completion(session, job_id, stage), event=False)
    progress.completed_at = progress.updated_at
    session.flush()
    add_event(session, job_id=job_id, type=EventType.STAGE_COMPLETED, stage=stage, data=dict(summary or {}))
    return progress


def _done_at_completion(session: Session, job_id: str, stage: Stage) -> int:
    progress = session.get(StageProgress, (job_id, stage.value))
    if progress is None:
        return 0
    return progress.total if progress.total is not None else progress.done


def stage_progress_by_job(session: Session, *, tenant_id: str,
                          job_ids: Sequence[str]) -> dict[str, list[StageProgress]]:
    """Progress rows of many of the tenant's jobs in one query (job listings)."""
    grouped: dict[str, list[StageProgress]] = {job_id: [] for job_id in job_ids}
    if job_ids:
        query = select(StageProgress).where(StageProgress.job_id.in_(list(job_ids)))
        for progress in session.scalars(of_tenant_jobs(query, StageProgress.job_id, tenant_id)):
            grouped[progress.job_id].append(progress)
    return grouped
