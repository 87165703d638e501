"""The API process SIGKILLed while a client follows a job's events (SSE): the follower reconnects with
`Last-Event-ID` to the restarted API and sees every event exactly once. And storage made read-only under a
training stage: the job fails with a clear error, and once storage is writable again it can be retried."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.support import Stack, stage_done, tiny_synthetic_body

from .support import (
    WORKERS,
    ApiProcess,
    FaultRecord,
    all_events,
    check_events,
    start_compose_workers,
    training_redone,
)

pytestmark = pytest.mark.faults


class SseFollower(threading.Thread):
    """Follows `GET /v1/jobs/{id}/events` as a browser's EventSource would: on a dropped connection it reconnects
    with `Last-Event-ID`; it stops when the server ends the stream (the job finished)."""

    def __init__(self, base_url: str, job_id: str, headers: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.url, self.headers = f"{base_url}/v1/jobs/{job_id}/events", headers
        self.ids: list[int] = []
        self.reconnects = 0
        self.resumed_at: float | None = None  # when the first event after a reconnect arrived
        self.error: BaseException | None = None

    def run(self) -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            headers = {**self.headers, "Accept": "text/event-stream"}
            if self.ids:
                headers["Last-Event-ID"] = str(self.ids[-1])
            try:
                with httpx.stream("GET", self.url, headers=headers, timeout=httpx.Timeout(10, read=30)) as stream:
                    stream.raise_for_status()
                    for line in stream.iter_lines():
                        if line.startswith("id: "):
                            self.ids.append(int(line[4:]))
                            if self.reconnects and self.resumed_at is None:
                                self.resumed_at = time.monotonic()
                return  # the server ended the stream: the job is finished
            except (httpx.TransportError, httpx.HTTPStatusError):
                self.reconnects += 1
                time.sleep(0.2)
        self.error = TimeoutError("SSE follower never saw the stream end")


def test_api_sigkill_with_an_sse_follower(fault_stack: Stack, record: FaultRecord) -> None:
    record.fault, record.stage = "SIGKILL API (uvicorn, SSE follower attached)", "train"
    state = fault_stack.settings.data_dir
    api = ApiProcess(fault_stack, state / "api.log").start()
    http = Stack(fault_stack.settings, httpx.Client(base_url=api.base_url, timeout=10), fault_stack.headers)  # type: ignore[arg-type]
    try:
        start_compose_workers(fault_stack, *WORKERS)
        body = tiny_synthetic_body(n=40, variant="no_impact", hyperparameters={"epochs": 2, "batch_size": 4})
        job = http.submit(body)
        follower = SseFollower(api.base_url, job["id"], fault_stack.headers)
        follower.start()
        http.wait(job["id"], lambda j: stage_done(j, "train") >= 4, timeout=120, poll=0.05)
        api.kill()
        killed = time.monotonic()
        time.sleep(1.0)
        api.start()
        follower.join(240)
        record.recovery_s = (follower.resumed_at or time.monotonic()) - killed
        done = http.wait_done(job["id"], timeout=180)
        record.total_s, record.outcome = time.monotonic() - killed, done["state"]
        listed = [e["id"] for e in all_events(http, job["id"])]
    finally:
        http.client.close()
        api.stop()
    assert follower.error is None and not follower.is_alive(), follower.error
    assert follower.reconnects >= 1, "the follower never lost its connection: the kill did not reach it"
    duplicated = len(follower.ids) - len(set(follower.ids))
    missing = sorted(set(listed) - set(follower.ids))
    record.lost = f"{len(missing)} of {len(listed)} events"
    record.duplicated = f"{duplicated} events seen twice; {follower.reconnects} reconnect(s)"
    assert done["state"] == "succeeded", done
    assert follower.ids == listed, f"SSE saw {len(follower.ids)} events, the API lists {len(listed)}: " \
                                   f"missing {missing}, {duplicated} duplicated"


@contextlib.contextmanager
def read_only(folder: Path):  # type: ignore[no-untyped-def]
    """`folder` as a read-only bind mount of itself (chmod does not stop root); skips where mounts are denied."""
    folder.mkdir(parents=True, exist_ok=True)
    bind = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True, text=True)
    if bind.returncode != 0:
        pytest.skip(f"cannot make storage read-only here (mount --bind: {bind.stderr.strip()})")
    try:
        remount = subprocess.run(["mount", "-o", f"remount,bind,ro{locked_mount_flags(folder)}", str(folder)],
                                 capture_output=True, text=True)
        if remount.returncode != 0:
            pytest.skip(f"cannot make storage read-only here (mount -o remount,bind,ro: {remount.stderr.strip()})")
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False, capture_output=True)


def locked_mount_flags(folder: Path) -> str:
    """The flags the mount under `folder` already has: inside a user namespace (CI containers) they are locked,
    and a remount that drops nosuid/nodev/noexec is refused (exit 32), so the read-only remount must repeat them."""
    flags = os.statvfs(folder).f_flag
    names = {os.ST_NOSUID: "nosuid", os.ST_NODEV: "nodev", os.ST_NOEXEC: "noexec", os.ST_NOATIME: "noatime",
             os.ST_NODIRATIME: "nodiratime", os.ST_RELATIME: "relatime"}
    return "".join(f",{name}" for bit, name in names.items() if flags & bit)


def retry(stack: Stack, job_id: str) -> dict[str, Any]:
    response = stack.client.post(f"/v1/jobs/{job_id}/retry", headers=stack.headers)
    assert response.status_code != 404 or "job" in response.text.lower(), "no POST /v1/jobs/{id}/retry endpoint"
    assert response.status_code in (200, 202), f"retry refused: {response.status_code} {response.text}"
    return response.json()


def test_read_only_storage_while_training_fails_clearly_and_retries(fault_stack: Stack,
                                                                    record: FaultRecord) -> None:
    record.fault, record.stage = "job storage read-only (bind mount)", "train"
    start_compose_workers(fault_stack, *WORKERS)
    body = tiny_synthetic_body(n=40, variant="no_impact", hyperparameters={"epochs": 2, "batch_size": 4})
    job = fault_stack.submit(body)
    fault_stack.wait(job["id"], lambda j: stage_done(j, "train") >= 4, timeout=120, poll=0.05)
    with read_only(fault_stack.settings.data_dir / "jobs" / job["id"]):
        injected = time.monotonic()
        failed = fault_stack.wait_done(job["id"], timeout=60)
    record.outage_s = time.monotonic() - injected
    error = failed.get("error") or {}
    assert failed["state"] == "failed", failed
    assert error.get("stage") == "train", error
    message = str(error.get("message", ""))
    record.notes = f"error: {error.get('kind')}: {message[:120]}"
    assert "read-only" in message.lower() or error.get("kind") in ("storage_unavailable", "storage_read_only"), \
        f"the error does not say storage is read-only: {error}"
    marker = all_events(fault_stack, job["id"])[-1]["id"]
    retry(fault_stack, job["id"])
    done = fault_stack.wait_done(job["id"], timeout=180)
    record.total_s, record.outcome = time.monotonic() - injected, f"failed, retried: {done['state']}"
    record.recovery_s = record.total_s
    assert done["state"] == "succeeded", done
    assert done["metrics"]["train_steps"] == 20
    events = all_events(fault_stack, job["id"])
    redone = training_redone(events, marker)
    record.lost, record.duplicated = "0 events", f"{redone} optimizer step(s) of 20 after the retry"
    check_events(events, ["validate", "triage", "train"])
