"""Jobs: submit (POST /v1/realign), read, list, events (JSON or SSE), cancel, triage results."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from api.deps import IdempotencyKeyHeader, PaginationDep, PrincipalDep, SessionDep, SettingsDep
from api.errors import ProblemError
from api.judges import check_judge_profile
from api.routes import problems
from api.schemas import EventOut, JobOut, Page, StageProgressOut, TriageItemOut, TriageList
from core.db.access import jobs as job_access
from core.db.access.adapters import find_adapter
from core.db.access.common import NotFound
from core.db.access.events import add_event, list_events, page_events
from core.db.access.files import get_file
from core.db.access.leases import mark_enqueued
from core.db.access.stages import stage_progress_by_job
from core.db.access.tenants import count_active_jobs, lock_tenant_submissions, submissions_since
from core.db.access.triage import list_triage_items, triage_category_counts, triage_counts_by_job
from core.db.models import Job, JobEvent, StageProgress, utcnow
from core.db.states import EventType, InvalidTransition, JobState, Stage, is_terminal
from core.jobspec import (
    SYNTHETIC_BASE_NAMES,
    EvalRequest,
    FileDataset,
    HfDataset,
    PathDataset,
    RealignRequest,
)
from core.paths import PathEscapesRoot, resolve_under_root
from core.settings import Settings
from trace_engine.categories import CATEGORIES

router = APIRouter(prefix="/v1", tags=["jobs"])
log = logging.getLogger("realign.api")
SSE_MEDIA_TYPE = "text/event-stream"
SSE_KEEPALIVE_S = 15.0


# ---------------------------------------------------------------- shaping


def progress_out(progress: StageProgress) -> StageProgressOut:
    """Rate over the stage's life so far; ETA from that rate (None until there is a rate)."""
    end = progress.completed_at or progress.updated_at
    elapsed = (end - progress.started_at).total_seconds()
    rate = progress.done / elapsed if progress.done > 0 and elapsed > 0 else None
    if progress.completed_at is not None:
        eta: float | None = 0.0
    elif rate and progress.total is not None:
        eta = max(progress.total - progress.done, 0) / rate
    else:
        eta = None
    return StageProgressOut(stage=progress.stage, done=progress.done, total=progress.total, rate_per_s=rate,
                            eta_s=eta, started_at=progress.started_at, updated_at=progress.updated_at,
                            completed_at=progress.completed_at)


def jobs_out(session: Session, jobs: list[Job], *, tenant_id: str,
             progress: dict[str, list[StageProgress]] | None = None) -> list[JobOut]:
    """Shape the tenant's jobs with at most two extra queries in all, not per job. Category counts are the stored
    ones (the worker sets them when triage completes); only a job still triaging has them counted live."""
    ids = [job.id for job in jobs]
    if progress is None:
        progress = stage_progress_by_job(session, tenant_id=tenant_id, job_ids=ids)
    live = [job.id for job in jobs if not job.category_counts and job.state == JobState.TRIAGING.value]
    live_counts = triage_counts_by_job(session, tenant_id=tenant_id, job_ids=live) if live else {}
    return [_job_out(job, progress[job.id], job.category_counts or live_counts.get(job.id, {})) for job in jobs]


def job_out(session: Session, job: Job) -> JobOut:
    return jobs_out(session, [job], tenant_id=job.tenant_id)[0]


def json_response(model: JobOut, status_code: int = 200) -> Response:
    """Serialise once (FastAPI would validate the model again against `response_model`)."""
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")


_STAGE_ORDER = {stage.value: index for index, stage in enumerate(Stage)}


def _job_out(job: Job, progress: list[StageProgress], counts: dict[str, int]) -> JobOut:
    rows = sorted(progress, key=lambda p: _STAGE_ORDER.get(p.stage, 99))
    return JobOut(id=job.id, kind=job.kind or "realign", state=job.state, stage=job.stage, cancel_requested=job.cancel_requested,
                  progress=[progress_out(p) for p in rows], category_counts=counts, metrics=job.metrics or {},
                  artifacts=job.artifacts or {}, error=job.error, request=job.request, created_at=job.created_at,
                  updated_at=job.updated_at, finished_at=job.finished_at)


def event_out(event: JobEvent) -> EventOut:
    return EventOut(id=event.id, job_id=event.job_id, type=event.type, stage=event.stage, data=event.data or {},
                    created_at=event.created_at)


def body_hash(body: RealignRequest | EvalRequest) -> str:
    """Hash of the validated body (defaults filled, keys sorted): key order and omitted defaults do not matter."""
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def field_problem(loc: list[str | int], message: str, kind: str) -> ProblemError:
    field = ".".join(str(p) for p in loc[1:])
    return ProblemError(422, f"invalid {field}: {message}", slug="validation-error", title="Request validation failed",
                        errors=[{"loc": loc, "field": field, "kind": kind, "message": message}])


def _checked_path(root: Any, relative: str, loc: list[str | int]) -> None:
    try:
        target = resolve_under_root(root, relative)
    except PathEscapesRoot as exc:
        raise field_problem(loc, str(exc), "path_escapes_root") from None
    if not target.exists():
        raise field_problem(loc, f"{relative!r} does not exist under the dataset root", "not_found")


COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
MOVING_REVISIONS = frozenset({"main", "master", "head", "latest", "dev", "develop"})


def check_pinned(settings: Settings, body: RealignRequest | EvalRequest) -> None:
    """A Hub base model is pinned to a commit sha (the worker loads nothing else) and a Hub dataset is not read
    from a branch head: refused now with 422 rather than accepted and failed seconds later. A base model that is a
    folder under the model root, or the synthetic one, needs no revision."""
    if isinstance(body, RealignRequest) and body.base_model.name_or_path not in SYNTHETIC_BASE_NAMES:
        name, revision = body.base_model.name_or_path, body.base_model.revision
        try:
            local = resolve_under_root(settings.models_root, name).is_dir()
        except PathEscapesRoot as exc:
            raise field_problem(["body", "base_model", "name_or_path"], f"{exc} (local models are folders under "
                                "the server's model root; anything else is a Hub id)", "path_escapes_root") from None
        if not local and not (revision and COMMIT_SHA.match(revision)):
            got = f"got {revision!r}" if revision else "none given"
            raise field_problem(["body", "base_model", "revision"], f"{name!r} is not a folder under the model root, "
                                f"so it is a Hub model and needs base_model.revision pinned to a 40-character commit "
                                f"sha ({got}); a branch or tag can change under a job", "unpinned_revision")
    dataset = body.dataset
    if isinstance(dataset, HfDataset) and (dataset.revision.strip().lower() in MOVING_REVISIONS
                                           or dataset.revision.startswith("refs/")):
        raise field_problem(["body", "dataset", "revision"], f"{dataset.revision!r} is a branch: its data can change "
                            "between runs; pin dataset.revision to a commit sha (or a release tag)",
                            "unpinned_revision")


def check_references(session: Session, settings: Settings, tenant_id: str,
                     body: RealignRequest | EvalRequest) -> None:
    """Validation that needs no GPU and no network: referenced files and paths exist and are allowed, Hub
    references are pinned, the judge is configured (with its key)."""
    check_pinned(settings, body)
    dataset = body.dataset
    if isinstance(dataset, FileDataset):
        try:
            get_file(session, tenant_id=tenant_id, file_id=dataset.file_id)
        except NotFound:
            raise field_problem(["body", "dataset", "file_id"], f"no file {dataset.file_id!r} (upload it with "
                                 "POST /v1/files)", "not_found") from None
    elif isinstance(dataset, PathDataset):
        _checked_path(settings.datasets_root, dataset.path, ["body", "dataset", "path"])
    if body.judge.rules_path is not None:
        _checked_path(settings.datasets_root, body.judge.rules_path, ["body", "judge", "rules_path"])
    check_judge_profile(settings, body.judge)  # an openai judge names a configured profile (docs/security.md)
    if (isinstance(body, RealignRequest) and body.parent_adapter is not None
            and find_adapter(session, tenant_id=tenant_id, id_or_name=body.parent_adapter) is None):
        raise field_problem(["body", "parent_adapter"], f"no adapter {body.parent_adapter!r}", "not_found")


# ---------------------------------------------------------------- routes


@router.post("/realign", status_code=202, response_model=JobOut, responses=problems(401, 413, 422, 429),
             summary="Submit a re-alignment job",
             description="Queues a TRACE job: triage your preference pairs against the new policy with the judge, "
             "score the conflicting pairs' impact, train one LoRA adapter on the base model, evaluate it and "
             "register it. Answers 202 with the job (`Location` names it); follow it with `GET /v1/jobs/{job_id}` "
             "or its events. States: queued, validating, triaging, scoring, training, evaluating, then succeeded, "
             "failed or cancelled. References are checked first (an unknown file, a path outside the dataset root, "
             "an unknown judge profile or parent adapter is a 422 naming the field). With an `Idempotency-Key` "
             "header the same key and body return the same job (`Idempotent-Replayed: true`), the same key with "
             "another body is a 422. 429 with `Retry-After` when the tenant has too many unfinished jobs or "
             "submissions in the last minute.")
def submit_job(
    body: RealignRequest,
    request: Request,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JobOut:
    """Queue a job (202). With `Idempotency-Key`: the same key and body return the same job; the same key with a
    different body is a 422."""
    check_references(session, settings, principal.tenant_id, body)
    job = create_and_enqueue(request, response, session, tenant_id=principal.tenant_id, body=body,
                             idempotency_key=idempotency_key, kind="realign", location="/v1/jobs")
    return job_out(session, job)


def create_and_enqueue(request: Request, response: Response, session: Session, *, tenant_id: str, body: Any,
                       idempotency_key: str | None, kind: str, location: str) -> Any:
    """Commit the job (or find the one this idempotency key made), then enqueue its first stage once."""
    replay = idempotency_key is not None and job_access.job_by_idempotency_key(
        session, tenant_id=tenant_id, idempotency_key=idempotency_key) is not None
    if not replay:
        enforce_quotas(session, request.app.state.settings, tenant_id, new_job=True)
    try:
        job, created = job_access.create_job(session, tenant_id=tenant_id, request=body.model_dump(mode="json"),
                                             body_hash=body_hash(body), idempotency_key=idempotency_key, kind=kind)
    except job_access.IdempotencyConflict as exc:
        raise ProblemError(422, f"{exc}; use a new key for a new request", slug="idempotency-key-reused",
                           errors=[{"loc": ["header", "Idempotency-Key"], "field": "Idempotency-Key",
                                    "kind": "idempotency_key_reused", "message": str(exc)}],
                           job_id=exc.job_id) from None
    session.commit()
    if created:
        request.app.state.metrics.jobs_submitted.inc()
        enqueue_stage(request, session, job.id)
    else:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"{location}/{job.id}"
    return job


def enforce_quotas(session: Session, settings: Settings, tenant_id: str, *, new_job: bool) -> None:
    """429 with Retry-After when the tenant has too many live jobs (`max_active_jobs_per_tenant`) or created too
    many jobs + files in the last minute (`max_submissions_per_minute`). Counted in Postgres under a per-tenant
    advisory lock held until the submission commits, so every API replica shares one exact limit."""
    lock_tenant_submissions(session, tenant_id=tenant_id)
    limit = settings.max_active_jobs_per_tenant
    if new_job and limit and count_active_jobs(session, tenant_id=tenant_id) >= limit:
        raise ProblemError(429, f"this tenant already has {limit} unfinished jobs (the limit); wait for one to "
                           "finish or cancel one", slug="too-many-active-jobs", headers={"Retry-After": "30"})
    rate = settings.max_submissions_per_minute
    if rate:
        now = utcnow()
        count, oldest = submissions_since(session, tenant_id=tenant_id, since=now - timedelta(seconds=60))
        if count >= rate:
            wait = max(1, math.ceil(60 - (now - oldest).total_seconds())) if oldest else 60
            raise ProblemError(429, f"more than {rate} submissions in a minute; retry in {wait} s",
                               slug="rate-limited", headers={"Retry-After": str(wait)})


def enqueue_stage(request: Request, session: Session, job_id: str, stage: Stage = Stage.VALIDATE) -> None:
    """The job is already committed; if the broker refuses, it stays put and the reaper enqueues it later."""
    try:
        request.app.state.enqueue(job_id, stage.value)
        mark_enqueued(session, job_id=job_id)  # confirmed: the reaper's lost-enqueue check skips it
        session.commit()
    except Exception as exc:
        session.rollback()
        log.warning("enqueue of job %s failed: %s", job_id, type(exc).__name__)
        request.app.state.metrics.enqueue_failures.inc()
        add_event(session, job_id=job_id, type=EventType.WARNING,
                  data={"message": f"enqueue failed ({type(exc).__name__}); the job waits and "
                                          "will be enqueued again"})
        session.commit()


@router.get("/jobs", response_model=Page[JobOut], responses=problems(400, 401, 422), summary="List jobs, newest first",
            description="Your jobs (re-alignment and evaluation), newest first, optionally only those in the "
            "given states. Paginated: pass `next_cursor` back as `cursor` until it is null.")
def list_jobs(
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    paging: PaginationDep,
    state: Annotated[list[JobState] | None, Query(description="repeat to match any of several states")] = None,
) -> Page[JobOut]:
    page = job_access.list_jobs(session, tenant_id=principal.tenant_id, limit=paging.size(settings),
                                cursor=paging.cursor, states=state)
    return Page[JobOut](data=jobs_out(session, page.items, tenant_id=principal.tenant_id),
                        next_cursor=page.next_cursor)


@router.get("/jobs/{job_id}", response_model=JobOut, responses=problems(401, 404), summary="A job's state",
            description="The job's state and current stage, progress per stage (done, total, rate, ETA), triage "
            "category counts, metrics (training summary; `metrics.eval` once evaluated), artifacts (with "
            "`adapter_id` once registered), the error of a failed job (sanitised), and the stored request.")
async def get_job(job_id: str, request: Request, principal: PrincipalDep) -> Response:
    """The hot polling path: one query and one thread hop."""

    def load() -> JobOut:
        with request.app.state.sessions() as session:
            job, progress = job_access.get_job_with_progress(session, tenant_id=principal.tenant_id, job_id=job_id)
            return jobs_out(session, [job], tenant_id=principal.tenant_id, progress={job.id: progress})[0]

    return json_response(await anyio.to_thread.run_sync(load))


@router.post("/jobs/{job_id}/cancel", status_code=202, response_model=JobOut, responses=problems(401, 404, 409),
             summary="Cancel a job",
             description="A queued job is cancelled at once; a running one goes to `cancelling` and its worker "
             "stops it at the next check (within a few seconds). 409 when the job has already finished.")
def cancel_job(job_id: str, session: SessionDep, principal: PrincipalDep) -> JobOut:
    """A queued job is cancelled at once; a running one goes to `cancelling` and its worker stops it."""
    try:
        job = job_access.request_cancel(session, tenant_id=principal.tenant_id, job_id=job_id)
    except InvalidTransition as exc:
        raise ProblemError(409, f"job {job_id} is already {exc.current.value}; nothing to cancel",
                           slug="job-finished") from None
    session.commit()
    return job_out(session, job)


@router.post("/jobs/{job_id}/retry", status_code=202, response_model=JobOut, responses=problems(401, 404, 409),
             summary="Retry a failed job from the stage it failed in",
             description="A failed job goes back to the stage it failed in, keeping what earlier stages produced "
             "(and that stage's stored verdicts and training checkpoints), with the stage's attempt count reset. "
             "409 unless the job failed.")
def retry_job(job_id: str, request: Request, session: SessionDep, principal: PrincipalDep) -> JobOut:
    """A failed job goes back to the stage it failed in, keeping what earlier stages produced (and the stored
    verdicts / training checkpoints of that stage), with that stage's attempts reset; 409 unless it failed."""
    try:
        job, stage = job_access.retry_job(session, tenant_id=principal.tenant_id, job_id=job_id)
    except InvalidTransition as exc:
        raise ProblemError(409, f"job {job_id} is {exc.current.value}; only a failed job can be retried",
                           slug="job-not-failed") from None
    session.commit()
    enqueue_stage(request, session, job_id, stage)
    return job_out(session, job_access.load_job(session, job_id=job_id))


@router.get("/jobs/{job_id}/events", response_model=Page[EventOut], responses={
    **problems(400, 401, 404),
    200: {"description": f"Events as JSON, or as a stream when `Accept: {SSE_MEDIA_TYPE}`",
          "content": {SSE_MEDIA_TYPE: {"schema": {"type": "string"}}}}},
    summary="A job's typed events (list, or server-sent events)",
    description="By default a JSON page of the job's events (state changes, stage starts and ends, progress, "
    "warnings, errors), oldest first. With `Accept: text/event-stream`: the events after `Last-Event-ID` (all when "
    "absent), then new ones as they happen, until the job has finished; each frame's `id` is the event id, its "
    "`event` the type and its `data` the event as JSON.")
async def job_events(
    job_id: str,
    request: Request,
    principal: PrincipalDep,
    paging: PaginationDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=32)] = None,
) -> Any:
    """JSON pages by default. With `Accept: text/event-stream`: past events after `Last-Event-ID`, then new ones
    as they happen, until the job is finished."""
    settings: Settings = request.app.state.settings
    sessions = request.app.state.sessions

    def load_first_page() -> Page[EventOut] | None:
        with sessions() as session:
            job_access.get_job(session, tenant_id=principal.tenant_id, job_id=job_id)  # 404 unless the tenant's
            if _wants_sse(request):
                return None
            page = page_events(session, tenant_id=principal.tenant_id, job_id=job_id, limit=paging.size(settings),
                               cursor=paging.cursor)
            return Page[EventOut](data=[event_out(e) for e in page.items], next_cursor=page.next_cursor)

    result = await anyio.to_thread.run_sync(load_first_page)
    if result is not None:
        return result
    after = _parse_last_event_id(last_event_id)
    return StreamingResponse(_sse_stream(request, principal.tenant_id, job_id, after), media_type=SSE_MEDIA_TYPE,
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _wants_sse(request: Request) -> bool:
    return SSE_MEDIA_TYPE in request.headers.get("accept", "")


def _parse_last_event_id(value: str | None) -> int | None:
    if value is None or not value.strip():
        return None
    if not value.strip().isdigit():
        raise ProblemError(400, f"Last-Event-ID must be an event id (an integer), not {value!r}",
                           slug="bad-last-event-id")
    return int(value.strip())


def sse_frame(event: EventOut) -> str:
    return f"id: {event.id}\nevent: {event.type}\ndata: {event.model_dump_json()}\n\n"


async def _sse_stream(request: Request, tenant_id: str, job_id: str, after: int | None) -> AsyncIterator[str]:
    """Poll the database; stop once the job is terminal and every event up to then was sent."""
    settings: Settings = request.app.state.settings
    sessions = request.app.state.sessions

    def poll(after_id: int | None) -> tuple[list[EventOut], bool]:
        with sessions() as session:
            job = job_access.get_job(session, tenant_id=tenant_id, job_id=job_id)
            terminal = is_terminal(job.state)  # read state BEFORE events
            events = list_events(session, tenant_id=tenant_id, job_id=job_id, limit=500, after_id=after_id)
            return [event_out(e) for e in events], terminal

    started = last_sent = time.monotonic()
    yield f"retry: {int(settings.sse_poll_interval_s * 2000)}\n\n"
    while True:
        events, terminal = await anyio.to_thread.run_sync(poll, after)
        for event in events:
            yield sse_frame(event)
            after, last_sent = event.id, time.monotonic()
        if terminal and len(events) < 500:
            return
        if await request.is_disconnected() or time.monotonic() - started > settings.sse_max_duration_s:
            return
        if time.monotonic() - last_sent > SSE_KEEPALIVE_S:
            yield ": keep-alive\n\n"
            last_sent = time.monotonic()
        await anyio.sleep(settings.sse_poll_interval_s)


@router.get("/jobs/{job_id}/triage", response_model=TriageList, responses=problems(400, 401, 404, 422),
            summary="Triaged pairs with their verdicts",
            description="Each pair the triage stage judged, in dataset order: its category under the new policy "
            "(INVERT: the old chosen now violates and the old rejected does not; PUNISH: both violate; RETAIN: "
            "unchanged) and the judge's verdicts on both responses (clauses, rationale). Filter by `category`; "
            "`category_counts` covers the whole job. Empty until triage has run.")
def job_triage(
    job_id: str,
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    paging: PaginationDep,
    category: Annotated[str | None, Query(pattern="^(" + "|".join(CATEGORIES) + ")$")] = None,
) -> TriageList:
    job_access.get_job(session, tenant_id=principal.tenant_id, job_id=job_id)  # 404 unless the tenant's
    page = list_triage_items(session, tenant_id=principal.tenant_id, job_id=job_id, limit=paging.size(settings),
                             cursor=paging.cursor, category=category)
    items = [TriageItemOut(pair_id=i.pair_id, position=i.position, category=i.category, verdicts=i.verdicts)
             for i in page.items]
    return TriageList(data=items, next_cursor=page.next_cursor,
                      category_counts=triage_category_counts(session, tenant_id=principal.tenant_id,
                                                             job_id=job_id))
