"""Every read and write of the service's tables, as keyword-only functions over a caller-owned `Session`.

The caller owns the transaction (commit/rollback); functions here only flush. Job state changes go through
`transition_job` / `request_cancel`, which enforce `states.ALLOWED_TRANSITIONS` with a compare-and-set UPDATE, so
the API (cancel) and workers (stage changes) never overwrite each other's state on Postgres or SQLite.
API-facing reads take a `tenant_id`: another tenant's object is simply not found.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from sqlalchemy import func, or_, select, text, update
from sqlalchemy.orm import Session

from core.db.models import (
    Adapter,
    ApiKey,
    File,
    Job,
    JobEvent,
    StageProgress,
    Tenant,
    TriageItem,
    WorkerHeartbeat,
    new_id,
    utcnow,
)
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

LIVE_STATES = tuple(s.value for s in JobState if not is_terminal(s))
REQUEUE_STATES = tuple(s for s in LIVE_STATES if JobState(s) not in PARKED_STATES)  # what the reaper may re-send

T = TypeVar("T")
_Owned = TypeVar("_Owned", File, Job, Adapter)  # tenant-owned records with `id` and `tenant_id`
KEY_PREFIX = "rk_"
_MAX_CAS_TRIES = 5
_INSERT_CHUNK = 500


class NotFound(LookupError):
    """The object does not exist for this tenant."""


class IdempotencyConflict(ValueError):
    """The Idempotency-Key was used before with a different request body."""

    def __init__(self, job_id: str):
        self.job_id = job_id
        super().__init__(f"Idempotency-Key already used for job {job_id} with a different request body")


class BadCursor(ValueError):
    """A pagination cursor that this service did not hand out."""


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


# ---------------------------------------------------------------- cursors


def encode_cursor(value: str | int) -> str:
    """Opaque cursor: clients must not build or parse it."""
    raw = f"{'i' if isinstance(value, int) else 's'}:{value}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, *, kind: type) -> str | int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        tag, _, value = raw.partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise BadCursor(f"invalid cursor {cursor!r}") from exc
    if kind is int and tag == "i" and value.lstrip("-").isdigit():
        return int(value)
    if kind is str and tag == "s" and value:
        return value
    raise BadCursor(f"invalid cursor {cursor!r}")


def _page(rows: Sequence[T], limit: int, key: Any) -> Page[T]:
    items = list(rows[:limit])
    next_cursor = encode_cursor(key(items[-1])) if len(rows) > limit and items else None
    return Page(items, next_cursor)


# ---------------------------------------------------------------- tenants and keys


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def get_or_create_tenant(session: Session, *, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(id=new_id("ten"), name=name)
        session.add(tenant)
        session.flush()
    return tenant


def create_api_key(session: Session, *, tenant_name: str) -> str:
    """A new key for the tenant (created if absent). The plaintext is returned once and never stored."""
    tenant = get_or_create_tenant(session, name=tenant_name)
    prefix = secrets.token_hex(6)
    key = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    session.add(ApiKey(id=new_id("key"), tenant_id=tenant.id, prefix=prefix, key_hash=hash_key(key)))
    session.flush()
    return key


def authenticate(session: Session, *, key: str) -> Tenant | None:
    """The tenant owning this (unrevoked) key, else None. Constant-time hash comparison."""
    if not key.startswith(KEY_PREFIX):
        return None
    prefix = key[len(KEY_PREFIX):].split("_", 1)[0]
    row = session.execute(
        select(ApiKey.key_hash, Tenant).join(Tenant, Tenant.id == ApiKey.tenant_id)
        .where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None))
    ).first()
    if row is None or not hmac.compare_digest(row[0], hash_key(key)):
        return None
    return row[1]


# ---------------------------------------------------------------- files


def create_file(
    session: Session, *, file_id: str, tenant_id: str, filename: str, fmt: str, size_bytes: int, sha256: str,
    rows: int, pairs: int, report: dict[str, Any],
) -> File:
    record = File(id=file_id, tenant_id=tenant_id, filename=filename, format=fmt, size_bytes=size_bytes,
                  sha256=sha256, rows=rows, pairs=pairs, report=report)
    session.add(record)
    session.flush()
    return record


def _tenant_owned(session: Session, model: type[_Owned], *, tenant_id: str, object_id: str, label: str) -> _Owned:
    """The tenant's object with this id; another tenant's object is indistinguishable from a missing one."""
    record = session.scalar(select(model).where(model.id == object_id, model.tenant_id == tenant_id))
    if record is None:
        raise NotFound(f"{label} {object_id} not found")
    return record


def get_file(session: Session, *, tenant_id: str, file_id: str) -> File:
    return _tenant_owned(session, File, tenant_id=tenant_id, object_id=file_id, label="file")


def list_files(session: Session, *, tenant_id: str, limit: int, cursor: str | None = None) -> Page[File]:
    query = select(File).where(File.tenant_id == tenant_id)
    if cursor:
        query = query.where(File.id < decode_cursor(cursor, kind=str))
    rows = session.scalars(query.order_by(File.id.desc()).limit(limit + 1)).all()
    return _page(rows, limit, lambda f: f.id)


# ---------------------------------------------------------------- jobs


def create_job(
    session: Session, *, tenant_id: str, request: dict[str, Any], body_hash: str,
    idempotency_key: str | None = None, kind: str = "realign",
) -> tuple[Job, bool]:
    """Insert a queued job; returns (job, created). With an idempotency key already used: the same body returns
    the existing job (created=False), a different body raises `IdempotencyConflict`."""
    if idempotency_key is not None:
        existing = _job_by_idempotency_key(session, tenant_id=tenant_id, idempotency_key=idempotency_key)
        if existing is not None:
            return _replay(existing, body_hash), False
    now = utcnow()
    values = {"id": new_id("job"), "tenant_id": tenant_id, "kind": kind, "state": JobState.QUEUED.value, "stage": None,
              "request": request, "idempotency_key": idempotency_key, "body_hash": body_hash, "metrics": {},
              "artifacts": {}, "category_counts": {}, "cancel_requested": False, "attempts": 0,
              "created_at": now, "updated_at": now}
    # ON CONFLICT DO NOTHING: a concurrent request with the same key cannot make a second job (no savepoints,
    # which pysqlite does not handle well).
    statement = (_insert(session, Job).values(**values)
                 .on_conflict_do_nothing(index_elements=["tenant_id", "idempotency_key"]).returning(Job.id))
    if session.execute(statement).scalar() is None:
        existing = _job_by_idempotency_key(session, tenant_id=tenant_id, idempotency_key=str(idempotency_key))
        if existing is None:
            raise RuntimeError(f"job insert for idempotency key {idempotency_key!r} conflicted but no job exists")
        return _replay(existing, body_hash), False
    job = session.get(Job, values["id"])
    assert job is not None
    add_event(session, job_id=job.id, type=EventType.STATE_CHANGED, data={"from": None, "to": JobState.QUEUED.value})
    return job, True


def _insert(session: Session, model: type) -> Any:
    """The dialect's INSERT (both Postgres and SQLite support ON CONFLICT DO NOTHING and RETURNING)."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    return insert(model)


def _job_by_idempotency_key(session: Session, *, tenant_id: str, idempotency_key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == idempotency_key))


def _replay(existing: Job, body_hash: str) -> Job:
    if existing.body_hash != body_hash:  # the kind is part of the hash (see api.routes)
        raise IdempotencyConflict(existing.id)
    return existing


def get_job(session: Session, *, tenant_id: str, job_id: str) -> Job:
    return _tenant_owned(session, Job, tenant_id=tenant_id, object_id=job_id, label="job")


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
    """Newest first; the cursor is the last id seen, so pages never repeat or skip a job."""
    query = select(Job).where(Job.tenant_id == tenant_id)
    if states:
        query = query.where(Job.state.in_([s.value for s in states]))
    if cursor:
        query = query.where(Job.id < decode_cursor(cursor, kind=str))
    rows = session.scalars(query.order_by(Job.id.desc()).limit(limit + 1)).all()
    return _page(rows, limit, lambda j: j.id)


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


# ---------------------------------------------------------------- stages and progress


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


def list_stage_progress(session: Session, *, job_id: str) -> list[StageProgress]:
    return list(session.scalars(select(StageProgress).where(StageProgress.job_id == job_id)))


def stage_progress_by_job(session: Session, *, job_ids: Sequence[str]) -> dict[str, list[StageProgress]]:
    """Progress rows of many jobs in one query (job listings)."""
    grouped: dict[str, list[StageProgress]] = {job_id: [] for job_id in job_ids}
    if job_ids:
        for progress in session.scalars(select(StageProgress).where(StageProgress.job_id.in_(list(job_ids)))):
            grouped[progress.job_id].append(progress)
    return grouped


# ---------------------------------------------------------------- events


def add_event(
    session: Session, *, job_id: str, type: EventType, data: Mapping[str, Any] | None = None,
    stage: Stage | None = None,
) -> JobEvent:
    event = JobEvent(job_id=job_id, type=type.value, stage=stage.value if stage else None, data=dict(data or {}))
    session.add(event)
    session.flush()
    return event


def list_events(session: Session, *, job_id: str, limit: int, after_id: int | None = None) -> list[JobEvent]:
    """Events in order, strictly after `after_id` (an event id, e.g. SSE Last-Event-ID)."""
    query = select(JobEvent).where(JobEvent.job_id == job_id)
    if after_id is not None:
        query = query.where(JobEvent.id > after_id)
    return list(session.scalars(query.order_by(JobEvent.id).limit(limit)))


def page_events(session: Session, *, job_id: str, limit: int, cursor: str | None = None) -> Page[JobEvent]:
    after = decode_cursor(cursor, kind=int) if cursor else None
    rows = list_events(session, job_id=job_id, limit=limit + 1, after_id=after)  # type: ignore[arg-type]
    return _page(rows, limit, lambda e: e.id)


# ---------------------------------------------------------------- triage items


def add_triage_items(session: Session, *, job_id: str, items: Iterable[Mapping[str, Any]]) -> int:
    """Insert verdict rows {pair_id, position, category, verdicts}; rows already stored are kept as they are
    (a resumed triage stage may offer the same pair twice). Returns how many were new."""
    rows = [{"job_id": job_id, "pair_id": str(i["pair_id"]), "position": int(i["position"]),
             "category": str(i["category"]), "verdicts": dict(i["verdicts"]), "created_at": utcnow()}
            for i in items]
    if not rows:
        return 0
    new = 0
    for start in range(0, len(rows), _INSERT_CHUNK):  # SQLite caps bound parameters per statement
        chunk = rows[start:start + _INSERT_CHUNK]
        statement = _insert(session, TriageItem).values(chunk).on_conflict_do_nothing().returning(TriageItem.pair_id)
        new += len(session.execute(statement).all())
    return new


def list_triage_items(
    session: Session, *, job_id: str, limit: int, cursor: str | None = None, category: str | None = None,
) -> Page[TriageItem]:
    query = select(TriageItem).where(TriageItem.job_id == job_id)
    if category:
        query = query.where(TriageItem.category == category)
    if cursor:
        query = query.where(TriageItem.position > decode_cursor(cursor, kind=int))
    rows = session.scalars(query.order_by(TriageItem.position).limit(limit + 1)).all()
    return _page(rows, limit, lambda t: t.position)


def triage_category_counts(session: Session, *, job_id: str) -> dict[str, int]:
    return triage_counts_by_job(session, job_ids=[job_id])[job_id]


def triage_counts_by_job(session: Session, *, job_ids: Sequence[str]) -> dict[str, dict[str, int]]:
    """Live category counts of the stored verdicts, per job, in one query."""
    counts: dict[str, dict[str, int]] = {job_id: {} for job_id in job_ids}
    if job_ids:
        rows = session.execute(select(TriageItem.job_id, TriageItem.category, func.count())
                               .where(TriageItem.job_id.in_(list(job_ids)))
                               .group_by(TriageItem.job_id, TriageItem.category)).all()
        for job_id, category, count in rows:
            counts[job_id][category] = count
    return counts


# ---------------------------------------------------------------- leases (stage ownership)


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


def ping(session: Session) -> None:
    """Raises if the database is unreachable."""
    session.execute(text("SELECT 1"))


@dataclass(frozen=True)
class Requeue:
    job_id: str
    stage: Stage | None  # None: the job was cancelling with nobody working on it; finish the cancel instead
    reason: str
    failed: bool = False  # the stage ran out of attempts: the job was failed, nothing to enqueue


LEASE_EXPIRED_ERROR = {"kind": "lease_expired", "message": "the worker running it stopped heart-beating (it was "
                       "killed, ran out of memory, or lost the database) and its lease expired"}


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


# ---------------------------------------------------------------- workers (readiness)


def record_worker(session: Session, *, name: str, hostname: str, pid: int, queues: Sequence[str]) -> None:
    """Upsert this worker's heartbeat row."""
    now = utcnow()
    statement = _insert(session, WorkerHeartbeat).values(name=name, hostname=hostname, pid=pid, queues=list(queues),
                                                         started_at=now, last_seen=now)
    session.execute(statement.on_conflict_do_update(index_elements=["name"],
                                                    set_={"last_seen": now, "queues": list(queues)}))


def remove_worker(session: Session, *, name: str) -> None:
    session.execute(WorkerHeartbeat.__table__.delete().where(WorkerHeartbeat.name == name))


def live_workers_by_queue(session: Session, *, queues: Sequence[str], stale_after_s: float) -> dict[str, int]:
    """How many workers seen within `stale_after_s` consume each of `queues`."""
    now = utcnow()
    counts = {queue: 0 for queue in queues}
    for worker_queues in session.scalars(select(WorkerHeartbeat.queues)
                                         .where(WorkerHeartbeat.last_seen >= now - timedelta(seconds=stale_after_s))):
        for queue in worker_queues or []:
            if queue in counts:
                counts[queue] += 1
    return counts


# ---------------------------------------------------------------- quotas


def lock_tenant_submissions(session: Session, *, tenant_id: str) -> None:
    """Serialise this tenant's submissions until the transaction ends (Postgres advisory lock; SQLite already
    serialises writers), so concurrent requests on several API replicas cannot both pass a quota check."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"realign-quota:{tenant_id}"})


def count_active_jobs(session: Session, *, tenant_id: str) -> int:
    return int(session.scalar(select(func.count()).select_from(Job)
                              .where(Job.tenant_id == tenant_id, Job.state.in_(LIVE_STATES))) or 0)


def submissions_since(session: Session, *, tenant_id: str, since: datetime) -> tuple[int, datetime | None]:
    """Jobs and files this tenant created at or after `since`: (how many, the oldest one's time)."""
    total, oldest = 0, None
    for model in (Job, File):
        count, first = session.execute(select(func.count(), func.min(model.created_at))
                                       .where(model.tenant_id == tenant_id, model.created_at >= since)).one()
        total += int(count or 0)
        if first is not None:
            first = first if first.tzinfo else first.replace(tzinfo=since.tzinfo)
            oldest = first if oldest is None or first < oldest else oldest
    return total, oldest


# ---------------------------------------------------------------- adapters


def create_adapter(
    session: Session, *, tenant_id: str, job_id: str | None, name: str, path: str, sha256: str, size_bytes: int,
    provenance: dict[str, Any], eval_report: dict[str, Any] | None = None,
) -> Adapter:
    """Register an adapter; a job registers at most one (a repeated call for the same job returns the first)."""
    if job_id is not None:
        existing = session.scalar(select(Adapter).where(Adapter.job_id == job_id))
        if existing is not None:
            return existing
    adapter = Adapter(id=new_id("ada"), tenant_id=tenant_id, job_id=job_id, name=name, path=path, sha256=sha256,
                      size_bytes=size_bytes, provenance=provenance, eval_report=eval_report)
    session.add(adapter)
    session.flush()
    return adapter


def get_adapter(session: Session, *, tenant_id: str, adapter_id: str) -> Adapter:
    return _tenant_owned(session, Adapter, tenant_id=tenant_id, object_id=adapter_id, label="adapter")


def find_adapter(session: Session, *, tenant_id: str, id_or_name: str) -> Adapter | None:
    """The tenant's adapter with this id, else with this name (what a client puts in `model`)."""
    return session.scalar(select(Adapter).where(Adapter.tenant_id == tenant_id,
                                                or_(Adapter.id == id_or_name, Adapter.name == id_or_name))
                          .order_by((Adapter.id == id_or_name).desc()).limit(1))


def adapter_of_job(session: Session, *, job_id: str) -> Adapter | None:
    return session.scalar(select(Adapter).where(Adapter.job_id == job_id))


def list_adapters(session: Session, *, tenant_id: str, limit: int, cursor: str | None = None) -> Page[Adapter]:
    """Newest first, cursor = last id seen (as jobs)."""
    query = select(Adapter).where(Adapter.tenant_id == tenant_id)
    if cursor:
        query = query.where(Adapter.id < decode_cursor(cursor, kind=str))
    rows = session.scalars(query.order_by(Adapter.id.desc()).limit(limit + 1)).all()
    return _page(rows, limit, lambda a: a.id)


def delete_adapter(session: Session, *, tenant_id: str, adapter_id: str) -> Adapter:
    """Remove the row (the caller removes the files after the commit); returns the removed row."""
    adapter = get_adapter(session, tenant_id=tenant_id, adapter_id=adapter_id)
    session.delete(adapter)
    session.flush()
    return adapter


def set_adapter_gate(session: Session, *, adapter_id: str, result: dict[str, Any]) -> None:
    session.execute(update(Adapter).where(Adapter.id == adapter_id).values(deploy_gate=result)
                    .execution_options(synchronize_session=False))


def set_adapter_eval_report(session: Session, *, adapter_id: str, report: dict[str, Any]) -> None:
    session.execute(update(Adapter).where(Adapter.id == adapter_id).values(eval_report=report)
                    .execution_options(synchronize_session=False))
