"""A judge-shaped worker (`--pool threads`, the project's Celery configuration) survives a Redis restart while a
task is in flight, and takes the next task afterwards (issue 10: with kombu 5.7 it exited with "Unrecoverable
error ... 'hostname'"; `core.broker.RedisTransport` is the fix). Its own redis-server on a free loopback port."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from core.celery_app import JUDGE_QUEUE, make_celery
from core.settings import Settings
from tests.support.servers import RedisServer, wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
HOLD = "realign.test.hold"


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    reason = RedisServer.unavailable_reason()
    if reason:
        pytest.skip(reason)
    with RedisServer.create(tmp_path / "redis") as server:  # killed on exit, also when the test fails
        yield server


@dataclass
class ThreadsWorker:
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None


@pytest.fixture
def settings(tmp_path: Path, own_redis: RedisServer) -> Settings:
    return Settings(data_dir=tmp_path / "state", broker_url=own_redis.url, queue_prefix=f"bl{secrets.token_hex(4)}.")


@pytest.fixture
def worker(tmp_path: Path, settings: Settings) -> Iterator[ThreadsWorker]:
    """`celery worker --pool threads` as compose runs the judge worker, on this test's app, Redis and queue."""
    env = dict(os.environ, REALIGN_BROKER_URL=str(settings.broker_url), REALIGN_QUEUE_PREFIX=settings.queue_prefix,
               REALIGN_DATA_DIR=str(settings.data_dir),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    log_path = tmp_path / "worker.log"
    command = [sys.executable, "-m", "celery", "-A", "tests.worker.broker_loss_app", "worker",
               "-Q", settings.queue_prefix + JUDGE_QUEUE, "--pool", "threads", "-c", "4", "--loglevel", "INFO",
               "-n", f"judge-{secrets.token_hex(3)}@%h"]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    worker = ThreadsWorker(process, log_path)
    try:
        wait_for(lambda: " ready." in worker.log() or not worker.alive(), 60, "worker ready", poll=0.1)
        assert worker.alive(), f"worker exited at start:\n{worker.log()[-3000:]}"
        yield worker
    finally:
        if worker.alive():
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def test_threads_worker_survives_a_redis_restart_during_a_task(tmp_path: Path, settings: Settings,
                                                               own_redis: RedisServer,
                                                               worker: ThreadsWorker) -> None:
    app = make_celery(settings)
    queue = settings.queue_prefix + JUDGE_QUEUE
    first, later = str(tmp_path / "first"), str(tmp_path / "later")
    # long enough that the consumer reconnects before the task ends: its late ack then meets the new connection
    app.send_task(HOLD, args=[first, 6.0], queue=queue)
    wait_for(lambda: Path(first + ".started").exists(), 20, "first task started")

    own_redis.restart(down_s=1.0)  # SIGTERM, 1 s down, same port and data (appendonly, as compose runs it)

    wait_for(lambda: Path(first + ".done").exists() or not worker.alive(), 20, "first task done")
    wait_for(lambda: "Connected to " in worker.log().split("Connection to broker lost")[-1]
             or not worker.alive(), 30, "worker reconnected")
    assert worker.alive(), f"the worker exited after the broker restart:\n{worker.log()[-3000:]}"
    assert Path(first + ".done").exists(), "the in-flight task did not finish"

    app.send_task(HOLD, args=[later, 0.0], queue=queue)
    wait_for(lambda: Path(later + ".done").exists() or not worker.alive(), 30, "later task done")
    assert worker.alive() and Path(later + ".done").exists(), worker.log()[-3000:]
    assert "Unrecoverable error" not in worker.log()
    app.close()
