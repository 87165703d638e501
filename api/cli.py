"""`realign keys create --tenant NAME` (a new API key, printed as the last line of output, for scripts, with the
data dir and database it was written to), `realign keys list`, `realign keys revoke KEY`, `realign submit` and
`realign serve` (the API plus, when embedded, a Celery worker it starts itself; `--demo` submits the synthetic
example over HTTP, shows progress and prints the result).

`register` imports nothing heavy: SQLAlchemy and pydantic-settings load only when the command runs, so listing
this module in the `realign` CLI keeps `trace_engine` commands free of service dependencies.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trace_engine.cli.common import positive_int

EXAMPLE_FILE = Path(__file__).resolve().parents[1] / "examples" / "synthetic_realign.json"

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from core.settings import Settings


class CliError(Exception):
    """A problem a command reports as one line on stderr (exit code 2)."""


def settings_from_args(args: argparse.Namespace) -> Settings:
    """`--data-dir` / `--database-url` override `REALIGN_DATA_DIR` / `REALIGN_DATABASE_URL`; invalid settings
    (from the options or the environment) are a CliError naming the setting."""
    from pydantic import ValidationError

    from core.settings import Settings

    overrides = {}
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = Path(args.data_dir)
    if getattr(args, "database_url", None):
        overrides["database_url"] = args.database_url
    if getattr(args, "broker_url", None):
        overrides["broker_url"] = args.broker_url
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(p) for p in first["loc"]) or "settings"
        raise CliError(f"invalid setting {name} (option or REALIGN_{name.upper()}): {first['msg']}") from None


def state_location(settings: Settings) -> str:
    """Which state a command reads or writes: the data dir and the database (password hidden)."""
    from sqlalchemy.engine import make_url

    try:
        database = make_url(settings.sqlalchemy_url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL is reported when it is used
        database = "(unparsable database URL)"
    return f"data dir {settings.data_dir} (database {database})"


@contextmanager
def database_errors(settings: Settings) -> Iterator[None]:
    """SQLAlchemy errors (bad URL, unreachable server, unknown driver) as one CliError line."""
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

    try:
        yield
    except (ArgumentError, NoSuchModuleError) as exc:
        raise CliError(f"bad database URL for {state_location(settings)}: {exc}") from None
    except SQLAlchemyError as exc:
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())[:300]
        raise CliError(f"cannot use the database of {state_location(settings)}: {reason}") from None


def _cmd_keys_create(args: argparse.Namespace) -> int:
    tenant = args.tenant.strip()
    if not tenant:
        raise CliError("--tenant must not be empty")
    from core.db.access.tenants import create_api_key
    from core.db.engine import migrated_session

    settings = settings_from_args(args)
    with database_errors(settings), migrated_session(settings.sqlalchemy_url) as session:
        key = create_api_key(session, tenant_name=tenant)
    print(f"created an API key for tenant {tenant!r} in {state_location(settings)}; a server must use this "
          "data dir and database to accept it. It is shown once, store it now:")
    print(key)
    return 0


def key_rows(session: Session, tenant: str | None = None) -> list[dict[str, Any]]:
    """Every key (never its secret): id, the `rk_PREFIX` it starts with, tenant, created, revoked."""
    from sqlalchemy import select

    from core.db.access.tenants import KEY_PREFIX
    from core.db.models import ApiKey, Tenant

    query = select(ApiKey, Tenant.name).join(Tenant, Tenant.id == ApiKey.tenant_id).order_by(ApiKey.created_at)
    if tenant is not None:
        query = query.where(Tenant.name == tenant)
    return [{"id": key.id, "starts_with": f"{KEY_PREFIX}{key.prefix}_", "tenant": name,
             "created_at": key.created_at.isoformat(timespec="seconds"),
             "revoked_at": key.revoked_at.isoformat(timespec="seconds") if key.revoked_at else None}
            for key, name in session.execute(query).all()]


def _cmd_keys_list(args: argparse.Namespace) -> int:
    from core.db.engine import migrated_session

    settings = settings_from_args(args)
    with database_errors(settings), migrated_session(settings.sqlalchemy_url) as session:
        rows = key_rows(session, args.tenant)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{len(rows)} API key(s) in {state_location(settings)}")
    if rows:
        widths = [max(len(str(r[c] or "-")) for r in [dict(zip(COLUMNS, COLUMNS, strict=True)), *rows])
                  for c in COLUMNS]
        for row in [dict(zip(COLUMNS, COLUMNS, strict=True)), *rows]:
            print("  ".join(str(row[c] or "-").ljust(w) for c, w in zip(COLUMNS, widths, strict=True)).rstrip())
    return 0


COLUMNS = ("id", "starts_with", "tenant", "created_at", "revoked_at")


def _cmd_keys_revoke(args: argparse.Namespace) -> int:
    from sqlalchemy import or_, select

    from core.db.access.tenants import KEY_PREFIX
    from core.db.engine import migrated_session
    from core.db.models import ApiKey, utcnow

    wanted = args.key.strip()
    prefix = wanted[len(KEY_PREFIX):].split("_", 1)[0] if wanted.startswith(KEY_PREFIX) else wanted
    settings = settings_from_args(args)
    with database_errors(settings), migrated_session(settings.sqlalchemy_url) as session:
        key = session.scalar(select(ApiKey).where(or_(ApiKey.id == wanted, ApiKey.prefix == prefix)))
        if key is None:
            raise CliError(f"no API key {wanted!r} in {state_location(settings)} (`realign keys list` shows the "
                           "ids)")
        if key.revoked_at is not None:
            print(f"API key {key.id} was already revoked at {key.revoked_at.isoformat(timespec='seconds')}")
            return 0
        key.revoked_at = utcnow()
    print(f"revoked API key {key.id} ({KEY_PREFIX}{key.prefix}_...) in {state_location(settings)}; requests with "
          f"it get 401 (a running server may accept it for up to REALIGN_AUTH_CACHE_TTL_S = "
          f"{settings.auth_cache_ttl_s:g}s more)")
    return 0


def port_number(text: str) -> int:
    """A TCP port, 0-65535 (0: pick a free one)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 0-65535 (0 picks a free one), got {value}")
    return value


def _one_line_errors(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """CliError -> `realign CMD: error: ...` on stderr and exit code 2."""

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except CliError as exc:
            command = " ".join(filter(None, [args.command, getattr(args, "keys_command", None)]))
            print(f"realign {command}: error: {exc}", file=sys.stderr, flush=True)
            return 2

    return run


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
    keys = subparsers.add_parser("keys", help="manage API keys of the service (create, list, revoke)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = keys_sub.add_parser("create", help="create an API key (printed as the last line)")
    create.add_argument("--tenant", required=True, help="tenant name (created if new)")
    _add_state_args(create)
    create.set_defaults(func=_one_line_errors(_cmd_keys_create))
    listing = keys_sub.add_parser("list", help="list API keys (ids, first characters, tenant, revoked or not)")
    listing.add_argument("--tenant", help="only this tenant's keys")
    listing.add_argument("--json", action="store_true", help="print JSON")
    _add_state_args(listing)
    listing.set_defaults(func=_one_line_errors(_cmd_keys_list))
    revoke = keys_sub.add_parser("revoke", help="revoke an API key: requests with it get 401")
    revoke.add_argument("key", metavar="KEY", help="the key's id (from `keys list`), its rk_PREFIX_ start, or the "
                        "whole key")
    _add_state_args(revoke)
    revoke.set_defaults(func=_one_line_errors(_cmd_keys_revoke))

    serve = subparsers.add_parser(
        "serve", help="run the service; with no database or broker configured, embedded (SQLite, a filesystem "
        "broker and a worker started here) and prints a local API key")
    _add_state_args(serve)
    serve.add_argument("--broker-url", help="Celery broker (default: REALIGN_BROKER_URL or the embedded one)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=port_number, default=8000, help="0 picks a free port")
    serve.add_argument("--no-worker", action="store_true", help="do not start a worker (one runs elsewhere)")
    serve.add_argument("--no-serving", action="store_true", help="do not start the local serving backend (no "
                       "OpenAI-compatible gateway unless REALIGN_SERVING_URL names one)")
    serve.add_argument("--worker-concurrency", type=positive_int, default=4, help="threads of the embedded worker")
    serve.add_argument("--demo", action="store_true", help="submit --example over HTTP, show progress, print "
                       "the result, then stop")
    serve.add_argument("--example", default=str(EXAMPLE_FILE), help="request body for --demo")
    serve.set_defaults(func=_one_line_errors(_cmd_serve))

    submit = subparsers.add_parser("submit", help="POST a request body to a running service (prints the job)")
    submit.add_argument("--file", required=True, help="JSON request body (e.g. examples/synthetic_realign.json)")
    submit.add_argument("--url", default="http://127.0.0.1:8000", help="service base URL")
    submit.add_argument("--api-key", default=None, help="API key (default: REALIGN_API_KEY)")
    submit.add_argument("--wait", action="store_true", help="follow the job to its end and print the result")
    submit.set_defaults(func=_cmd_submit)
