"""Fixtures for the service tests: a real Postgres database per session (and SQLite per test), a recording
enqueuer, and an app + TestClient + API key per test. Each test runs on both backends."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from core.db.access.tenants import create_api_key
from core.db.engine import session_scope
from core.settings import Settings
from tests.support.postgres import fresh_postgres_database

from .support import Harness, RecordingEnqueuer, realign_body


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh database for this test session, dropped at the end."""
    with fresh_postgres_database("realign_test") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    database_url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    return Settings(data_dir=tmp_path / "state", database_url=database_url, sse_poll_interval_s=0.05,
                    max_upload_bytes=64 * 1024)


@pytest.fixture
def harness(settings: Settings) -> Iterator[Harness]:
    enqueuer = RecordingEnqueuer()
    app = create_app(settings, enqueuer)

    def new_headers(tenant: str) -> dict[str, str]:
        with session_scope(app.state.sessions) as session:
            key = create_api_key(session, tenant_name=f"{tenant}-{secrets.token_hex(4)}")
        return {"Authorization": f"Bearer {key}"}

    with TestClient(app) as client:
        yield Harness(app, client, settings, enqueuer, new_headers("acme"), new_headers)
    app.state.engine.dispose()


@pytest.fixture
def body() -> dict[str, Any]:
    return realign_body()
