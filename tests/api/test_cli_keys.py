"""`realign keys create | list | revoke` (issue 13): create says which data dir and database it wrote to, list shows
every key without its secret, a revoked key gets 401 from a running server; bad input is one line, exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fastapi.testclient import TestClient

from api.app import create_app
from core.settings import Settings

from .support import RecordingEnqueuer
from .test_cli_migrations import REPO, run_cli


def state_args(settings: Settings) -> list[str]:
    args = ["--data-dir", str(settings.data_dir)]
    return args + (["--database-url", settings.database_url] if settings.database_url else [])


def test_create_names_the_data_dir_and_a_revoked_key_gets_401(settings: Settings) -> None:
    code, output = run_cli(["keys", "create", "--tenant", "team-r", *state_args(settings)])
    key = output.strip().splitlines()[-1]
    assert code == 0 and key.startswith("rk_")
    assert f"data dir {settings.data_dir}" in output and "(database " in output
    if settings.database_url:
        assert "postgres" in output
    code, listing = run_cli(["keys", "list", "--json", "--tenant", "team-r", *state_args(settings)])
    rows = json.loads(listing)
    assert code == 0 and len(rows) == 1 and key.startswith(rows[0]["starts_with"]) and rows[0]["revoked_at"] is None
    assert key not in listing  # never the secret
    app = create_app(settings.model_copy(update={"auth_cache_ttl_s": 0.0}), RecordingEnqueuer())
    with TestClient(app) as client:
        headers = {"Authorization": f"Bearer {key}"}
        assert client.get("/v1/jobs", headers=headers).status_code == 200
        code, output = run_cli(["keys", "revoke", rows[0]["id"], *state_args(settings)])
        assert code == 0 and f"revoked API key {rows[0]['id']}" in output
        assert client.get("/v1/jobs", headers=headers).status_code == 401
    app.state.engine.dispose()
    code, listing = run_cli(["keys", "list", "--json", "--tenant", "team-r", *state_args(settings)])
    assert json.loads(listing)[0]["revoked_at"] is not None
    code, output = run_cli(["keys", "revoke", key, *state_args(settings)])  # the whole key works too
    assert code == 0 and "already revoked" in output


def test_list_prints_a_table_with_the_data_dir(tmp_path: Path) -> None:
    args = ["--data-dir", str(tmp_path / "state")]
    run_cli(["keys", "create", "--tenant", "a", *args])
    run_cli(["keys", "create", "--tenant", "b", *args])
    code, output = run_cli(["keys", "list", *args])
    lines = output.splitlines()
    assert code == 0 and lines[0] == f"2 API key(s) in data dir {tmp_path / 'state'} (database sqlite:///" \
        f"{tmp_path / 'state' / 'realign.db'})"
    assert lines[1].split() == ["id", "starts_with", "tenant", "created_at", "revoked_at"]
    assert [line.split()[2] for line in lines[2:]] == ["a", "b"]


def test_bad_keys_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "trace_engine.cli", "keys"]
    for argv, expected in (
        (["revoke", "key_nope", "--data-dir", str(tmp_path)], "no API key 'key_nope'"),
        (["create", "--tenant", " ", "--data-dir", str(tmp_path)], "--tenant must not be empty"),
        (["create", "--tenant", "x", "--database-url", "bogus://x"], "bad database URL"),
        (["list", "--database-url", "postgresql://nobody@127.0.0.1:1/x"], "cannot use the database"),
    ):
        result = subprocess.run(base + argv, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, (argv, result.stderr)
        assert "Traceback" not in result.stderr and expected in result.stderr, (argv, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
