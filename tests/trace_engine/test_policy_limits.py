"""Issue 10: clause parsing is linear (a 200 KB policy with ~12,000 clauses froze an API process for seconds:
duplicate ids were found with `ids.count` per clause), and a Policy parses its clauses once, not on every
`.clauses` read (the judge reads them for every item). The API's 422 for over-limit policies is in
tests/api/test_policy_limits_api.py."""

from __future__ import annotations

import time

import pytest

from trace_engine import policy as policy_module
from trace_engine.policy import Policy, parse_clauses


def many_clauses(target_chars: int) -> str:
    parts, size, i = ["# Policy\n"], 9, 0
    while size < target_chars:
        part = f"## [C{i}] t\nb\n"
        parts.append(part)
        size += len(part)
        i += 1
    return "".join(parts)


def test_a_200_kb_policy_with_thousands_of_clauses_parses_in_well_under_a_second() -> None:
    text = many_clauses(200_000)
    timings = []
    for _ in range(3):  # the fastest of 3: a GC pause or a busy neighbour must not read as a quadratic parser
        started = time.perf_counter()
        clauses = parse_clauses(text)
        timings.append(time.perf_counter() - started)
    assert len(clauses) > 12_000 and clauses[-1].id == f"C{len(clauses) - 1}"
    assert min(timings) < 0.5, f"parsing {len(text)} characters took {min(timings):.2f} s at best (quadratic?)"


def test_duplicate_ids_are_still_found_in_one_pass() -> None:
    text = many_clauses(50_000) + "## [C7] again\nx\n"
    with pytest.raises(ValueError, match=r"duplicate clause ids: \['C7'\]"):
        parse_clauses(text)


def test_a_policy_parses_its_clauses_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = policy_module.parse_clauses

    def counting(text: str, **kwargs: object) -> list[policy_module.Clause]:
        calls.append(len(text))
        return real(text, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(policy_module, "parse_clauses", counting)
    policy = Policy(text=many_clauses(2_000), name="p")
    first = policy.clauses
    for _ in range(100):  # e.g. one read per judged item
        assert policy.clauses == first
    assert len(calls) == 1, f"clauses were parsed {len(calls)} times for one Policy"
    policy.clauses.append(first[0])  # callers get their own list: the cached clauses cannot be changed
    assert policy.clauses == first
