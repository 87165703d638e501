"""`realign keys create` (key on the last line, usable at once) and Alembic migrations matching the models."""

from __future__ import annotations

import argparse
import contextlib
import io
import secrets
import subprocess
import sys
from pathlib import Path

import psycopg
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from fastapi.testclient import TestClient
from sqlalchemy import inspect

from api import cli
from api.app import create_app
from core.db.engine import make_engine, upgrade_head
from core.db.models import Base
from core.settings import Settings

from .support import RecordingEnqueuer

REPO = Path(__file__).resolve().parents[2]


def run_cli(argv: list[str]) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="realign")
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = args.func(args)
    return code, out.getvalue()


def test_keys_create_prints_a_working_key_last(settings: Settings) -> None:
    argv = ["keys", "create", "--tenant", "team-a", "--data-dir", str(settings.data_dir)]
    if settings.database_url:
        argv += ["--database-url", settings.database_url]
    code, output = run_cli(argv)
    key = output.strip().splitlines()[-1]
    assert code == 0 and key.startswith("rk_")
    with TestClient(create_app(settings, RecordingEnqueuer())) as client:
        assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_keys_create_reads_the_data_dir_from_the_environment(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("REALIGN_DATA_DIR", str(tmp_path / "env-dir"))
    monkeypatch.delenv("REALIGN_DATABASE_URL", raising=False)
    code, _ = run_cli(["keys", "create", "--tenant", "t"])
    assert code == 0 and (tmp_path / "env-dir" / "realign.db").exists()


def test_migrations_create_exactly_the_models_schema(settings: Settings) -> None:
    engine = make_engine(settings.sqlalchemy_url)
    try:
        upgrade_head(engine)
        upgrade_head(engine)  # idempotent
        with engine.connect() as connection:
            assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
        assert {"tenants", "api_keys", "files", "jobs", "stage_progress", "job_events", "triage_items",
                "alembic_version"} <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_concurrent_upgrades_on_a_fresh_postgres_database(postgres_url: str) -> None:
    """Three API processes starting at once on an empty database: all succeed (advisory lock in env.py)."""
    name = f"realign_test_mig_{secrets.token_hex(4)}"
    admin = psycopg.connect(postgres_url.replace("postgresql+psycopg", "postgresql"), autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')
    url = postgres_url.rsplit("/", 1)[0] + f"/{name}"
    code = f"from core.db.engine import make_engine, upgrade_head; upgrade_head(make_engine({url!r}))"
    try:
        processes = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stderr=subprocess.PIPE, text=True)
                     for _ in range(3)]
        failures = [p.stderr.read() for p in processes if p.wait(timeout=60) != 0]  # type: ignore[union-attr]
        assert failures == []
        engine = make_engine(url)
        assert "jobs" in inspect(engine).get_table_names()
        engine.dispose()
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
