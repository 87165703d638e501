"""Server-sent events: history after Last-Event-ID, live events from a real uvicorn server on loopback, and the
stream ending once the job is finished."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from core.db.access.jobs import load_job, request_cancel, transition_job
from core.db.access.stages import complete_stage, record_progress, start_stage
from core.db.engine import session_scope
from core.db.states import JobState, Stage

from .support import Harness, assert_problem, realign_body

SSE = {"Accept": "text/event-stream"}


def parse_sse(text: str) -> list[dict[str, str]]:
    frames = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith(":") or ": " not in line:
                continue
            name, value = line.split(": ", 1)
            fields[name] = value
        if "event" in fields:
            frames.append(fields)
    return frames


def finished_job(h: Harness) -> str:
    job_id = h.client.post("/v1/realign", json=realign_body(), headers=h.headers).json()["id"]
    with session_scope(h.sessions) as session:
        start_stage(session, job_id=job_id, stage=Stage.VALIDATE, total=1)
        complete_stage(session, job_id=job_id, stage=Stage.VALIDATE)
        transition_job(session, job_id=job_id, to_state=JobState.FAILED, error={"message": "no judge"})
    return job_id


def test_sse_replays_history_and_ends_for_a_finished_job(harness: Harness) -> None:
    job_id = finished_job(harness)
    response = harness.client.get(f"/v1/jobs/{job_id}/events", headers={**harness.headers, **SSE})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    frames = parse_sse(response.text)
    assert [f["event"] for f in frames] == ["state_changed", "state_changed", "stage_started", "stage_completed",
                                            "state_changed"]
    assert '"to":"failed"' in frames[-1]["data"]
    resumed = harness.client.get(f"/v1/jobs/{job_id}/events",
                                 headers={**harness.headers, **SSE, "Last-Event-ID": frames[2]["id"]})
    assert [f["id"] for f in parse_sse(resumed.text)] == [f["id"] for f in frames[3:]]
    assert_problem(harness.client.get(f"/v1/jobs/{job_id}/events",
                                      headers={**harness.headers, **SSE, "Last-Event-ID": "x"}), 400)


@pytest.fixture
def live_server(harness: Harness) -> Iterator[str]:
    """The harness app served by uvicorn on a free loopback port."""
    server = uvicorn.Server(uvicorn.Config(harness.app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_live_sse_over_a_real_server_streams_until_terminal(harness: Harness, live_server: str) -> None:
    with httpx.Client(base_url=live_server, headers=harness.headers, timeout=10) as client:
        job_id = client.post("/v1/realign", json=realign_body()).json()["id"]
        received: list[dict[str, str]] = []
        with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=SSE) as stream:
            buffer = ""
            for chunk in stream.iter_text():
                buffer += chunk
                received = parse_sse(buffer)
                if len(received) == 1:  # the job is live: move it while we listen
                    threading.Thread(target=_drive_job, args=(harness, job_id), daemon=True).start()
        # the loop ends only because the server closed the stream after the terminal state
        assert [f["event"] for f in received] == ["state_changed", "state_changed", "stage_started", "progress",
                                                  "state_changed", "cancel_requested", "state_changed"]
        assert '"to":"cancelled"' in received[-1]["data"]
        assert client.get(f"/v1/jobs/{job_id}").json()["state"] == "cancelled"


def _drive_job(h: Harness, job_id: str) -> None:
    def step(action: Any) -> None:
        time.sleep(0.1)
        with session_scope(h.sessions) as session:
            action(session)

    step(lambda s: start_stage(s, job_id=job_id, stage=Stage.VALIDATE, total=2))
    step(lambda s: record_progress(s, job_id=job_id, stage=Stage.VALIDATE, done=1))
    step(lambda s: request_cancel(s, tenant_id=_tenant(s, job_id), job_id=job_id))
    step(lambda s: transition_job(s, job_id=job_id, to_state=JobState.CANCELLED))


def _tenant(session: Any, job_id: str) -> str:
    return load_job(session, job_id=job_id).tenant_id
