"""Triage review through a real Celery worker on Redis with Postgres (issue 13): a `review: true` job stops in
`awaiting_review` after triage and stays there (nothing is queued, the reaper leaves it alone), a reviewer's
override is what the worker scores and trains on once the job is continued, and the job succeeds."""

from __future__ import annotations

import time

from .support import Stack, tiny_synthetic_body


def test_a_reviewed_job_waits_for_the_reviewer_then_trains_on_the_override(shared_stack: Stack) -> None:
    stack = shared_stack
    job = stack.submit({**tiny_synthetic_body(n=24), "review": True})
    parked = stack.wait(job["id"], lambda j: j["state"] in {"awaiting_review", "failed", "succeeded"}, timeout=120)
    assert parked["state"] == "awaiting_review" and parked["stage"] == "triage", parked
    time.sleep(3 * stack.settings.reaper_interval_s + 1)  # the worker's reaper runs meanwhile
    still = stack.job(job["id"])
    assert still["state"] == "awaiting_review"
    assert {p["stage"] for p in still["progress"]} == {"validate", "triage"}  # nothing after triage ran

    items = stack.client.get(f"/v1/jobs/{job['id']}/triage", params={"category": "RETAIN"},
                             headers=stack.headers).json()["data"]
    pair = items[0]["pair_id"]
    changed = stack.client.patch(f"/v1/jobs/{job['id']}/triage/{pair}", json={"category": "PUNISH"},
                                 headers=stack.headers)
    assert changed.status_code == 200, changed.text
    continued = stack.client.post(f"/v1/jobs/{job['id']}/continue", headers=stack.headers)
    assert continued.status_code == 202, continued.text

    done = stack.wait_done(job["id"], timeout=240)
    assert done["state"] == "succeeded", done
    scores = stack.client.get(f"/v1/jobs/{job['id']}/scores", params={"limit": 100}, headers=stack.headers).json()
    row = next(s for s in scores["data"] if s["pair_id"] == pair)
    assert row["category"] == "PUNISH" and row["impact_kind"] is not None, row  # scored as the reviewer said
    completed = [e["stage"] for e in stack.events(job["id"]) if e["type"] == "stage_completed"]
    assert completed == ["validate", "triage", "score", "train"]
