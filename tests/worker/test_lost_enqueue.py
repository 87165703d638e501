"""A job whose next message never reached the broker (the send failed, or its sender died first) is sent again
within seconds, not after `requeue_after_s` (issue 10: a lost enqueue cost 120 s). The reaper on a real database
with the production timings (requeue after 120 s, enqueue grace 5 s)."""

from __future__ import annotations

import secrets
import time

from fastapi.testclient import TestClient

from api.app import create_app
from core.db.access.jobs import load_job
from core.db.access.tenants import create_api_key
from core.db.engine import session_scope
from core.db.states import JobState, Stage
from worker import runner

from .conftest import QueueRecorder, new_job, synthetic_body

PRODUCTION_REQUEUE_AFTER_S = 120.0
WITHIN_S = 10.0  # "seconds": the default grace (5 s) plus a reaper pass or two, far below 120 s


def broker_down(job_id: str, stage: str) -> None:
    raise ConnectionError("broker down")


def production_timings(services: runner.WorkerServices, enqueue: runner.Enqueue) -> runner.WorkerServices:
    settings = services.settings.model_copy(update={"requeue_after_s": PRODUCTION_REQUEUE_AFTER_S})
    return runner.WorkerServices(settings, services.sessions, enqueue)


def seconds_until_resent(services: runner.WorkerServices, expected: tuple[str, str]) -> float:
    """Run the reaper (every 0.2 s) until it sends `expected` (job id, stage); fails after `WITHIN_S`."""
    started = time.monotonic()
    while expected not in services.enqueue.calls:  # type: ignore[attr-defined]
        waited = time.monotonic() - started
        assert waited < WITHIN_S, f"not re-sent within {WITHIN_S:g} s (sent: {services.enqueue.calls})"  # type: ignore[attr-defined]
        runner.reap_once(services)
        time.sleep(0.2)
    return time.monotonic() - started


def test_a_lost_hand_over_is_resent_within_seconds(services: runner.WorkerServices) -> None:
    job_id = new_job(services, synthetic_body())
    sender = production_timings(services, broker_down)
    assert runner.run_stage(sender, job_id, Stage.VALIDATE, "w1") == runner.DONE  # triage's message is lost
    with session_scope(services.sessions) as session:
        assert load_job(session, job_id=job_id).state == JobState.TRIAGING.value

    reaper = production_timings(services, QueueRecorder())
    seconds_until_resent(reaper, (job_id, Stage.TRIAGE.value))
    for _ in range(3):  # sent once: the re-sent message is confirmed, the next passes leave the job alone
        runner.reap_once(reaper)
    assert reaper.enqueue.calls == [(job_id, Stage.TRIAGE.value)]  # type: ignore[attr-defined]


def test_a_submission_whose_enqueue_failed_is_resent_within_seconds(services: runner.WorkerServices) -> None:
    """POST /v1/realign while the broker refuses: 202 (the job is committed), and the reaper sends it."""
    app = create_app(services.settings, broker_down)
    with session_scope(app.state.sessions) as session:
        key = create_api_key(session, tenant_name=f"lost-{secrets.token_hex(3)}")
    with TestClient(app) as client:
        response = client.post("/v1/realign", json=synthetic_body(), headers={"Authorization": f"Bearer {key}"})
    app.state.engine.dispose()
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]

    reaper = production_timings(services, QueueRecorder())
    seconds_until_resent(reaper, (job_id, Stage.VALIDATE.value))
    assert reaper.enqueue.calls == [(job_id, Stage.VALIDATE.value)]  # type: ignore[attr-defined]

