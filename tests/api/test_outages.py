"""Issue 10: outages answered 500 as if they were bugs. A database that cannot be reached answers 503 with
`Retry-After`; storage that is full answers 507 saying so. (A broker that is down at submission: the job is
accepted (202) and the reaper sends it within seconds, tests/worker/test_lost_enqueue.py.)"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.routes import files as files_route
from core.db.engine import make_engine
from tests.support.servers import free_port

from .support import Harness, assert_problem, realign_body

pytestmark = pytest.mark.parametrize("settings", ["postgres"], indirect=True)


@pytest.fixture
def dead_engine() -> Any:
    """An engine for a loopback port nobody listens on (the database went away)."""
    dead = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test",
                       connect_args={"connect_timeout": 2})
    yield dead
    dead.dispose()


def test_requests_while_the_database_is_unreachable_are_503_with_retry_after(harness: Harness,
                                                                             dead_engine: Any) -> None:
    assert harness.client.get("/v1/jobs", headers=harness.headers).status_code == 200  # this key is now cached
    harness.sessions.configure(bind=dead_engine)  # the database goes away
    fresh_key = {"Authorization": "Bearer rk_never_seen_so_authentication_needs_the_database"}
    calls = [("GET", "/v1/jobs", harness.headers, None), ("GET", "/v1/jobs", fresh_key, None),
             ("POST", "/v1/realign", harness.headers, realign_body()), ("GET", "/v1/files", harness.headers, None)]
    client = TestClient(harness.app, raise_server_exceptions=False)  # a 500 is an answer too, not an exception
    for method, path, headers, body in calls:
        response = client.request(method, path, headers=headers, json=body)
        assert response.status_code == 503, f"{method} {path}: {response.status_code} {response.text[:300]}"
        problem = assert_problem(response, 503)
        assert int(response.headers["Retry-After"]) > 0
        assert "database" in problem["detail"] and "unreachable" in problem["detail"], problem
        assert "127.0.0.1" not in response.text and "psycopg" not in response.text  # no internals
    assert harness.enqueuer.calls == []


class FullDisk:
    """What `open(path, "wb")` gives on a full file system: writes raise ENOSPC."""

    def __init__(self, path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> None:
        self.path = Path(path)
        self.path.touch()

    def __enter__(self) -> FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path))

    def flush(self) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path))

    def close(self) -> None:
        return None

    def fileno(self) -> int:
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path))


def test_an_upload_when_storage_is_full_is_507_and_leaves_nothing(harness: Harness,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files_route, "open", FullDisk, raising=False)  # the route's own file writes only
    rows = b'{"prompt": "p", "chosen": "c", "rejected": "r"}\n' * 3
    client = TestClient(harness.app, raise_server_exceptions=False)
    response = client.post("/v1/files", files={"file": ("pairs.jsonl", rows)}, headers=harness.headers)
    assert response.status_code == 507, f"{response.status_code} {response.text[:300]}"
    problem = assert_problem(response, 507)
    assert "storage is full" in problem["detail"], problem
    assert str(harness.settings.data_dir) not in response.text  # no server paths
    assert list(harness.settings.files_dir.iterdir()) == []  # the partial file is gone
    monkeypatch.undo()
    ok = harness.client.post("/v1/files", files={"file": ("pairs.jsonl", rows)}, headers=harness.headers)
    assert ok.status_code == 201, ok.text  # once there is space again, the same upload works
