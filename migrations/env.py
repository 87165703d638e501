"""Alembic environment: uses the engine the app hands over, else REALIGN_* settings (command-line use)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from core.db.engine import make_engine
from core.db.models import Base

config = context.config
target_metadata = Base.metadata
MIGRATION_LOCK_KEY = 0x7265616C69676E  # "realign"


def _engine():  # type: ignore[no-untyped-def]
    engine = config.attributes.get("engine")
    if engine is not None:
        return engine
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        from core.settings import Settings

        url = Settings().sqlalchemy_url
    return make_engine(url)


def run_migrations_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = _engine()
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":  # API replicas starting together migrate one at a time
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            context.run_migrations()
        connection.commit()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
