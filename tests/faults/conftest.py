"""Fault-suite fixtures: this session's own Postgres and Redis (free loopback ports, never the shared 5432/6379),
a fresh stack (its own queue names) per test with the compose-shaped judge and gpu workers, and the fault table
(`$REALIGN_FAULT_REPORT`, default tests/faults/last_report.md, printed at the end of the run)."""

from __future__ import annotations

import platform
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import make_stack, synthetic_base_model  # noqa: F401 - fixture re-used
from tests.integration.support import Stack
from tests.support.servers import PostgresServer, RedisServer

from .support import FaultRecord, write_report

# Test-scaled service timings (production defaults are lease 30 s, requeue 120 s); recorded in the report.
TIMINGS = dict(lease_ttl_s=3.0, heartbeat_interval_s=0.3, reaper_interval_s=0.5, requeue_after_s=10.0)
_records: list[FaultRecord] = []


@pytest.fixture(scope="session")
def fault_postgres() -> Iterator[PostgresServer]:
    reason = PostgresServer.unavailable_reason()
    if reason:
        pytest.skip(f"fault suite needs its own Postgres: {reason}")
    try:
        server = PostgresServer.create()
    except Exception as exc:
        pytest.skip(f"fault suite could not start its own Postgres: {exc}")
    with server:
        yield server


@pytest.fixture(scope="session")
def fault_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    reason = RedisServer.unavailable_reason()
    if reason:
        pytest.skip(f"fault suite needs its own Redis: {reason}")
    try:
        server = RedisServer.create(tmp_path_factory.mktemp("redis"))
    except Exception as exc:
        pytest.skip(f"fault suite could not start its own Redis: {exc}")
    with server:
        yield server


@pytest.fixture
def fault_stack(tmp_path: Path, fault_postgres: PostgresServer, fault_redis: RedisServer) -> Iterator[Stack]:
    """A stack on this suite's servers with no worker yet (the test starts the compose workers it needs)."""
    if not (fault_postgres.running() and fault_redis.running()):  # an earlier test left one down
        (fault_postgres if not fault_postgres.running() else fault_redis).start()
    stack = make_stack(tmp_path / "state", fault_postgres.url, fault_redis.url,
                       queue_prefix=f"f{secrets.token_hex(4)}.", **TIMINGS)
    yield stack
    for worker in stack.workers:
        worker.stop()
    stack.client.close()
    stack.client.app.state.engine.dispose()  # type: ignore[attr-defined]


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Iterator[FaultRecord]:
    """The test's row in the fault table; its outcome is the test's, unless the test set a more precise one."""
    row = FaultRecord(test=request.node.name, fault="", stage="")
    yield row
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        message = str(report.longrepr.reprcrash.message) if hasattr(report.longrepr, "reprcrash") else "failed"
        row.outcome = f"TEST FAILED: {message.splitlines()[0][:160]}"
    elif report is not None and report.skipped:
        row.outcome = "skipped"
    _records.append(row)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]


def _header() -> str:
    timings = ", ".join(f"{k}={v:g}" for k, v in TIMINGS.items())
    return (f"Fault suite (`pytest -m faults tests/faults`), {platform.machine()} {platform.node()}, "
            f"CPU only, synthetic jobs on synthetic-tiny; service timings scaled for tests: {timings}.")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _records:
        return
    path = write_report(_records, _header())
    terminalreporter.section("fault table")
    terminalreporter.write(path.read_text())
    terminalreporter.write_line(f"(written to {path} and {path.with_suffix('.json')})")
