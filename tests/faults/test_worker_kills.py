"""SIGKILL of a worker process group (nothing gets to clean up) in the middle of its stage: the gpu worker while
scoring and while training, the judge worker while triaging. The other worker's reaper re-queues the stage once
its lease expires, a fresh worker of the same kind resumes it, and the job succeeds with nothing lost and only
the in-flight work done twice."""

from __future__ import annotations

import time

import pytest

from tests.integration.support import Stack, tiny_synthetic_body

from .support import (
    WORKERS,
    ComposeWorker,
    FaultRecord,
    all_events,
    check_events,
    last_event_id,
    requeues,
    start_compose_workers,
    training_fault,
    triage_fault,
    wait_progressing,
)

pytestmark = pytest.mark.faults


def kill_and_replace(stack: Stack, service: str):  # type: ignore[no-untyped-def]
    def inject(workers: list[ComposeWorker]) -> None:
        next(w for w in workers if w.service == service).kill()
        start_compose_workers(stack, service)

    return inject


def test_gpu_worker_sigkill_while_scoring(fault_stack: Stack, record: FaultRecord) -> None:
    record.fault, record.stage = "SIGKILL gpu worker", "score"
    n = 256  # four scoring batches of 64 rows: long enough to be killed in the middle
    workers = start_compose_workers(fault_stack, *WORKERS)
    job = fault_stack.submit(tiny_synthetic_body(n=n, variant="trace"))
    fault_stack.wait(job["id"], lambda j: j["state"] == "scoring", timeout=120, poll=0.05)
    time.sleep(0.5)
    assert fault_stack.job(job["id"])["state"] == "scoring", "scoring finished before the kill; make it longer"
    injected = time.monotonic()
    kill_and_replace(fault_stack, "worker-gpu")(workers)
    wait_progressing(fault_stack, job["id"], last_event_id(fault_stack, job["id"]), timeout=60)
    record.recovery_s = time.monotonic() - injected
    done = fault_stack.wait_done(job["id"], timeout=180)
    record.total_s, record.outcome = time.monotonic() - injected, done["state"]
    assert done["state"] == "succeeded", done
    events = all_events(fault_stack, job["id"])
    check_events(events, ["validate", "triage", "score", "train"])
    assert [e["stage"] for e in requeues(events)] == ["score"]
    assert sum(done["category_counts"].values()) == n
    record.lost = f"0 of {n} verdicts, 0 events"
    record.duplicated = "the scoring stage's work before the kill (scoring restarts; it keeps no partial state)"


def test_gpu_worker_sigkill_while_training(fault_stack: Stack, record: FaultRecord) -> None:
    record.fault, record.stage = "SIGKILL gpu worker", "train"
    events = training_fault(fault_stack, record, kill_and_replace(fault_stack, "worker-gpu"))
    assert [e["stage"] for e in requeues(events)] == ["train"]


def test_judge_worker_sigkill_while_triaging(fault_stack: Stack, record: FaultRecord) -> None:
    record.fault, record.stage = "SIGKILL judge worker", "triage"
    done = triage_fault(fault_stack, record, kill_and_replace(fault_stack, "worker-judge"))
    assert [e["stage"] for e in requeues(all_events(fault_stack, done["id"]))] == ["triage"]
