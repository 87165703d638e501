"""An API process holds at most `db_pool_size + db_max_overflow` Postgres connections however many requests run
at once (issue 10: a bounded pool per process, so N replicas stay under `max_connections`); counted by Postgres
itself (`pg_stat_activity`, by the `application_name` the process sets)."""

from __future__ import annotations

import secrets
from pathlib import Path

from sqlalchemy import text

from api.app import create_app
from core.settings import Settings
from tests.support.postgres import peak_connections

from .support import RecordingEnqueuer

POOL_SIZE, MAX_OVERFLOW, USERS = 2, 1, 8


def test_concurrent_requests_share_a_bounded_pool(tmp_path: Path, postgres_url: str) -> None:
    name = f"realign-pool-{secrets.token_hex(4)}"
    # the name in the URL too, so the count also works for code that ignores `db_application_name`
    settings = Settings(data_dir=tmp_path / "state", database_url=f"{postgres_url}?application_name={name}",
                        db_pool_size=POOL_SIZE, db_max_overflow=MAX_OVERFLOW, db_application_name=name,
                        db_pool_timeout_s=30.0)
    app = create_app(settings, RecordingEnqueuer())
    app.state.engine.dispose()  # count only what the users open

    def one_request() -> None:  # what a route does: one session, a query that holds the connection a while
        with app.state.sessions() as session:
            session.execute(text("SELECT pg_sleep(0.3)"))

    try:
        peak = peak_connections(name, USERS, one_request)
    finally:
        app.state.engine.dispose()
    assert peak <= POOL_SIZE + MAX_OVERFLOW, f"{peak} connections for {USERS} concurrent users"
    assert peak == POOL_SIZE + MAX_OVERFLOW  # the users did overlap: the bound was reached, not just unneeded
