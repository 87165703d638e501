"""Running one stage of one job: lease + heartbeat, state transitions, throttled progress, results, hand-over.

Framework-free (Celery calls `run_stage` from `worker.tasks`; tests may call it directly). The rules:
- A stage runs only while its owner holds the job's lease; a heartbeat thread renews it and watches
  `cancel_requested`. A lost lease or a cancel makes the next progress callback raise `Cancelled`.
- The stage's work is ONE engine call (`worker.judge_stages`, `worker.gpu_stages`, `worker.eval_stages`);
  everything it writes is keyed by the job id, and a re-run resumes (triage verdicts are stored item by item;
  training resumes from its last checkpoint).
- At the end, one transaction stores the results, completes the stage, moves the job to the next stage's
  state (or `succeeded`) and releases the lease; only then is the next stage enqueued, and the enqueue confirmed
  (`enqueued_at`). If that enqueue is lost (the send failed, or this process died first), the reaper finds the
  job (live, no lease, enqueue unconfirmed for `enqueue_grace_s`) and enqueues it again within seconds.
- Duplicate or stale messages are harmless: a stage whose job is not in that stage's state is skipped.
- Every start of a stage counts an attempt of that (job, stage). A start that ends without the stage finishing
  or failing on its own (an exception escaping the runner, a crash, SIGKILL: the lease expires) records why,
  where it can; after `stage_max_attempts` starts the job fails with "stage X failed N times; last error: ..."
  instead of being re-queued forever.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from core.db.access import leases as lease_access
from core.db.access import stages as stage_access
from core.db.access.adapters import find_adapter
from core.db.access.common import NotFound
from core.db.access.events import add_event
from core.db.access.files import get_file
from core.db.access.jobs import load_job, set_job_results, transition_job
from core.db.access.triage import add_triage_items
from core.db.access.workers import record_worker, remove_worker
from core.db.engine import session_scope
from core.db.states import STAGE_STATE, EventType, InvalidTransition, JobState, Stage, is_terminal, next_stage
from core.jobspec import EvalRequest, FileDataset, RealignRequest
from core.sanitise import sanitise_error
from core.settings import Settings
from worker.context import Cancelled, StageContext, StageFailed, StageResult
from worker.eval_stages import EVAL_STAGE_FUNCTIONS
from worker.gpu_stages import run_evaluate, run_score, run_train
from worker.judge_stages import run_triage, run_validate
from worker.resources import StageResources, release_memory

log = logging.getLogger(__name__)
Enqueue = Callable[[str, str], None]

SKIPPED, DONE, CANCELLED, FAILED, LEASE_LOST, BUSY = "skipped", "done", "cancelled", "failed", "lease_lost", "busy"

STAGE_FUNCTIONS: dict[Stage, Callable[[StageContext], StageResult]] = {
    Stage.VALIDATE: run_validate,
    Stage.TRIAGE: run_triage,
    Stage.SCORE: run_score,
    Stage.TRAIN: run_train,
    Stage.EVALUATE: run_evaluate,
}


def stage_function(kind: str, stage: Stage) -> Callable[[StageContext], StageResult]:
    """The engine call for `stage` of a job of this kind (`realign` or `eval`)."""
    if kind == "eval":
        if stage not in EVAL_STAGE_FUNCTIONS:
            raise StageFailed(f"an evaluation job has no {stage.value} stage", kind="internal_error")
        return EVAL_STAGE_FUNCTIONS[stage]
    return STAGE_FUNCTIONS[stage]


@dataclass
class WorkerServices:
    settings: Settings
    sessions: sessionmaker[Session]
    enqueue: Enqueue


class Heartbeat(threading.Thread):
    """Renews the lease every `interval` and raises the flags the stage's progress callback checks."""

    def __init__(self, services: WorkerServices, job_id: str, owner: str) -> None:
        super().__init__(name=f"heartbeat-{job_id}", daemon=True)
        self.services, self.job_id, self.owner = services, job_id, owner
        self.stop_event = threading.Event()
        self.cancel_requested = threading.Event()
        self.lease_lost = threading.Event()

    def beat(self) -> None:
        settings = self.services.settings
        with session_scope(self.services.sessions) as session:
            state = lease_access.heartbeat(session, job_id=self.job_id, owner=self.owner,
                                           ttl_s=settings.lease_ttl_s)
        if not state.held:
            self.lease_lost.set()
        if state.cancel_requested:
            self.cancel_requested.set()

    def run(self) -> None:
        while not self.stop_event.wait(self.services.settings.heartbeat_interval_s):
            try:
                self.beat()
            except Exception:  # a database blip: try again next period (the lease TTL is several periods)
                log.warning("heartbeat of job %s failed", self.job_id, exc_info=True)
            if self.lease_lost.is_set():
                return

    def should_stop(self) -> bool:
        return self.cancel_requested.is_set() or self.lease_lost.is_set()

    def stop(self) -> None:
        self.stop_event.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=10)


class ProgressWriter:
    """The stage's `tick(done, total)`: raises `Cancelled` when asked to stop; writes progress at most once per
    `interval` (the first item and the last always), each write with an event."""

    def __init__(self, services: WorkerServices, job_id: str, stage: Stage, heartbeat: Heartbeat) -> None:
        self.services, self.job_id, self.stage, self.heartbeat = services, job_id, stage, heartbeat
        self.last_write = 0.0
        self.last_done: int | None = None

    def __call__(self, done: int, total: int | None) -> None:
        if self.heartbeat.should_stop():
            raise Cancelled("lease lost" if self.heartbeat.lease_lost.is_set() else "cancel requested")
        now = time.monotonic()
        first = self.last_done in (None, 0) and done > 0
        final = total is not None and done >= total
        if not (first or final or now - self.last_write >= self.services.settings.progress_interval_s):
            return
        if done == self.last_done and not final:
            return
        with session_scope(self.services.sessions) as session:
            stage_access.record_progress(session, job_id=self.job_id, stage=self.stage, done=done, total=total)
        self.last_write, self.last_done = now, done


def run_stage(services: WorkerServices, job_id: str, stage: Stage, owner: str) -> str:
    """Run `stage` of `job_id` as `owner`; returns what happened (SKIPPED, DONE, CANCELLED, FAILED, LEASE_LOST,
    BUSY). Never raises for a stage's own failure: that is recorded on the job."""
    settings = services.settings
    with session_scope(services.sessions) as session:
        job = load_job(session, job_id=job_id)
        if is_terminal(job.state):
            return SKIPPED
        if not lease_access.acquire_lease(session, job_id=job_id, owner=owner, ttl_s=settings.lease_ttl_s):
            return BUSY  # a live owner is on it; if it dies, the reaper re-queues
    with session_scope(services.sessions) as session:
        job = load_job(session, job_id=job_id)
        state = JobState(job.state)
        if state == JobState.CANCELLING:
            _finish_cancel(session, job_id, owner)
            return CANCELLED
        expected = {STAGE_STATE[stage]} | ({JobState.QUEUED} if stage == Stage.VALIDATE else set())
        if state not in expected:  # a duplicate or stale message: the job has moved on
            lease_access.release_lease(session, job_id=job_id, owner=owner)
            return SKIPPED
        previous = stage_access.stage_progress(session, job_id=job_id, stage=stage)
        if previous is not None and (previous.attempts or 0) >= settings.stage_max_attempts:
            stage_access.fail_exhausted(session, job_id=job_id, stage=stage, attempts=previous.attempts,
                                        last_error=previous.last_error)
            log.error("job %s stage %s: %d attempts used up; the job failed", job_id, stage.value,
                      previous.attempts)
            return FAILED
    try:
        return _run_started(services, job_id, stage, owner)
    except BaseException as exc:  # escaped the runner: the task (or the process) dies; this attempt ends here
        _record_crash(services, job_id, stage, owner, exc)
        raise


def _run_started(services: WorkerServices, job_id: str, stage: Stage, owner: str) -> str:
    settings = services.settings
    with session_scope(services.sessions) as session:
        job = load_job(session, job_id=job_id)
        kind, stored, tenant_id = job.kind, job.request, job.tenant_id
    try:
        request = parse_request(kind, stored)
    except ValidationError as exc:  # stored by older code with fields refused since (e.g. judge.base_url)
        _fail(services, job_id, stage, owner, stored_request_invalid(exc))
        return FAILED
    with session_scope(services.sessions) as session:
        file_format = _file_format(session, tenant_id, request)
        stage_access.start_stage(session, job_id=job_id, stage=stage)

    heartbeat = Heartbeat(services, job_id, owner)
    heartbeat.start()
    ctx = StageContext(job_id=job_id, tenant_id=tenant_id, request=request, settings=settings,
                       tick=ProgressWriter(services, job_id, stage, heartbeat), file_format=file_format,
                       warn=lambda message: _event(services, job_id, stage, EventType.WARNING, {"message": message}),
                       lookup_adapter=lambda id_or_name: _lookup_adapter(services, tenant_id, id_or_name))
    used = StageResources()  # wall time and peak memory; the stage's models are released on the way out
    ended = False
    try:
        with used:
            result = stage_function(kind, stage)(ctx)
        if heartbeat.should_stop():
            raise Cancelled("stop requested at the end of the stage")
        ended = True
    except Cancelled:
        heartbeat.stop()
        if heartbeat.lease_lost.is_set():
            log.warning("job %s stage %s: lease lost; leaving the job to its new owner", job_id, stage.value)
            return LEASE_LOST
        with session_scope(services.sessions) as session:
            _finish_cancel(session, job_id, owner)
        return CANCELLED
    except BaseException as exc:
        heartbeat.stop()
        if not isinstance(exc, Exception):
            raise  # KeyboardInterrupt / SystemExit: the lease expires and the reaper re-queues
        _fail(services, job_id, stage, owner, exc)
        return FAILED
    finally:
        if not ended:  # the exception's traceback held the stage's frames (and models) until here
            release_memory()
    heartbeat.stop()
    result.metrics = {**result.metrics, "resources": {stage.value: used.figures}}
    try:
        return _finish_stage(services, job_id, stage, owner, request, result, kind)
    except StageFailed as exc:  # registration refused the result (e.g. weights missing)
        _fail(services, job_id, stage, owner, exc)
        return FAILED


def _record_crash(services: WorkerServices, job_id: str, stage: Stage, owner: str, exc: BaseException) -> None:
    """Best effort (the database may be what failed): remember why this attempt ended, for the error shown when
    the attempts run out. An `Exception` also gives the lease back and marks the hand-over unconfirmed, so the
    reaper re-queues the stage within seconds; anything else (the process is going down) leaves the lease to
    expire."""
    log.error("job %s stage %s: attempt crashed:\n%s", job_id, stage.value, traceback.format_exc())
    error = sanitise_error({"stage": stage.value, "kind": "crashed",
                            "message": f"{type(exc).__name__}: {exc}"[:500]}, services.settings)
    try:
        with session_scope(services.sessions) as session:
            stage_access.record_stage_error(session, job_id=job_id, stage=stage, error=error)
            if isinstance(exc, Exception) and lease_access.release_lease(session, job_id=job_id, owner=owner):
                lease_access.expect_enqueue(session, job_id=job_id)
    except Exception:
        log.warning("could not record the crash of job %s stage %s", job_id, stage.value, exc_info=True)


def _enqueue(services: WorkerServices, job_id: str, stage: Stage) -> bool:
    """Send the stage's message and confirm it (`enqueued_at`); False (logged) when the send failed: the job
    stays unconfirmed and the reaper sends it again."""
    try:
        services.enqueue(job_id, stage.value)
    except Exception:
        log.warning("enqueue of job %s stage %s failed; the reaper re-sends it", job_id, stage.value, exc_info=True)
        return False
    try:
        with session_scope(services.sessions) as session:
            lease_access.mark_enqueued(session, job_id=job_id)
    except Exception:  # unconfirmed: at worst one duplicate message, which is skipped
        log.warning("could not confirm the enqueue of job %s", job_id, exc_info=True)
    return True


def parse_request(kind: str, stored: dict[str, Any]) -> RealignRequest | EvalRequest:
    return EvalRequest.model_validate(stored) if kind == "eval" else RealignRequest.model_validate(stored)


def stored_request_invalid(exc: ValidationError) -> StageFailed:
    """The job's stored request no longer validates (written by an older version, e.g. with `judge.base_url`):
    the job fails at once with each field's reason; the stored values are never echoed (one may name a secret)."""
    reasons = "; ".join(f"{'.'.join(str(part) for part in e['loc']) or 'request'}: "
                        f"{e['msg'].removeprefix('Value error, ')}" for e in exc.errors(include_input=False))
    return StageFailed(f"this job's stored request is no longer accepted ({reasons}); submit it again",
                       kind="request_invalid")


def _finish_stage(services: WorkerServices, job_id: str, stage: Stage, owner: str,
                  request: RealignRequest | EvalRequest, result: StageResult, kind: str = "realign") -> str:
    following = next_stage(request, stage)
    with session_scope(services.sessions) as session:
        beat = lease_access.heartbeat(session, job_id=job_id, owner=owner, ttl_s=services.settings.lease_ttl_s)
        if not beat.held:
            return LEASE_LOST
        if result.triage_items:
            add_triage_items(session, job_id=job_id, items=result.triage_items)
        metrics = result.metrics
        if "resources" in metrics:  # one entry per stage: merged, not overwritten
            earlier = (load_job(session, job_id=job_id).metrics or {}).get("resources") or {}
            metrics = {**metrics, "resources": {**earlier, **metrics["resources"]}}
        set_job_results(session, job_id=job_id, metrics=metrics, artifacts=result.artifacts,
                        category_counts=result.category_counts)
        stage_access.complete_stage(session, job_id=job_id, stage=stage, summary=result.summary)
        target = STAGE_STATE[following] if following else JobState.SUCCEEDED
        if following is not None and awaits_review(request, stage):
            target, following = JobState.AWAITING_REVIEW, None  # parked: POST .../continue enqueues the rest
        if target == JobState.SUCCEEDED and kind == "realign":
            from worker.registration import register_job_adapter

            adapter = register_job_adapter(session, services.settings, job_id)
            set_job_results(session, job_id=job_id, artifacts={"adapter_id": adapter.id,
                                                               "adapter_name": adapter.name})
        try:
            transition_job(session, job_id=job_id, to_state=target)
        except InvalidTransition:  # cancel arrived between the last heartbeat and now
            session.rollback()
            _finish_cancel(session, job_id, owner)
            return CANCELLED
        lease_access.release_lease(session, job_id=job_id, owner=owner)
        if following is not None:
            lease_access.expect_enqueue(session, job_id=job_id)
    if following is not None:
        _enqueue(services, job_id, following)  # if lost, the reaper re-sends it within `enqueue_grace_s`
    return DONE


def awaits_review(request: RealignRequest | EvalRequest, finished: Stage) -> bool:
    """A job created with `review: true` stops after triage for a person to check the categories."""
    return isinstance(request, RealignRequest) and request.review and finished == Stage.TRIAGE


def _finish_cancel(session: Session, job_id: str, owner: str) -> None:
    with contextlib.suppress(InvalidTransition):  # already terminal
        transition_job(session, job_id=job_id, to_state=JobState.CANCELLED)
    lease_access.release_lease(session, job_id=job_id, owner=owner)


def _fail(services: WorkerServices, job_id: str, stage: Stage, owner: str, exc: Exception) -> None:
    if isinstance(exc, StageFailed):
        error: dict[str, Any] = {"stage": stage.value, "kind": exc.kind, "message": str(exc), **exc.details}
    else:
        log.error("job %s stage %s crashed:\n%s", job_id, stage.value, traceback.format_exc())
        error = {"stage": stage.value, "kind": "internal_error", "message": f"{type(exc).__name__}: {exc}"}
    error = sanitise_error(error, services.settings)  # no secrets, server paths or long remote bodies
    with session_scope(services.sessions) as session:
        add_event(session, job_id=job_id, type=EventType.ERROR, stage=stage, data=error)
        with contextlib.suppress(InvalidTransition):
            transition_job(session, job_id=job_id, to_state=JobState.FAILED, error=error)
        lease_access.release_lease(session, job_id=job_id, owner=owner)


def _event(services: WorkerServices, job_id: str, stage: Stage, type: EventType, data: dict[str, Any]) -> None:
    with session_scope(services.sessions) as session:
        add_event(session, job_id=job_id, type=type, stage=stage, data=data)


def _lookup_adapter(services: WorkerServices, tenant_id: str, id_or_name: str) -> dict[str, Any] | None:
    with session_scope(services.sessions) as session:
        adapter = find_adapter(session, tenant_id=tenant_id, id_or_name=id_or_name)
        if adapter is None:
            return None
        return {"id": adapter.id, "name": adapter.name, "path": adapter.path, "sha256": adapter.sha256,
                "provenance": dict(adapter.provenance or {})}


def _file_format(session: Session, tenant_id: str, request: RealignRequest) -> str | None:
    if not isinstance(request.dataset, FileDataset):
        return None
    try:
        return get_file(session, tenant_id=tenant_id, file_id=request.dataset.file_id).format
    except NotFound:
        return None


def reap_once(services: WorkerServices) -> int:
    """Re-queue every live job nobody works on (see `lease_access.claim_requeues`); returns how many."""
    with session_scope(services.sessions) as session:
        claimed = lease_access.claim_requeues(session, older_than_s=services.settings.requeue_after_s,
                                              enqueue_grace_s=services.settings.enqueue_grace_s,
                                              max_attempts=services.settings.stage_max_attempts)
        for item in claimed:
            if item.stage is None:
                _finish_cancel(session, item.job_id, owner="")
    for item in claimed:
        if item.stage is not None and not item.failed:
            _enqueue(services, item.job_id, item.stage)
    if claimed:
        log.info("reaper re-queued %s", [(c.job_id, c.stage and c.stage.value, c.reason) for c in claimed])
    return len(claimed)


class Reaper(threading.Thread):
    """Runs `reap_once` every `reaper_interval_s` until stopped (one per worker process; they do not collide)."""

    def __init__(self, services: WorkerServices) -> None:
        super().__init__(name="realign-reaper", daemon=True)
        self.services = services
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(self.services.settings.reaper_interval_s):
            try:
                reap_once(self.services)
            except Exception:
                log.warning("reaper pass failed", exc_info=True)


class WorkerBeat(threading.Thread):
    """Records every `worker_heartbeat_interval_s` that this worker process is alive and which queues it
    consumes (`/readyz` counts live workers per queue); `stop()` removes the row (a warm shutdown is seen at
    once, a killed worker's row goes stale after `worker_stale_after_s`)."""

    def __init__(self, services: WorkerServices, name: str, hostname: str, pid: int, queues: list[str]) -> None:
        super().__init__(name="realign-worker-beat", daemon=True)
        self.services, self.worker_name, self.hostname, self.pid, self.queues = services, name, hostname, pid, queues
        self.stop_event = threading.Event()

    def beat(self) -> None:
        with session_scope(self.services.sessions) as session:
            record_worker(session, name=self.worker_name, hostname=self.hostname, pid=self.pid,
                          queues=self.queues)

    def run(self) -> None:
        while True:
            try:
                self.beat()
            except Exception:  # the database is down: /readyz says so anyway; try again next period
                log.warning("worker heartbeat failed", exc_info=True)
            if self.stop_event.wait(self.services.settings.worker_heartbeat_interval_s):
                return

    def stop(self) -> None:
        self.stop_event.set()
        if self.is_alive():
            self.join(timeout=5)
        try:
            with session_scope(self.services.sessions) as session:
                remove_worker(session, name=self.worker_name)
        except Exception:
            log.warning("could not remove worker %s's heartbeat row", self.worker_name, exc_info=True)
