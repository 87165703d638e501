"""Engines, sessions and `upgrade_head` (Alembic, run programmatically by the app and the CLI at start)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

_UPGRADE_LOCK = threading.Lock()
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def make_engine(url: str, **options: Any) -> Engine:
    """An engine for Postgres (psycopg 3) or SQLite; SQLite gets WAL, a busy timeout and foreign keys on."""
    if url.startswith("sqlite"):
        database = url.split("///", 1)[-1]
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **options)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, **options)


def make_service_engine(settings: Any, *, role: str) -> Engine:
    """The engine of an API (`role="api"`) or worker (`role="worker"`) process: on Postgres a bounded pool
    (pool size + overflow from the settings: at most that many connections per process, see docs/operations.md)
    whose connections carry `application_name` (`realign-<role>` unless configured), so `pg_stat_activity`
    shows who holds them."""
    url = settings.sqlalchemy_url
    if url.startswith("sqlite"):
        return make_engine(url)
    size, overflow = ((settings.db_pool_size, settings.db_max_overflow) if role == "api"
                      else (settings.worker_db_pool_size, settings.worker_db_max_overflow))
    name = settings.db_application_name or f"realign-{role}"
    return make_engine(url, pool_size=size, max_overflow=overflow, pool_timeout=settings.db_pool_timeout_s,
                       connect_args={"application_name": name})


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One transaction: commit on success, roll back on any error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    config.attributes["engine"] = engine
    return config


def upgrade_head(engine: Engine) -> None:
    """Bring the schema to the latest revision (idempotent; safe on every start). Alembic's context is global,
    so one upgrade at a time per process; across processes env.py takes a Postgres advisory lock."""
    from alembic import command

    with _UPGRADE_LOCK:
        command.upgrade(alembic_config(engine), "head")


@contextmanager
def migrated_session(url: str) -> Iterator[Session]:
    """A session on the database at `url`, brought to the latest schema first, committed at the end: what a
    one-off command (`realign keys ...`, the embedded service's local key) uses."""
    engine = make_engine(url)
    try:
        upgrade_head(engine)
        with session_scope(make_session_factory(engine)) as session:
            yield session
    finally:
        engine.dispose()
