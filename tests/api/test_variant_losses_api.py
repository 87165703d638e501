"""The service refuses what the engine refuses (issue 14): `variant: trace` + `pref_loss: rdpo` is a 422 at
submission, not a job scored with DPO and trained with rDPO."""

from __future__ import annotations

from typing import Any

from .support import Harness, assert_problem, realign_body


def test_trace_with_rdpo_is_refused_at_submission(harness: Harness) -> None:
    body = realign_body(method={"variant": "trace", "hyperparameters": {"pref_loss": "rdpo"}})
    problem = assert_problem(harness.client.post("/v1/realign", json=body, headers=harness.headers), 422)
    assert any("rdpo" in e["message"] for e in problem["errors"]), problem
    assert harness.enqueuer.calls == []


def test_rdpo_with_uniform_weights_is_accepted(harness: Harness, body: dict[str, Any]) -> None:
    accepted = realign_body(method={"variant": "no_impact", "hyperparameters": {"pref_loss": "rdpo"}})
    response = harness.client.post("/v1/realign", json=accepted, headers=harness.headers)
    assert response.status_code == 202, response.text
