"""Helpers shared by the service tests (fixtures live in conftest.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from core.settings import Settings

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


def tenant_of(sessions: sessionmaker[Session], headers: dict[str, str]) -> str:
    from core.db.access.tenants import authenticate

    with sessions() as session:
        tenant = authenticate(session, key=headers["Authorization"].removeprefix("Bearer "))
        assert tenant is not None
        return tenant.id


def register_adapter(sessions: sessionmaker[Session], settings: Settings, tenant_id: str, *,
                     weights: bytes = b"weights", source: Path | None = None, **request_overrides: Any) -> str:
    """A job of this tenant whose adapter folder exists, registered as the worker does at success; returns the
    adapter id. The weights are arbitrary bytes (the registry only hashes and serves them), or the files of a
    real peft adapter folder `source`."""
    import json
    import shutil

    from core.db.access.jobs import create_job
    from core.db.engine import session_scope
    from core.registry import adapter_relative_path
    from worker.registration import register_job_adapter

    with session_scope(sessions) as session:
        job, _ = create_job(session, tenant_id=tenant_id, request=realign_body(**request_overrides), body_hash="h")
        job_id = job.id
    folder = settings.data_dir / adapter_relative_path(job_id)
    if source is not None:
        shutil.copytree(source, folder)
    else:
        folder.mkdir(parents=True)
        (folder / "adapter_model.safetensors").write_bytes(weights)
        (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "peft_type": "LORA"}))
    with session_scope(sessions) as session:
        return register_job_adapter(session, settings, job_id).id
