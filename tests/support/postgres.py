"""A fresh database on this machine's real PostgreSQL for one test session (skips when Postgres is absent)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
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
