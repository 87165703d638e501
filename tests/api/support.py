"""Helpers shared by the service tests (fixtures live in conftest.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.settings import Settings

PROBLEM = "application/problem+json"


@dataclass
class RecordingEnqueuer:
    """A real enqueue callable that remembers what it was asked to queue (optionally failing, like a dead broker)."""

    calls: list[tuple[str, str]] = field(default_factory=list)
    fail: bool = False

    def __call__(self, job_id: str, stage: str) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        self.calls.append((job_id, stage))


@dataclass
class Harness:
    app: FastAPI
    client: TestClient
    settings: Settings
    enqueuer: RecordingEnqueuer
    headers: dict[str, str]
    new_headers: Callable[[str], dict[str, str]]

    @property
    def sessions(self) -> sessionmaker[Session]:
        return self.app.state.sessions


def realign_body(**overrides: Any) -> dict[str, Any]:
    """A valid POST /v1/realign body (synthetic world); `overrides` replace top-level parts."""
    body: dict[str, Any] = {
        "policy": {"text": "# New policy\n## [P1] Be kind\nRefuse insults.\n", "name": "new"},
        "dataset": {"type": "synthetic", "seed": 3, "n": 16},
        "base_model": {"name_or_path": "synthetic-tiny"},
        "judge": {"provider": "synthetic"},
        "method": {"variant": "trace"},
        "eval": {"suites": ["tpa"]},
        "metadata": {"ticket": "T-1"},
    }
    body.update(overrides)
    return body



def assert_problem(response: Any, status: int) -> dict[str, Any]:
    """The response is an RFC 9457 problem with this status; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    problem = response.json()
    assert problem["status"] == status and problem["title"] and problem["detail"]
    return problem
