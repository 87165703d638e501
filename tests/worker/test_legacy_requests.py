"""A job stored by older code with `judge.base_url` / `judge.api_key_secret` (fields removed in issue 10: a tenant
could point the judge at its own server and have the operator's key sent there). Reading it must not crash the
worker or the API: the worker fails the job at its next stage with a clear error (and never contacts the stored
URL); the API still shows it."""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from core.db.access.events import list_events
from core.db.access.jobs import create_job, load_job, transition_job
from core.db.access.tenants import authenticate, create_api_key
from core.db.engine import session_scope
from core.db.states import JobState, Stage
from worker import runner

from .conftest import synthetic_body

SECRET = "sk-legacy-secret-value-0123456789"


class Recorder(BaseHTTPRequestHandler):
    """The tenant's server the stored `base_url` points at: records every call, answers 401 at once."""

    calls: list[tuple[str, str | None]]

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.calls.append((self.path, self.headers.get("Authorization")))
        body = json.dumps({"error": {"message": "nope"}}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def tenant_server() -> Iterator[tuple[str, list[tuple[str, str | None]]]]:
    """(base URL, calls received) of a loopback server standing in for the tenant's."""
    calls: list[tuple[str, str | None]] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (Recorder,), {"calls": calls}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", calls
    finally:
        server.shutdown()
        server.server_close()


def legacy_job(services: runner.WorkerServices, base_url: str, state: str = "queued") -> tuple[str, str]:
    """(job id, API key of its tenant): the row written directly, as the older code left it
    (`RealignRequest.model_dump(mode="json")` with the fields since removed)."""
    judge = {"provider": "openai", "model": "gpt-x", "base_url": base_url, "api_key_secret": "LEGACY_JUDGE_KEY",
             "rules_path": None}
    with session_scope(services.sessions) as session:
        key = create_api_key(session, tenant_name=f"legacy-{secrets.token_hex(3)}")
        tenant = authenticate(session, key=key)
        assert tenant is not None
        job, _ = create_job(session, tenant_id=tenant.id, request=synthetic_body(judge=judge),
                            body_hash=secrets.token_hex(8))
        if state != "queued":
            transition_job(session, job_id=job.id, to_state=JobState.VALIDATING)
            transition_job(session, job_id=job.id, to_state=JobState(state))
        return job.id, key


@pytest.mark.parametrize(("state", "stage"), [("queued", Stage.VALIDATE), ("triaging", Stage.TRIAGE)])
def test_the_worker_fails_a_legacy_judge_job_clearly(services: runner.WorkerServices, monkeypatch: pytest.MonkeyPatch,
                                                     tenant_server: tuple[str, list[Any]], state: str,
                                                     stage: Stage) -> None:
    base_url, calls = tenant_server
    monkeypatch.setenv("LEGACY_JUDGE_KEY", SECRET)
    job_id, _ = legacy_job(services, base_url, state)
    outcome = runner.run_stage(services, job_id, stage, "w1")
    assert calls == [], f"the worker called the stored judge URL: {calls}"
    assert outcome == runner.FAILED  # neither raises (a crashed task, re-queued) nor goes on
    with session_scope(services.sessions) as session:
        job = load_job(session, job_id=job_id)
        events = list_events(session, tenant_id=job.tenant_id, job_id=job_id, limit=100)
    assert job.state == JobState.FAILED.value and job.lease_owner is None
    assert job.error["stage"] == stage.value and job.error["kind"] == "request_invalid", job.error
    message = job.error["message"]
    assert message.startswith("this job's stored request is no longer accepted (judge: judge.base_url, ")
    assert "judge profile" in message and message.endswith("submit it again")
    for leaked in (base_url.split("//")[1], SECRET, "LEGACY_JUDGE_KEY"):  # no stored value is echoed
        assert leaked not in str(job.error)
    assert [e.data["kind"] for e in events if e.type == "error"] == ["request_invalid"]
    assert services.enqueue.calls == []  # type: ignore[attr-defined]
    assert runner.reap_once(services) == 0  # nothing left to re-queue


def test_the_api_still_reads_a_legacy_judge_job(services: runner.WorkerServices,
                                               tenant_server: tuple[str, list[Any]]) -> None:
    job_id, key = legacy_job(services, tenant_server[0])
    assert runner.run_stage(services, job_id, Stage.VALIDATE, "w1") == runner.FAILED
    app = create_app(services.settings, services.enqueue)
    headers = {"Authorization": f"Bearer {key}"}
    try:
        with TestClient(app) as client:
            one = client.get(f"/v1/jobs/{job_id}", headers=headers)
            listed = client.get("/v1/jobs", headers=headers)
            events = client.get(f"/v1/jobs/{job_id}/events", headers=headers)
    finally:
        app.state.engine.dispose()
    assert one.status_code == listed.status_code == events.status_code == 200, (one.text, listed.text)
    shown: dict[str, Any] = one.json()
    assert shown["state"] == "failed" and shown["error"]["kind"] == "request_invalid"
    assert [j["id"] for j in listed.json()["data"]] == [job_id]
