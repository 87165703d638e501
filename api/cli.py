"""`realign keys create --tenant NAME` (a new API key, printed as the last line of output, for scripts) and
`realign serve` (the API plus, when embedded, a Celery worker it starts itself; `--demo` submits the synthetic
example over HTTP, shows progress and prints the result).

`register` imports nothing heavy: SQLAlchemy and pydantic-settings load only when the command runs, so listing
this module in the `realign` CLI keeps `trace_engine` commands free of service dependencies.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

EXAMPLE_FILE = Path(__file__).resolve().parents[1] / "examples" / "synthetic_realign.json"

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
    if getattr(args, "broker_url", None):
        overrides["broker_url"] = args.broker_url
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


def _add_state_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="state directory (default: REALIGN_DATA_DIR or ~/.realign)")
    parser.add_argument("--database-url", help="database URL (default: REALIGN_DATABASE_URL or SQLite in data dir)")


def _cmd_serve(args: argparse.Namespace) -> int:
    from api.embedded import serve

    return serve(settings_from_args(args), host=args.host, port=args.port, start_worker=not args.no_worker,
                 worker_concurrency=args.worker_concurrency, demo_file=args.example if args.demo else None,
                 start_serving=not args.no_serving)


def _cmd_submit(args: argparse.Namespace) -> int:
    from api.embedded import submit

    return submit(args.url, args.api_key, Path(args.file), wait=args.wait)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    keys = subparsers.add_parser("keys", help="manage API keys of the service")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create an API key (printed as the last line)")
    create.add_argument("--tenant", required=True, help="tenant name (created if new)")
    create.add_argument("--data-dir", help="state directory (default: REALIGN_DATA_DIR or ~/.realign)")
    create.add_argument("--database-url", help="database URL (default: REALIGN_DATABASE_URL or SQLite in data dir)")
    create.set_defaults(func=_cmd_keys_create)

    serve = subparsers.add_parser(
        "serve", help="run the service; with no database or broker configured, embedded (SQLite, a filesystem "
        "broker and a worker started here) and prints a local API key")
    _add_state_args(serve)
    serve.add_argument("--broker-url", help="Celery broker (default: REALIGN_BROKER_URL or the embedded one)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    serve.add_argument("--no-worker", action="store_true", help="do not start a worker (one runs elsewhere)")
    serve.add_argument("--no-serving", action="store_true", help="do not start the local serving backend (no "
                       "OpenAI-compatible gateway unless REALIGN_SERVING_URL names one)")
    serve.add_argument("--worker-concurrency", type=int, default=4, help="threads of the embedded worker")
    serve.add_argument("--demo", action="store_true", help="submit --example over HTTP, show progress, print "
                       "the result, then stop")
    serve.add_argument("--example", default=str(EXAMPLE_FILE), help="request body for --demo")
    serve.set_defaults(func=_cmd_serve)

    submit = subparsers.add_parser("submit", help="POST a request body to a running service (prints the job)")
    submit.add_argument("--file", required=True, help="JSON request body (e.g. examples/synthetic_realign.json)")
    submit.add_argument("--url", default="http://127.0.0.1:8000", help="service base URL")
    submit.add_argument("--api-key", default=None, help="API key (default: REALIGN_API_KEY)")
    submit.add_argument("--wait", action="store_true", help="follow the job to its end and print the result")
    submit.set_defaults(func=_cmd_submit)
