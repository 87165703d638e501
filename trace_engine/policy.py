"""A policy spec: markdown/text with optional named clauses; its hash identifies it everywhere.

Clause syntax inside the text: a line `## [CLAUSE-ID] Title` (any heading level) starts a clause whose body runs
to the next clause heading. Text before the first clause is the preamble. A policy without clause headings is one
unnamed policy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from trace_engine.data.pairs import sha256_text

_CLAUSE_HEADING = re.compile(r"^#{1,6}\s*\[(?P<id>[A-Za-z0-9_.\-]+)\]\s*(?P<title>.*)$")


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
        return parse_clauses(self.text)

    @classmethod
    def from_file(cls, path: str | Path, name: str | None = None) -> Policy:
        p = Path(path)
        text = p.read_text(encoding="utf-8")
        if not text.strip():
            raise ValueError(f"policy file {p} is empty")
        return cls(text=text, name=name or p.stem)


def parse_clauses(text: str) -> list[Clause]:
    clauses: list[Clause] = []
    current: tuple[str, str] | None = None
    body: list[str] = []
    for line in text.splitlines():
        m = _CLAUSE_HEADING.match(line.strip())
        if m:
            if current:
                clauses.append(Clause(current[0], current[1], "\n".join(body).strip()))
            current, body = (m["id"], m["title"].strip()), []
        elif current:
            body.append(line)
    if current:
        clauses.append(Clause(current[0], current[1], "\n".join(body).strip()))
    ids = [c.id for c in clauses]
    dupes = {i for i in ids if ids.count(i) > 1}
    if dupes:
        raise ValueError(f"policy has duplicate clause ids: {sorted(dupes)}")
    return clauses
