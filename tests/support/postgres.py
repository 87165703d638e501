"""A fresh database on this machine's real PostgreSQL for one test session (skips when Postgres is absent), and
how many connections a process holds at most (`peak_connections`)."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


@contextmanager
def fresh_postgres_database(prefix: str) -> Iterator[str]:
    """Create `<prefix>_<random>`, yield its SQLAlchemy URL, drop it (forcefully) at the end."""
    import psycopg

    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except Exception as exc:  # no Postgres on this machine
        pytest.skip(f"Postgres at 127.0.0.1:5432 unreachable: {exc}")
    name = f"{prefix}_{secrets.token_hex(4)}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()



def peak_connections(application_name: str, users: int, use_one: Callable[[], None], *,
                     poll_s: float = 0.01) -> int:
    """Run `use_one` in `users` threads at once while sampling `pg_stat_activity`; returns the most connections
    with this `application_name` seen at the same time (re-raises the first error of a user)."""
    import psycopg

    errors: list[BaseException] = []

    def user() -> None:
        try:
            use_one()
        except BaseException as exc:  # re-raised below, in the test's thread
            errors.append(exc)

    peak = 0
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3) as probe:
        threads = [threading.Thread(target=user) for _ in range(users)]
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            row = probe.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                                (application_name,)).fetchone()
            peak = max(peak, int(row[0]) if row else 0)
            time.sleep(poll_s)
    if errors:
        raise errors[0]
    return peak
