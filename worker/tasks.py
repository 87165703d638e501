"""One thin Celery task per stage: take the job id, run the stage under its lease (`worker.runner`).

The worker process builds its database engine once (`services()`: a bounded pool, `worker_db_pool_size` +
`worker_db_max_overflow` connections at most), and while it is up runs the reaper thread and the worker
heartbeat (`/readyz` counts live workers per queue from it).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

from celery import Task
from celery.signals import worker_ready, worker_shutdown

from core.celery_app import CeleryEnqueuer, make_celery, task_name
from core.db.engine import make_service_engine, make_session_factory, upgrade_head
from core.db.states import Stage
from core.settings import Settings
from worker.runner import Reaper, WorkerBeat, WorkerServices, run_stage

log = logging.getLogger(__name__)
app = make_celery(Settings())  # `celery -A worker.tasks worker ...` loads this app, configured from REALIGN_*
_lock = threading.Lock()
_services: WorkerServices | None = None
_reaper: Reaper | None = None
_beat: WorkerBeat | None = None


def services() -> WorkerServices:
    """This process's engine, session factory and enqueuer (created on first use)."""
    global _services
    with _lock:
        if _services is None:
            settings: Settings = app.conf.realign_settings
            engine = make_service_engine(settings, role="worker")
            if settings.run_migrations:
                upgrade_head(engine)
            _services = WorkerServices(settings, make_session_factory(engine), CeleryEnqueuer(app))
        return _services


def owner_id(task_id: str | None) -> str:
    """The lease owner: which process on which host runs which task."""
    return f"{socket.gethostname()}:{os.getpid()}:{task_id or 'direct'}"


def _run(task: Task, job_id: str, stage: Stage) -> str:
    outcome = run_stage(services(), job_id, stage, owner_id(task.request.id))
    log.info("job %s stage %s: %s", job_id, stage.value, outcome)
    return outcome


@app.task(name=task_name(Stage.VALIDATE), bind=True)
def validate(self: Task, job_id: str) -> str:
    return _run(self, job_id, Stage.VALIDATE)


@app.task(name=task_name(Stage.TRIAGE), bind=True)
def triage(self: Task, job_id: str) -> str:
    return _run(self, job_id, Stage.TRIAGE)


@app.task(name=task_name(Stage.SCORE), bind=True)
def score(self: Task, job_id: str) -> str:
    return _run(self, job_id, Stage.SCORE)


@app.task(name=task_name(Stage.TRAIN), bind=True)
def train(self: Task, job_id: str) -> str:
    return _run(self, job_id, Stage.TRAIN)


@app.task(name=task_name(Stage.EVALUATE), bind=True)
def evaluate(self: Task, job_id: str) -> str:
    return _run(self, job_id, Stage.EVALUATE)


def warm_imports() -> None:
    """Import the engine before the first message, so a job's first stage does not pay for torch's import."""
    import trace_engine.scoring  # noqa: F401
    import trace_engine.triage.stage  # noqa: F401


def consumed_queues(consumer: Any) -> list[str]:
    """The broker queues this worker consumes (`-Q`), from the consumer `worker_ready` hands over."""
    try:
        return sorted(queue.name for queue in consumer.task_consumer.queues)
    except AttributeError:
        return sorted(consumer.app.amqp.queues.consume_from or app.amqp.queues)


@worker_ready.connect
def _start_reaper(sender: Any = None, **_: Any) -> None:
    global _reaper, _beat
    warm_imports()
    if _reaper is None:
        _reaper = Reaper(services())
        _reaper.start()
    if _beat is None and sender is not None:
        name = f"{getattr(sender, 'hostname', None) or socket.gethostname()}:{os.getpid()}"
        _beat = WorkerBeat(services(), name, socket.gethostname(), os.getpid(), consumed_queues(sender))
        _beat.start()


@worker_shutdown.connect
def _stop_reaper(**_: Any) -> None:
    if _reaper is not None:
        _reaper.stop_event.set()
    if _beat is not None:
        _beat.stop()
