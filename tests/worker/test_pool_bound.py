"""A worker process (`worker.tasks.services()`, shared by all its pool threads) holds at most
`worker_db_pool_size + worker_db_max_overflow` Postgres connections, counted by Postgres (`pg_stat_activity`)."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from sqlalchemy import text

from core.db.engine import session_scope
from core.settings import Settings
from tests.support.postgres import peak_connections

POOL_SIZE, MAX_OVERFLOW, USERS = 2, 1, 8


def test_a_threads_worker_shares_a_bounded_pool(tmp_path: Path, worker_postgres_url: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from worker import tasks

    name = f"realign-worker-pool-{secrets.token_hex(4)}"
    settings = Settings(data_dir=tmp_path / "state", database_url=f"{worker_postgres_url}?application_name={name}",
                        worker_db_pool_size=POOL_SIZE, worker_db_max_overflow=MAX_OVERFLOW,
                        db_application_name=name, db_pool_timeout_s=30.0)
    monkeypatch.setitem(tasks.app.conf, "realign_settings", settings)  # as `celery worker` configures it
    monkeypatch.setattr(tasks, "_services", None)
    services = tasks.services()
    engine = services.sessions.kw["bind"]
    engine.dispose()

    def one_task() -> None:  # what a stage thread does: one session at a time
        with session_scope(services.sessions) as session:
            session.execute(text("SELECT pg_sleep(0.3)"))

    try:
        peak = peak_connections(name, USERS, one_task)
    finally:
        engine.dispose()
    assert peak <= POOL_SIZE + MAX_OVERFLOW, f"{peak} connections for {USERS} concurrent stage threads"
    assert peak == POOL_SIZE + MAX_OVERFLOW
