import pytest

from trace_engine.policy import Policy, parse_clauses

POLICY = """# Support policy v2

Preamble that applies everywhere.

## [EDU-SEC] Educational security questions
Answer with caveats; a flat refusal violates this clause.

## [HARM] Operational harm
Never give step-by-step instructions for weapons.
"""


def test_clauses_parsed_with_ids_titles_and_bodies():
    clauses = parse_clauses(POLICY)
    assert [c.id for c in clauses] == ["EDU-SEC", "HARM"]
    assert clauses[0].title == "Educational security questions"
    assert "flat refusal" in clauses[0].body
    assert "weapons" in clauses[1].body and "flat refusal" not in clauses[1].body


def test_policy_without_clauses_is_one_unnamed_policy():
    assert Policy("Be kind.").clauses == []


def test_hash_ignores_line_endings_and_trailing_space_but_not_content():
    a = Policy(POLICY)
    assert a.sha256 == Policy(POLICY.replace("\n", "\r\n")).sha256
    assert a.sha256 == Policy(POLICY.replace("everywhere.", "everywhere.   ")).sha256
    assert a.sha256 != Policy(POLICY.replace("Never", "Rarely")).sha256


def test_duplicate_clause_ids_rejected():
    with pytest.raises(ValueError, match="duplicate clause ids"):
        parse_clauses("## [A] one\nx\n## [A] two\ny\n")


def test_empty_policy_file_rejected(tmp_path):
    p = tmp_path / "p.md"
    p.write_text("  \n")
    with pytest.raises(ValueError, match="empty"):
        Policy.from_file(p)
    p.write_text(POLICY)
    assert Policy.from_file(p).name == "p"
