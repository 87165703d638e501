"""Per-tenant quotas on submissions (issue 10): live jobs per tenant (`max_active_jobs_per_tenant`) and jobs +
uploads per sliding minute (`max_submissions_per_minute`); past either, 429 with `Retry-After`. Each tenant has its
own budget; an idempotent replay is not a new submission."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from core.db.access.tenants import create_api_key
from core.db.engine import session_scope
from core.settings import Settings

from .support import Harness, RecordingEnqueuer, assert_problem, realign_body


def quota_harness(settings: Settings, **limits: int) -> Iterator[Harness]:
    limited = settings.model_copy(update=limits)
    enqueuer = RecordingEnqueuer()
    app = create_app(limited, enqueuer)

    def new_headers(tenant: str) -> dict[str, str]:
        with session_scope(app.state.sessions) as session:
            key = create_api_key(session, tenant_name=f"{tenant}-{secrets.token_hex(4)}")
        return {"Authorization": f"Bearer {key}"}

    with TestClient(app) as client:
        yield Harness(app, client, limited, enqueuer, new_headers("quota"), new_headers)
    app.state.engine.dispose()


@pytest.fixture
def active_limited(settings: Settings) -> Iterator[Harness]:
    yield from quota_harness(settings, max_active_jobs_per_tenant=2, max_submissions_per_minute=0)


@pytest.fixture
def rate_limited(settings: Settings) -> Iterator[Harness]:
    yield from quota_harness(settings, max_active_jobs_per_tenant=0, max_submissions_per_minute=3)


def submit(h: Harness, headers: dict[str, str] | None = None, **extra: str) -> Any:
    return h.client.post("/v1/realign", json=realign_body(), headers={**(headers or h.headers), **extra})


def upload(h: Harness) -> Any:
    row = b'{"id": "p1", "prompt": "hi", "chosen": "hello", "rejected": "go away"}\n'
    return h.client.post("/v1/files", headers=h.headers, files={"file": ("pairs.jsonl", row)})


def retry_after(response: Any) -> int:
    seconds = int(response.headers["Retry-After"])
    assert 1 <= seconds <= 60, seconds
    return seconds


def test_live_jobs_per_tenant_are_limited(active_limited: Harness) -> None:
    h = active_limited
    first, second = (submit(h) for _ in range(2))
    assert first.status_code == second.status_code == 202, (first.text, second.text)

    refused = submit(h)
    problem = assert_problem(refused, 429)
    assert "2 unfinished jobs" in problem["detail"]
    retry_after(refused)
    assert len(h.enqueuer.calls) == 2  # nothing was created or queued for the refused one

    assert submit(h, h.new_headers("other")).status_code == 202  # another tenant has its own budget
    cancelled = h.client.post(f"/v1/jobs/{first.json()['id']}/cancel", headers=h.headers)
    assert cancelled.status_code == 202 and cancelled.json()["state"] == "cancelled"
    assert submit(h).status_code == 202  # a finished job frees its slot


def test_submissions_per_minute_are_limited(rate_limited: Harness) -> None:
    h = rate_limited
    assert submit(h, **{"Idempotency-Key": "k-1"}).status_code == 202
    assert submit(h).status_code == 202
    assert upload(h).status_code == 201  # uploads count too: 3 in this minute

    for refused in (submit(h), upload(h)):
        problem = assert_problem(refused, 429)
        assert "3 submissions in a minute" in problem["detail"]
        retry_after(refused)
    replay = submit(h, **{"Idempotency-Key": "k-1"})  # the same submission again: not a new one
    assert replay.status_code == 202 and replay.headers.get("Idempotent-Replayed") == "true"
    assert submit(h, h.new_headers("other")).status_code == 202
