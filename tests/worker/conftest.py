"""Worker tests run the real runner against a real database: SQLite per test and a fresh Postgres database per
session (skipped when no Postgres is reachable)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from core.db.access.jobs import create_job
from core.db.access.tenants import get_or_create_tenant
from core.db.engine import make_engine, make_session_factory, session_scope, upgrade_head
from core.jobspec import RealignRequest
from core.settings import Settings
from tests.support.postgres import fresh_postgres_database
from worker.runner import WorkerServices


@dataclass
class QueueRecorder:
    """The enqueue callable: remembers (job id, stage) in order."""

    calls: list[tuple[str, str]] = field(default_factory=list)

    def __call__(self, job_id: str, stage: str) -> None:
        self.calls.append((job_id, stage))


@pytest.fixture(scope="session")
def worker_postgres_url() -> Iterator[str]:
    """A fresh database for this test session, dropped at the end."""
    with fresh_postgres_database("realign_worker") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def services(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[WorkerServices]:
    url = request.getfixturevalue("worker_postgres_url") if request.param == "postgres" else None
    settings = Settings(data_dir=tmp_path / "state", database_url=url, lease_ttl_s=2.0, heartbeat_interval_s=0.1,
                        progress_interval_s=0.0, requeue_after_s=60.0)
    engine = make_engine(settings.sqlalchemy_url)
    upgrade_head(engine)
    if url is not None:  # the session's Postgres database is shared: no test sees another's jobs (the reaper would)
        with engine.begin() as connection:
            connection.execute(text("TRUNCATE TABLE jobs, worker_heartbeats RESTART IDENTITY CASCADE"))
    yield WorkerServices(settings, make_session_factory(engine), QueueRecorder())
    engine.dispose()


def new_job(services: WorkerServices, body: dict[str, Any]) -> str:
    with session_scope(services.sessions) as session:
        tenant = get_or_create_tenant(session, name=f"t-{secrets.token_hex(3)}")
        request = RealignRequest.model_validate(body).model_dump(mode="json")
        job, _ = create_job(session, tenant_id=tenant.id, request=request, body_hash=secrets.token_hex(8))
        return job.id


def synthetic_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "policy": {"text": "# New policy\n## [P1] Be kind\nRefuse insults.\n", "name": "new"},
        "dataset": {"type": "synthetic", "seed": 0, "n": 16},
        "base_model": {"name_or_path": "synthetic-tiny"},
        "judge": {"provider": "synthetic"},
        "method": {"variant": "trace"},
    }
    body.update(overrides)
    return body
