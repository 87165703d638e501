"""Pure parser of a judge's answer into a `Verdict`.

Strict where it matters (an unrecognisable answer is an error, never "compliant"), lenient about form, because a
server may ignore `response_format`: accepts a bare JSON object, JSON inside a ``` code fence, the first balanced
JSON object with a "verdict" key embedded in prose, or an answer that is only a verdict word. Verdict spellings
are normalised: case, spaces, `_` and `-` do not matter, and "non-compliant" / "noncompliant" / "not compliant"
mean violating (the published code read some of these as compliant).
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from trace_engine.judge.base import Verdict, VerdictLabel


class VerdictParseError(ValueError):
    """The answer holds no recognisable verdict."""


@dataclass(frozen=True)
class ParsedVerdict:
    verdict: Verdict
    unknown_clauses: tuple[str, ...] = ()  # clause ids the policy does not name (kept in the verdict)
    warnings: tuple[str, ...] = ()


_COMPLIANT = {"compliant", "compliance", "complies", "safe"}
_VIOLATING = {
    "violating", "violation", "violates", "violated", "noncompliant", "notcompliant", "doesnotcomply",
    "unsafe", "violative",
}
_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n?(.*?)```", re.DOTALL)


def normalise_label(raw: str) -> VerdictLabel | None:
    """'Non-Compliant ' -> 'violating'; anything unrecognised -> None."""
    key = re.sub(r"[\s_\-]+", "", raw.strip().strip(".!\"'`*").lower())
    if key in _VIOLATING:
        return "violating"
    if key in _COMPLIANT:
        return "compliant"
    return None


def parse_verdict(text: str, known_clauses: Iterable[str] | None = None) -> ParsedVerdict:
    """Parse a judge answer; raise `VerdictParseError` if it holds no recognisable verdict.

    `known_clauses`: the policy's clause ids; ids outside it are kept but reported in `unknown_clauses`.
    """
    if not isinstance(text, str) or not text.strip():
        raise VerdictParseError("empty judge answer")
    obj = _find_verdict_object(text)
    if obj is None:
        label = normalise_label(text)
        if label is None:
            raise VerdictParseError(f"no JSON verdict object in answer: {_preview(text)}")
        return ParsedVerdict(Verdict(verdict=label))
    return _verdict_from_object(obj, known_clauses)


def _verdict_from_object(obj: dict[str, Any], known_clauses: Iterable[str] | None) -> ParsedVerdict:
    fields = {str(k).strip().lower(): v for k, v in obj.items()}
    raw_label = fields.get("verdict")
    if not isinstance(raw_label, str):
        raise VerdictParseError(f"'verdict' must be a string, got {type(raw_label).__name__}")
    label = normalise_label(raw_label)
    if label is None:
        raise VerdictParseError(f"unrecognised verdict {raw_label!r}")
    clauses = _clause_ids(fields.get("clauses"))
    rationale = fields.get("rationale")
    if rationale is None:
        rationale = ""
    if not isinstance(rationale, str):
        raise VerdictParseError(f"'rationale' must be a string, got {type(rationale).__name__}")
    warnings: list[str] = []
    if label == "compliant" and clauses:
        warnings.append(f"compliant verdict listed clauses {list(clauses)}; dropped")
        clauses = ()
    unknown: tuple[str, ...] = ()
    if known_clauses is not None:
        known = set(known_clauses)
        unknown = tuple(c for c in clauses if c not in known)
        if unknown:
            warnings.append(f"unknown clause ids {list(unknown)}")
    return ParsedVerdict(Verdict(label, clauses, rationale.strip()), unknown, tuple(warnings))


def _clause_ids(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise VerdictParseError(f"'clauses' must be a list of strings, got {type(raw).__name__}")
    ids: list[str] = []
    for item in raw:
        if not isinstance(item, str):
            raise VerdictParseError(f"'clauses' items must be strings, got {type(item).__name__}")
        item = item.strip()
        if item and item not in ids:
            ids.append(item)
    return tuple(ids)


def _find_verdict_object(text: str) -> dict[str, Any] | None:
    """The first JSON object with a 'verdict' key: whole text, then code fences, then embedded in prose."""
    for candidate in _candidates(text):
        if isinstance(candidate, dict) and any(str(k).strip().lower() == "verdict" for k in candidate):
            return candidate
    return None


def _candidates(text: str) -> Iterator[Any]:
    fenced = (m.group(1) for m in _FENCE.finditer(text))
    embedded = (text[start:end] for start, end in _balanced_objects(text))
    for chunk in itertools.chain([text], fenced, embedded):
        try:
            value = json.loads(chunk)
        except json.JSONDecodeError:
            continue
        yield value


def _balanced_objects(text: str) -> Iterator[tuple[int, int]]:
    """Spans of balanced {...} regions in order of their opening brace (string literals respected)."""
    for start in (i for i, ch in enumerate(text) if ch == "{"):
        depth, in_string, escaped = 0, False, False
        for i in range(start, len(text)):
            ch = text[i]
            if in_string:
                if escaped:
                    escaped = False
                elif ch == "\\":
                    escaped = True
                elif ch == '"':
                    in_string = False
            elif ch == '"':
                in_string = True
            elif ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    yield start, i + 1
                    break


def _preview(text: str, n: int = 120) -> str:
    t = " ".join(text.split())
    return repr(t if len(t) <= n else t[:n] + "...")
