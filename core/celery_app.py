"""The Celery app, configured from `core.settings.Settings` (design.md §7).

Queues: `judge` (validation and triage: I/O bound, run it with many threads) and `gpu` (scoring, training,
evaluation: one job per GPU, prefetch 1). Messages are JSON and carry only a job id (the task name is the stage).
`acks_late` + `reject_on_worker_lost` hand a message back when its worker dies; because a Redis "ack" is a
visibility timeout counted from delivery, correctness never depends on it: stage leases and the reaper do.

Broker: `REALIGN_BROKER_URL` (Redis in production); with none configured, kombu's `filesystem://` transport under
`<data_dir>/broker` (the embedded mode: no server at all).

A broker restart: the worker reconnects for as long as it takes (`broker_connection_max_retries=None`); running
stages keep running (`worker_cancel_long_running_tasks_on_connection_loss=False`: they are lease-protected and
write to Postgres, not Redis), and Redis uses `core.broker.RedisTransport`, which fixes the kombu defect that
made a threads-pool worker exit ("Unrecoverable error ... 'hostname'") when Redis dropped during a task.

    celery -A worker.tasks worker -Q judge --pool threads -c 32     # judge worker
    celery -A worker.tasks worker -Q gpu --pool solo -c 1           # one per GPU

This module stays light (no torch, no engine): the API imports it to enqueue; `worker.tasks` holds the tasks.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from core.db.states import Stage
from core.settings import Settings

REDIS_TRANSPORT = "core.broker:RedisTransport"  # kombu's Redis transport with the reconnect fix

JUDGE_QUEUE, GPU_QUEUE = "judge", "gpu"
STAGE_QUEUE: dict[Stage, str] = {
    Stage.VALIDATE: JUDGE_QUEUE,
    Stage.TRIAGE: JUDGE_QUEUE,
    Stage.SCORE: GPU_QUEUE,
    Stage.TRAIN: GPU_QUEUE,
    Stage.EVALUATE: GPU_QUEUE,
}
TASK_PREFIX = "realign.stage."


def task_name(stage: Stage | str) -> str:
    return TASK_PREFIX + Stage(stage).value


def queue_for(settings: Settings, stage: Stage | str) -> str:
    return settings.queue_prefix + STAGE_QUEUE[Stage(stage)]


def queue_list(settings: Settings) -> str:
    """The `-Q` argument of a worker that takes every stage."""
    return ",".join(settings.queue_prefix + q for q in (JUDGE_QUEUE, GPU_QUEUE))


def broker_url(settings: Settings) -> str:
    return settings.broker_url or "filesystem://"


def embedded_broker_options(settings: Settings) -> dict[str, Any]:
    """One folder is both the inbox and the outbox: every process on this machine shares the queue."""
    queue_dir = settings.embedded_broker_dir / "queue"
    processed = settings.embedded_broker_dir / "processed"
    control = settings.embedded_broker_dir / "control"  # kombu's default is ./control in the working directory
    for folder in (queue_dir, processed, control):
        folder.mkdir(parents=True, exist_ok=True)
    return {"data_folder_in": str(queue_dir), "data_folder_out": str(queue_dir),
            "processed_folder": str(processed), "control_folder": str(control), "store_processed": False,
            "polling_interval": settings.broker_poll_interval_s}


def make_celery(settings: Settings) -> Celery:
    app = Celery("realign", set_as_current=False)
    embedded = settings.broker_url is None
    transport_options: dict[str, Any] = (embedded_broker_options(settings) if embedded
                                         else {"visibility_timeout": 6 * 3600})
    url = broker_url(settings)
    app.conf.update(
        broker_url=url,
        # (rediss:// keeps kombu's own transport: kombu turns TLS on from that scheme name)
        broker_transport=REDIS_TRANSPORT if url.startswith("redis://") else None,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        broker_connection_retry=True,
        broker_connection_max_retries=None,  # a broker outage of any length: keep trying, never exit
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.queue_prefix + JUDGE_QUEUE,
        task_routes={task_name(stage): {"queue": queue_for(settings, stage)} for stage in STAGE_QUEUE},
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        enable_utc=True,
    )
    app.conf.realign_settings = settings
    return app


class CeleryEnqueuer:
    """`enqueue(job_id, stage)` for `api.app.create_app`: one message with the job id, on the stage's queue."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.settings: Settings = app.conf.realign_settings

    def __call__(self, job_id: str, stage: str) -> None:
        self.app.send_task(task_name(stage), args=[job_id], queue=queue_for(self.settings, stage))


def broker_check(app: Celery) -> Any:
    """`/readyz`'s broker probe: raises when the broker cannot be reached within ~2 s."""

    def check() -> None:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)

    return check
