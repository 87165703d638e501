"""Auth (401 problems), generic 404/405 problems, /healthz, /readyz (broker check injected), /metrics."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.app import create_app
from api.auth import Principal, PrincipalCache
from core.db.access.tenants import hash_key
from core.db.engine import session_scope
from core.db.models import ApiKey, utcnow
from core.settings import Settings

from .support import Harness, RecordingEnqueuer, assert_problem, realign_body


@pytest.mark.parametrize("header", [None, "Bearer", "Basic dXNlcjpwYXNz", "Bearer rk_nothere_xxx",
                                    "Bearer not-a-key"])
def test_missing_or_invalid_key_is_401(harness: Harness, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    problem = assert_problem(harness.client.get("/v1/jobs", headers=headers), 401)
    assert "authorization" in problem["detail"].lower() or "api key" in problem["detail"].lower()


def test_wrong_secret_with_a_real_prefix_and_revoked_keys_are_401(harness: Harness) -> None:
    token = harness.headers["Authorization"].removeprefix("Bearer ")
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert_problem(harness.client.get("/v1/jobs", headers={"Authorization": f"Bearer {forged}"}), 401)
    assert harness.client.get("/v1/jobs", headers=harness.headers).status_code == 200
    with session_scope(harness.sessions) as session:
        for key in session.query(ApiKey).all():
            key.revoked_at = utcnow()
    assert harness.client.get("/v1/jobs", headers=harness.headers).status_code == 200  # trusted for the cache TTL
    harness.app.state.principal_cache.clear()
    assert_problem(harness.client.get("/v1/jobs", headers=harness.headers), 401)


def test_principal_cache_expires_and_never_caches_failures() -> None:
    cache = PrincipalCache(ttl_s=0.05)
    cache.put("h", Principal("ten_1", "acme"))
    assert cache.get("h") == Principal("ten_1", "acme") and cache.get("other") is None
    time.sleep(0.06)
    assert cache.get("h") is None
    disabled = PrincipalCache(ttl_s=0)
    disabled.put("h", Principal("ten_1", "acme"))
    assert disabled.get("h") is None


def test_keys_are_stored_hashed(harness: Harness) -> None:
    token = harness.headers["Authorization"].removeprefix("Bearer ")
    with harness.sessions() as session:
        stored = session.query(ApiKey).all()
        assert all(token not in (k.key_hash, k.prefix) for k in stored)
        assert hash_key(token) in {k.key_hash for k in stored}


def test_unknown_route_and_wrong_method_are_problems(harness: Harness) -> None:
    assert "no route" in assert_problem(harness.client.get("/v2/nothing"), 404)["detail"]
    assert_problem(harness.client.delete("/v1/jobs", headers=harness.headers), 405)


def test_health_and_metrics(harness: Harness) -> None:
    assert harness.client.get("/healthz").json()["status"] == "ok"
    assert harness.client.get("/readyz").json()["checks"] == {"database": "ok", "broker": "ok"}
    harness.settings.metrics_token = SecretStr("op-token")  # the operator's (tests/api/test_security.py)
    operator = {"Authorization": "Bearer op-token"}
    queued_before = _metric(harness.client.get("/metrics", headers=operator).text, 'realign_jobs{state="queued"}')
    harness.client.post("/v1/realign", json=realign_body(), headers=harness.headers)
    harness.client.get("/v1/jobs", headers=harness.headers)
    text = harness.client.get("/metrics", headers=operator).text
    assert _metric(text, 'realign_jobs{state="queued"}') == queued_before + 1  # the database is shared on Postgres
    assert _metric(text, "realign_jobs_submitted_total") == 1
    assert 'realign_http_requests_total{method="GET",route="/v1/jobs",status="200"} 1.0' in text
    assert "realign_http_request_duration_seconds_bucket" in text


def _metric(text: str, name: str) -> float:
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " ")]
    assert len(values) == 1, name
    return values[0]


def test_readyz_fails_when_the_broker_or_database_is_down(settings: Settings) -> None:
    def broker_down() -> None:
        raise ConnectionError("redis refused")

    app = create_app(settings, RecordingEnqueuer(), broker_check=broker_down)
    with TestClient(app) as client:
        problem = assert_problem(client.get("/readyz"), 503)
        assert problem["checks"] == {"database": "ok", "broker": "unreachable: ConnectionError"}
        app.state.engine.dispose()
        app.state.sessions.configure(bind=_dead_engine())
        problem = assert_problem(client.get("/readyz"), 503)
        assert problem["checks"]["database"].startswith("unreachable")


def _dead_engine():  # type: ignore[no-untyped-def]
    from core.db.engine import make_engine

    return make_engine("postgresql+psycopg://postgres@127.0.0.1:1/none", connect_args={"connect_timeout": 1})


def test_extra_routers_are_mounted_with_the_same_error_handling(settings: Settings) -> None:
    from fastapi import APIRouter

    extra = APIRouter()

    @extra.get("/v1/extra")
    def extra_route() -> dict[str, str]:
        return {"hello": "world"}

    app = create_app(settings, RecordingEnqueuer(), routers=[extra])
    with TestClient(app) as client:
        assert client.get("/v1/extra").json() == {"hello": "world"}
        assert_problem(client.post("/v1/extra"), 405)
    app.state.engine.dispose()
