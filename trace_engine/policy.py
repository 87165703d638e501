"""A policy spec: markdown/text with optional named clauses; its hash identifies it everywhere.

Clause syntax inside the text: a line `## [CLAUSE-ID] Title` (any heading level) starts a clause whose body runs
to the next clause heading. Text before the first clause is the preamble. A policy without clause headings is one
unnamed policy.

Parsing is one pass over the lines (linear in the text). Policies that arrive over the API are bounded by
`MAX_POLICY_CHARS` and `MAX_CLAUSES` (`check_policy_size`): a policy is read once per job but its clause list is
rendered into every judge call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from trace_engine.data.pairs import sha256_text

_CLAUSE_HEADING = re.compile(r"^#{1,6}\s*\[(?P<id>[A-Za-z0-9_.\-]+)\]\s*(?P<title>.*)$")
MAX_POLICY_CHARS = 200_000
MAX_CLAUSES = 500


class PolicyTooLarge(ValueError):
    """A policy over `MAX_POLICY_CHARS` characters or `MAX_CLAUSES` clauses."""


@dataclass(frozen=True)
class Clause:
    id: str
    title: str
    body: str


@dataclass(frozen=True)
class Policy:
    text: str
    name: str = "policy"

    @property
    def sha256(self) -> str:
        """Identity of the policy: hash of its normalised text (line endings and trailing space ignored)."""
        normalised = "\n".join(line.rstrip() for line in self.text.replace("\r\n", "\n").strip().split("\n"))
        return sha256_text("policy", normalised)

    @property
    def clauses(self) -> list[Clause]:
        """Parsed once per Policy object (the judge asks for them on every item)."""
        return list(self._parsed_clauses)

    @cached_property
    def _parsed_clauses(self) -> tuple[Clause, ...]:
        return tuple(parse_clauses(self.text))

    @classmethod
    def from_file(cls, path: str | Path, name: str | None = None) -> Policy:
        p = Path(path)
        text = p.read_text(encoding="utf-8")
        if not text.strip():
            raise ValueError(f"policy file {p} is empty")
        return cls(text=text, name=name or p.stem)


def check_policy_size(text: str, *, max_chars: int = MAX_POLICY_CHARS, max_clauses: int = MAX_CLAUSES) -> None:
    """Raise `PolicyTooLarge` for a text over `max_chars` characters or with more than `max_clauses` clauses."""
    if len(text) > max_chars:
        raise PolicyTooLarge(f"policy is {len(text)} characters long; the limit is {max_chars}")
    parse_clauses(text, max_clauses=max_clauses)


def parse_clauses(text: str, *, max_clauses: int | None = None) -> list[Clause]:
    """The named clauses, in order; one pass over the lines. Duplicate ids raise ValueError; more than
    `max_clauses` clauses raise `PolicyTooLarge` (as soon as the count is passed)."""
    clauses: list[Clause] = []
    current: tuple[str, str] | None = None
    body: list[str] = []
    seen: set[str] = set()
    dupes: set[str] = set()
    count = 0
    for line in text.splitlines():
        stripped = line.lstrip()
        m = _CLAUSE_HEADING.match(stripped.rstrip()) if stripped.startswith("#") else None
        if m:
            count += 1
            if max_clauses is not None and count > max_clauses:
                raise PolicyTooLarge(f"policy has more than {max_clauses} clauses (the limit)")
            if m["id"] in seen:
                dupes.add(m["id"])
            seen.add(m["id"])
            if current:
                clauses.append(Clause(current[0], current[1], "\n".join(body).strip()))
            current, body = (m["id"], m["title"].strip()), []
        elif current:
            body.append(line)
    if current:
        clauses.append(Clause(current[0], current[1], "\n".join(body).strip()))
    if dupes:
        raise ValueError(f"policy has duplicate clause ids: {sorted(dupes)}")
    return clauses
