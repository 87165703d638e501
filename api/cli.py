"""`realign keys create --tenant NAME`: a new API key, printed as the last line of output (scripts take it).

`register` imports nothing heavy: SQLAlchemy and pydantic-settings load only when the command runs, so listing
this module in the `realign` CLI keeps `trace_engine` commands free of service dependencies.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from api.settings import Settings


def settings_from_args(args: argparse.Namespace) -> Settings:
    """`--data-dir` / `--database-url` override `REALIGN_DATA_DIR` / `REALIGN_DATABASE_URL`."""
    from api.settings import Settings

    overrides = {}
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = Path(args.data_dir)
    if getattr(args, "database_url", None):
        overrides["database_url"] = args.database_url
    return Settings(**overrides)


def create_key(settings: Settings, tenant: str) -> str:
    from api.db import access
    from api.db.engine import make_engine, make_session_factory, session_scope, upgrade_head

    engine = make_engine(settings.sqlalchemy_url)
    try:
        upgrade_head(engine)
        with session_scope(make_session_factory(engine)) as session:
            return access.create_api_key(session, tenant_name=tenant)
    finally:
        engine.dispose()


def _cmd_keys_create(args: argparse.Namespace) -> int:
    tenant = args.tenant.strip()
    if not tenant:
        print("error: --tenant must not be empty")
        return 2
    key = create_key(settings_from_args(args), tenant)
    print(f"created an API key for tenant {tenant!r}; it is shown once, store it now:")
    print(key)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    keys = subparsers.add_parser("keys", help="manage API keys of the service")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create an API key (printed as the last line)")
    create.add_argument("--tenant", required=True, help="tenant name (created if new)")
    create.add_argument("--data-dir", help="state directory (default: REALIGN_DATA_DIR or ~/.realign)")
    create.add_argument("--database-url", help="database URL (default: REALIGN_DATABASE_URL or SQLite in data dir)")
    create.set_defaults(func=_cmd_keys_create)
