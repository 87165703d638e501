"""`/readyz?require_workers=true` reflects live workers per queue (issue 10: a judge worker had exited and
`/readyz` stayed "ok" while jobs waited forever). Workers heart-beat through `worker.runner.WorkerBeat` (what
`celery worker` starts on `worker_ready`); a warm shutdown removes its row at once, a killed worker's row goes
stale after `worker_stale_after_s`."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from core.db.access.workers import record_worker
from core.db.engine import session_scope
from core.settings import Settings

from .support import RecordingEnqueuer, assert_problem

STALE_AFTER_S = 1.0


@pytest.fixture
def ready_client(settings: Settings) -> Iterator[TestClient]:
    prefix = f"rz{secrets.token_hex(4)}."  # this test's queues: other tests' workers are not counted
    app = create_app(settings.model_copy(update={"queue_prefix": prefix, "worker_stale_after_s": STALE_AFTER_S,
                                                 "worker_heartbeat_interval_s": 0.1}), RecordingEnqueuer())
    with TestClient(app) as client:
        yield client
    app.state.engine.dispose()


def ready(client: TestClient) -> Any:
    return client.get("/readyz", params={"require_workers": "true"})


def wait_until(client: TestClient, status: int, workers: dict[str, int], timeout: float = 5.0) -> Any:
    """Poll `/readyz?require_workers=true` until it answers `status` with these live-worker counts."""
    deadline = time.monotonic() + timeout
    while True:
        response = ready(client)
        body = response.json()
        if response.status_code == status and body.get("workers") == workers:
            return response
        assert time.monotonic() < deadline, f"/readyz stayed {response.status_code}: {response.text}"
        time.sleep(0.05)


def test_readiness_follows_live_workers_per_queue(ready_client: TestClient) -> None:
    client = ready_client
    app = client.app
    problem = assert_problem(ready(client), 503)  # no worker at all
    assert problem["workers"] == {"judge": 0, "gpu": 0}
    assert "no live judge worker" in problem["detail"] and "no live gpu worker" in problem["detail"]
    plain = client.get("/readyz")  # without the flag, missing workers are reported, not fatal
    assert plain.status_code == 200 and plain.json()["workers"] == {"judge": 0, "gpu": 0}

    from worker.runner import WorkerBeat, WorkerServices

    services = WorkerServices(app.state.settings, app.state.sessions, RecordingEnqueuer())  # type: ignore[attr-defined]
    prefix = app.state.settings.queue_prefix  # type: ignore[attr-defined]
    judge = WorkerBeat(services, "judge@test:1", "test", 1, [prefix + "judge"])
    gpu = WorkerBeat(services, "gpu@test:2", "test", 2, [prefix + "gpu"])
    try:
        judge.start()
        problem = assert_problem(wait_until(client, 503, {"judge": 1, "gpu": 0}), 503)
        assert "no live gpu worker" in problem["detail"] and "judge" not in problem["detail"]

        gpu.start()
        assert wait_until(client, 200, {"judge": 1, "gpu": 1}).json()["status"] == "ok"

        gpu.stop()  # a warm shutdown: gone at once
        assert assert_problem(ready(client), 503)["workers"] == {"judge": 1, "gpu": 0}
    finally:
        judge.stop()
        gpu.stop()

    with session_scope(app.state.sessions) as session:  # type: ignore[attr-defined]
        for name, queue in (("judge@test:3", "judge"), ("gpu@test:4", "gpu")):  # then both are SIGKILLed
            record_worker(session, name=name, hostname="test", pid=3, queues=[prefix + queue])
    assert ready(client).status_code == 200
    time.sleep(STALE_AFTER_S + 0.2)
    assert assert_problem(ready(client), 503)["workers"] == {"judge": 0, "gpu": 0}
