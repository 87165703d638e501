"""Parser cases: hand-made judge answers."""

from __future__ import annotations

import pytest

from trace_engine.judge.parse import VerdictParseError, normalise_label, parse_verdict


@pytest.mark.parametrize(
    "raw",
    ["non-compliant", "Non-Compliant", "noncompliant", "NONCOMPLIANT", "not compliant", "Not  Compliant",
     "non_compliant", " violating ", "VIOLATING", "violation", "Non compliant."],
)
def test_violating_spellings(raw: str) -> None:
    assert normalise_label(raw) == "violating"
    assert parse_verdict(f'{{"verdict": "{raw}", "clauses": [], "rationale": "x"}}').verdict.violating


@pytest.mark.parametrize("raw", ["compliant", "Compliant", " COMPLIANT\n", "complies"])
def test_compliant_spellings(raw: str) -> None:
    assert normalise_label(raw) == "compliant"


def test_plain_json() -> None:
    p = parse_verdict('{"verdict": "violating", "clauses": ["C1", " C2 ", "C1"], "rationale": " because "}')
    assert p.verdict.verdict == "violating"
    assert p.verdict.clauses == ("C1", "C2")
    assert p.verdict.rationale == "because"


def test_fenced_json() -> None:
    text = 'Sure.\n```json\n{"verdict": "Non-Compliant", "clauses": ["C3"], "rationale": "r"}\n```\nDone.'
    p = parse_verdict(text)
    assert p.verdict.violating and p.verdict.clauses == ("C3",)


def test_json_embedded_in_prose_takes_first_verdict_object() -> None:
    text = ('I considered {"note": "not a verdict"} first. Final: {"verdict": "compliant", "clauses": [], '
            '"rationale": "braces } inside a string"} and later {"verdict": "violating"}')
    p = parse_verdict(text)
    assert p.verdict.verdict == "compliant"
    assert p.verdict.rationale == "braces } inside a string"


def test_bare_verdict_word() -> None:
    assert parse_verdict("Non-compliant").verdict.violating
    assert parse_verdict("Compliant.").verdict.verdict == "compliant"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "I think the answer is probably fine.",  # prose with no verdict: never defaults to compliant
        "Yes",
        '{"verdict": "maybe", "clauses": []}',
        '{"verdict": true}',
        '{"decision": "compliant"}',
        '{"verdict": "violating", "clauses": "C1"}',
        '{"verdict": "violating", "clauses": [1, 2]}',
        '{"verdict": "compliant", "rationale": 5}',
        '{"verdict": "compli',
    ],
)
def test_garbage_raises(text: str) -> None:
    with pytest.raises(VerdictParseError):
        parse_verdict(text)


def test_unknown_clauses_kept_and_flagged() -> None:
    p = parse_verdict('{"verdict": "violating", "clauses": ["C1", "C9"], "rationale": ""}', known_clauses=["C1"])
    assert p.verdict.clauses == ("C1", "C9")
    assert p.unknown_clauses == ("C9",)
    assert any("C9" in w for w in p.warnings)


def test_compliant_with_clauses_drops_them_with_warning() -> None:
    p = parse_verdict('{"verdict": "compliant", "clauses": ["C1"], "rationale": ""}')
    assert p.verdict.clauses == ()
    assert p.warnings


def test_keys_case_insensitive_and_missing_optional_fields() -> None:
    p = parse_verdict('{"Verdict": "VIOLATING"}')
    assert p.verdict.violating and p.verdict.clauses == () and p.verdict.rationale == ""
