"""A worker killed with SIGKILL mid-triage and mid-training: the reaper re-queues the stage after its lease
expires, a new worker resumes it (stored verdicts are not judged again; training continues from its last
checkpoint), and the job succeeds."""

from __future__ import annotations

from collections import Counter

from tests.support.fake_openai import spawn_fake_openai
from worker.judging import PROBE_RESPONSE

from .support import Stack, stage_done, tiny_synthetic_body
from .test_jobs import judged_body


def test_sigkill_mid_triage_resumes_without_judging_twice(own_stack: Stack) -> None:
    n = 48
    with spawn_fake_openai(port=own_stack.judge_port, latency=0.2) as fake:
        first = own_stack.start_worker()
        job = own_stack.submit(judged_body(own_stack, fake.base_url, n))
        own_stack.wait(job["id"], lambda j: stage_done(j, "triage") >= 16, timeout=60, poll=0.05)
        first.kill()
        killed_at = fake.stats()["calls_total"]
        assert killed_at < 2 * n + 1, "triage finished before the kill; make it slower"
        own_stack.start_worker()
        done = own_stack.wait_done(job["id"], timeout=120)
        calls = Counter(fake.stats()["calls_by_response"])
    assert done["state"] == "succeeded", done
    calls.pop(PROBE_RESPONSE, None)
    assert len(calls) == 2 * n  # every response judged
    judged_twice = sum(count - 1 for count in calls.values() if count > 1)
    assert judged_twice <= own_stack.settings.judge_concurrency  # only the calls in flight at the kill
    requeues = [e for e in own_stack.events(job["id"]) if e["type"] == "warning" and "re-queued" in
                e["data"].get("message", "")]
    assert requeues and requeues[0]["stage"] == "triage"
    assert done["category_counts"] == {"INVERT": n // 4, "PUNISH": n // 4, "RETAIN": n // 2, "ERROR": 0}


def test_sigkill_mid_training_resumes_from_the_last_checkpoint(own_stack: Stack) -> None:
    body = tiny_synthetic_body(n=40, variant="no_impact", hyperparameters={"epochs": 2, "batch_size": 4})
    first = own_stack.start_worker()
    job = own_stack.submit(body)
    own_stack.wait(job["id"], lambda j: stage_done(j, "train") >= 3, timeout=120, poll=0.05)
    first.kill()
    own_stack.start_worker()
    done = own_stack.wait_done(job["id"], timeout=180)
    assert done["state"] == "succeeded", done
    assert done["metrics"]["train_steps"] == 20
    events = own_stack.events(job["id"])
    requeue = next(i for i, e in enumerate(events) if e["type"] == "warning" and e["stage"] == "train")
    resumed = [e["data"]["done"] for e in events[requeue:] if e["type"] == "progress" and e["stage"] == "train"]
    assert resumed and resumed[0] > 1, resumed  # the first step after the restart continues, not step 1
    completed = [e["stage"] for e in events if e["type"] == "stage_completed"]
    assert completed.count("train") == 1 and completed.count("triage") == 1
