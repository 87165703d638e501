"""Issue 10: a policy over `MAX_CLAUSES` clauses or `MAX_POLICY_CHARS` characters (text plus `clauses`) gets a
422 at submission naming the limit, instead of a job whose every judge call carries it."""

from __future__ import annotations

import time

import pytest

from trace_engine.policy import MAX_CLAUSES, MAX_POLICY_CHARS

from .support import Harness, assert_problem, realign_body

pytestmark = pytest.mark.parametrize("settings", ["postgres"], indirect=True)


def policy_problem(harness: Harness, policy: dict[str, object]) -> str:
    response = harness.client.post("/v1/realign", json=realign_body(policy=policy), headers=harness.headers)
    assert response.status_code == 422, f"{response.status_code}, not 422 (state: {response.json().get('state')})"
    problem = assert_problem(response, 422)
    assert harness.enqueuer.calls == []
    fields = {e["field"]: e["message"] for e in problem["errors"]}
    assert "policy" in fields, problem
    return fields["policy"]


def test_too_many_clauses_in_the_text_is_a_422_naming_the_limit(harness: Harness) -> None:
    text = "# P\n" + "".join(f"## [C{i}] t\nbody\n" for i in range(MAX_CLAUSES + 100))
    started = time.perf_counter()
    message = policy_problem(harness, {"text": text})
    assert time.perf_counter() - started < 2.0
    assert f"more than {MAX_CLAUSES} clauses" in message and "limit" in message


def test_text_plus_clauses_over_the_character_limit_is_a_422_naming_the_limit(harness: Harness) -> None:
    text = "# P\n" + "x" * 150_000  # each part is within its own field limits; together they are not
    clauses = [{"id": f"K{i}", "title": "t", "body": "y" * 15_000} for i in range(4)]
    message = policy_problem(harness, {"text": text, "clauses": clauses})
    assert f"the limit is {MAX_POLICY_CHARS}" in message


def test_a_policy_at_the_limits_is_accepted(harness: Harness) -> None:
    text = "# P\n" + "".join(f"## [C{i}] t\nbody\n" for i in range(MAX_CLAUSES))
    response = harness.client.post("/v1/realign", json=realign_body(policy={"text": text}), headers=harness.headers)
    assert response.status_code == 202, response.text
