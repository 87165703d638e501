"""Row validation for preference pairs: never crashes mid-run, reports every problem with its row and field.

A malformed row (missing or empty field, wrong type, chosen == rejected, malformed chat messages, undecodable
JSON) becomes an error `Issue` and the row is skipped. Duplicate pairs (same prompt, chosen and rejected) are a
warning and dropped by default. A repeated `id` is an error for the later row. The `ValidationReport` carries the
counts and the issues; the CLI prints it, the triage stage and the upload endpoint read `to_dict()`.

Rows without an `id` get a stable id derived from their content (`derive_pair_id`): the same pair always gets the
same id, whatever file or order it comes from.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from trace_engine.categories import CATEGORIES
from trace_engine.data.io import RawRow
from trace_engine.data.pairs import CORE_FIELDS, PreferencePair, prompt_key, sha256_text

CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")
DERIVED_ID_PREFIX = "pair-"
# NUL cannot be stored in a Postgres text/JSON value, and a lone surrogate cannot be encoded as UTF-8: a row holding
# either would fail every later write (the job would retry forever), so validation rejects it up front.
UNSTORABLE_CHARS = re.compile("[\x00\ud800-\udfff]")


@dataclass(frozen=True)
class Issue:
    """One problem: where (1-based row, field) and what. `row` is None for problems that concern no single row."""

    row: int | None
    field: str | None
    kind: str  # machine-readable code, e.g. "missing_field", "duplicate_pair"
    message: str
    severity: str = "error"  # "error": row skipped / run fails under strict; "warning": informational

    def to_dict(self) -> dict[str, Any]:
        return {"row": self.row, "field": self.field, "kind": self.kind, "severity": self.severity,
                "message": self.message}

    def __str__(self) -> str:
        where = [f"row {self.row}"] if self.row is not None else []
        if self.field:
            where.append(f"field '{self.field}'")
        prefix = ", ".join(where) or "dataset"
        return f"{self.severity}: {prefix}: {self.message}"


@dataclass
class ValidationReport:
    """Counts and issues of one validation run; `issues` keeps the first `max_stored_issues`, counts stay exact."""

    source: str
    format: str = ""
    preset: str | None = None
    rows_read: int = 0
    pairs_kept: int = 0
    rows_skipped: int = 0
    duplicates_dropped: int = 0
    duplicates_kept: int = 0
    ids_derived: int = 0
    preset_counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    error_count: int = 0
    warning_count: int = 0
    issues_not_stored: int = 0
    max_stored_issues: int = 1000
    counts_by_kind: Counter[str] = field(default_factory=Counter)  # every issue, stored or not

    @property
    def ok(self) -> bool:
        """True when no row had an error (warnings such as dropped duplicates do not count)."""
        return self.error_count == 0

    def add(self, issue: Issue) -> None:
        if issue.severity == "error":
            self.error_count += 1
        else:
            self.warning_count += 1
        self.counts_by_kind[issue.kind] += 1
        if len(self.issues) < self.max_stored_issues:
            self.issues.append(issue)
        else:
            self.issues_not_stored += 1

    def count_case(self, case: str) -> None:
        self.preset_counts[case] = self.preset_counts.get(case, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source, "format": self.format, "preset": self.preset, "ok": self.ok,
            "rows_read": self.rows_read, "pairs_kept": self.pairs_kept, "rows_skipped": self.rows_skipped,
            "duplicates_dropped": self.duplicates_dropped, "duplicates_kept": self.duplicates_kept,
            "ids_derived": self.ids_derived, "preset_counts": dict(self.preset_counts),
            "error_count": self.error_count, "warning_count": self.warning_count,
            "issues_by_kind": dict(self.counts_by_kind.most_common()),
            "issues": [i.to_dict() for i in self.issues], "issues_not_stored": self.issues_not_stored,
            "issues_capped": self.issues_not_stored > 0, "issues_note": self.issues_note(),
            "notes": list(self.notes),
        }

    def issues_note(self) -> str:
        """What `issues` holds relative to the counts (the examples are capped; the counts never are)."""
        total = self.error_count + self.warning_count
        if not self.issues_not_stored:
            return f"issues lists all {total} issue(s)"
        return (f"issues lists the first {len(self.issues)} of {total} issues (capped at {self.max_stored_issues}); "
                "error_count, warning_count and issues_by_kind count every issue")

    def format_text(self, max_issues: int = 20) -> str:
        """A short human summary for the terminal."""
        lines = [
            f"source: {self.source}" + (f" (format {self.format})" if self.format else ""),
            f"rows read: {self.rows_read}; pairs kept: {self.pairs_kept}; rows skipped (errors): {self.rows_skipped}; "
            f"duplicates dropped: {self.duplicates_dropped}; duplicates kept: {self.duplicates_kept}; "
            f"ids derived from content: {self.ids_derived}",
        ]
        if self.preset:
            cases = ", ".join(f"{k}={v}" for k, v in sorted(self.preset_counts.items())) or "none"
            lines.append(f"preset {self.preset}: {cases}")
        lines += [f"note: {n}" for n in self.notes]
        lines.append(f"errors: {self.error_count}; warnings: {self.warning_count}")
        if self.counts_by_kind:
            lines.append("by kind: " + ", ".join(f"{k}={n}" for k, n in self.counts_by_kind.most_common()))
        for issue in self.issues[:max_issues]:
            lines.append(f"  {issue}")
        hidden = self.error_count + self.warning_count - min(len(self.issues), max_issues)
        if hidden > 0:
            kept = (f"; it keeps the first {self.max_stored_issues}" if self.issues_not_stored else "")
            lines.append(f"  ... and {hidden} more (see the JSON report{kept})")
        return "\n".join(lines)


class DatasetValidationError(Exception):
    """Raised under strict validation when any row has an error; carries the full report."""

    def __init__(self, report: ValidationReport):
        self.report = report
        super().__init__(f"{report.source}: {report.error_count} row error(s); first: "
                         f"{report.issues[0] if report.issues else '?'}")


@dataclass(frozen=True)
class PresetOutcome:
    """What a preset made of one source row: a pair row (or None when the row is skipped) and its case."""

    row: dict[str, Any] | None
    case: str
    issue: Issue | None = None


class Preset(Protocol):
    """Maps a source dataset's own columns to pair rows (see `trace_engine.data.presets`)."""

    name: str

    def map_row(self, data: dict[str, Any], row: int) -> PresetOutcome: ...


def derive_pair_id(prompt: Any, chosen: str, rejected: str) -> str:
    """Stable content id: a hash of (prompt, chosen, rejected), so re-reading a file gives the same ids."""
    return DERIVED_ID_PREFIX + sha256_text(prompt_key(prompt), chosen, rejected)[:20]


def check_prompt(prompt: Any, row: int) -> list[Issue]:
    """A prompt is a non-empty string or a non-empty list of {role, content} chat messages."""
    if isinstance(prompt, str):
        return [] if prompt.strip() else [Issue(row, "prompt", "empty_field", "prompt is empty")]
    if not isinstance(prompt, list):
        return [Issue(row, "prompt", "wrong_type",
                      f"prompt must be a string or a list of chat messages, not {_type_name(prompt)}")]
    if not prompt:
        return [Issue(row, "prompt", "bad_chat_messages", "prompt is an empty list of chat messages")]
    issues: list[Issue] = []
    for index, message in enumerate(prompt):
        where = f"prompt[{index}]"
        if not isinstance(message, dict):
            issues.append(Issue(row, where, "bad_chat_messages",
                                f"chat message must be an object with role and content, not {_type_name(message)}"))
            continue
        role, content = message.get("role"), message.get("content")
        if role not in CHAT_ROLES:
            issues.append(Issue(row, f"{where}.role", "bad_chat_messages",
                                f"role must be one of {', '.join(CHAT_ROLES)}, not {role!r}"))
        if not isinstance(content, str):
            issues.append(Issue(row, f"{where}.content", "bad_chat_messages",
                                f"content must be a string, not {_type_name(content)}"))
        elif not _json_safe(message):
            issues.append(Issue(row, where, "bad_chat_messages", "chat message holds a value JSON cannot store"))
    if not issues and not any(m["content"].strip() for m in prompt):
        issues.append(Issue(row, "prompt", "empty_field", "every chat message in the prompt is empty"))
    return issues


def check_row(data: Any, row: int, *, require_category: bool = False) -> list[Issue]:
    """All errors of one decoded row (empty list: the row is a valid pair)."""
    if not isinstance(data, dict):
        return [Issue(row, None, "not_an_object", f"row must be a JSON object, not {_type_name(data)}")]
    issues: list[Issue] = []
    if "prompt" not in data or data["prompt"] is None:
        issues.append(Issue(row, "prompt", "missing_field", "prompt is missing"))
    else:
        issues += check_prompt(data["prompt"], row)
    for name in ("chosen", "rejected"):
        value = data.get(name)
        if value is None:
            issues.append(Issue(row, name, "missing_field", f"{name} is missing"))
        elif not isinstance(value, str):
            issues.append(Issue(row, name, "wrong_type", f"{name} must be a string, not {_type_name(value)}"))
        elif not value.strip():
            issues.append(Issue(row, name, "empty_field", f"{name} is empty"))
    chosen, rejected = data.get("chosen"), data.get("rejected")
    if isinstance(chosen, str) and chosen.strip() and chosen == rejected:
        issues.append(Issue(row, "rejected", "identical_responses", "chosen and rejected are identical"))
    if "id" in data and data["id"] is not None:
        pair_id = data["id"]
        if isinstance(pair_id, bool) or not isinstance(pair_id, (str, int)):
            issues.append(Issue(row, "id", "wrong_type", f"id must be a string or an integer, not {_type_name(pair_id)}"))
        elif isinstance(pair_id, str) and not pair_id.strip():
            issues.append(Issue(row, "id", "empty_field", "id is an empty string (omit it to derive one)"))
    for name, value in data.items():
        if name not in CORE_FIELDS and not _json_safe(value):
            issues.append(Issue(row, name, "wrong_type", f"{name} holds a value JSON cannot store ({_type_name(value)})"))
    issues += check_storable(data, row)
    if require_category and data.get("category") not in CATEGORIES:
        kind = "missing_field" if data.get("category") is None else "bad_category"
        issues.append(Issue(row, "category", kind,
                            f"category must be one of {', '.join(CATEGORIES)}, not {data.get('category')!r}"))
    return issues


def unstorable_char(text: str) -> str | None:
    """A description of the first character of `text` no database or UTF-8 file can hold, or None."""
    found = UNSTORABLE_CHARS.search(text)
    if found is None:
        return None
    code = ord(found.group())
    return "a NUL character (U+0000)" if code == 0 else f"an unpaired surrogate (U+{code:04X})"


def find_unstorable(value: Any, where: str = "") -> tuple[str, str] | None:
    """(location, description) of the first string (value or object key) in `value` holding a NUL character or a
    lone surrogate; the location is a dotted path with the key names escaped. Iterative, so any depth is safe."""
    stack: list[tuple[Any, str]] = [(value, where)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            bad = unstorable_char(item)
            if bad is not None:
                return path, bad
        elif isinstance(item, dict):
            for key, child in item.items():
                name = escape_name(str(key))
                child_path = f"{path}.{name}" if path else name
                if isinstance(key, str) and (bad := unstorable_char(key)) is not None:
                    return child_path, f"{bad} in the key"
                stack.append((child, child_path))
        elif isinstance(item, (list, tuple)):
            stack.extend((child, f"{path}[{index}]") for index, child in enumerate(item))
    return None


def escape_name(name: str) -> str:
    """A key name safe to store and print: NUL and surrogates (and other control characters) escaped."""
    return name if name.isprintable() else name.encode("unicode_escape").decode("ascii")


def check_storable(data: dict[str, Any], row: int) -> list[Issue]:
    """One error per top-level field holding a NUL character or a lone surrogate anywhere inside it."""
    issues = []
    for name, value in data.items():
        found = find_unstorable({name: value})
        if found is not None:
            where, what = found
            issues.append(Issue(row, where, "unstorable_text",
                                f"{where} contains {what}, which cannot be stored; remove or replace it"))
    return issues


@dataclass
class PairValidator:
    """Streaming validator: feed raw rows one at a time, collect kept pairs and the report."""

    report: ValidationReport
    preset: Preset | None = None
    drop_duplicates: bool = True
    require_category: bool = False
    _seen_pairs: dict[str, int] = field(default_factory=dict)  # content hash -> first row
    _seen_ids: dict[str, int] = field(default_factory=dict)  # id -> first row

    def feed(self, raw: RawRow) -> PreferencePair | None:
        """Validate one row; returns the pair to keep, or None (the reason is in the report)."""
        self.report.rows_read += 1
        if raw.error is not None:
            return self._skip([Issue(raw.row, None, "bad_json", raw.error)])
        data = raw.data
        if self.preset is not None:
            if not isinstance(data, dict):
                return self._skip([Issue(raw.row, None, "not_an_object", f"row must be an object, not {_type_name(data)}")])
            outcome = self.preset.map_row(data, raw.row)
            self.report.count_case(outcome.case)
            if outcome.row is None:  # skipped by the preset's own rule, or a malformed source row
                return self._skip([outcome.issue]) if outcome.issue is not None else None
            data = outcome.row
        issues = check_row(data, raw.row, require_category=self.require_category)
        if issues:
            return self._skip(issues)
        return self._dedupe(data, raw.row)

    def _dedupe(self, data: dict[str, Any], row: int) -> PreferencePair | None:
        content_hash = sha256_text(prompt_key(data["prompt"]), data["chosen"], data["rejected"])
        first_row = self._seen_pairs.get(content_hash)
        if first_row is not None:
            action = "dropped" if self.drop_duplicates else "kept"
            self.report.add(Issue(row, None, "duplicate_pair",
                                  f"same prompt, chosen and rejected as row {first_row} ({action})", "warning"))
            if self.drop_duplicates:
                self.report.duplicates_dropped += 1
                return None
            self.report.duplicates_kept += 1
        if data.get("id") is None:
            pair_id = derive_pair_id(data["prompt"], data["chosen"], data["rejected"])
            if first_row is not None:  # a kept duplicate needs its own id
                pair_id = f"{pair_id}-r{row}"
            self.report.ids_derived += 1
        else:
            pair_id = str(data["id"])
        first_id_row = self._seen_ids.get(pair_id)
        if first_id_row is not None:
            return self._skip([Issue(row, "id", "duplicate_id", f"id {pair_id!r} already used by row {first_id_row}")])
        self._seen_ids[pair_id] = row
        self._seen_pairs.setdefault(content_hash, row)
        self.report.pairs_kept += 1
        return PreferencePair.from_row({**data, "id": pair_id})

    def _skip(self, issues: list[Issue]) -> None:
        for issue in issues:
            self.report.add(issue)
        self.report.rows_skipped += 1
        return None


def validate_rows(
    raw_rows: Iterable[RawRow],
    report: ValidationReport,
    *,
    preset: Preset | None = None,
    drop_duplicates: bool = True,
    require_category: bool = False,
) -> list[PreferencePair]:
    """Validate every row (never stops early) and return the kept pairs; `report` is filled in place."""
    validator = PairValidator(report, preset=preset, drop_duplicates=drop_duplicates,
                              require_category=require_category)
    pairs = []
    for raw in raw_rows:
        pair = validator.feed(raw)
        if pair is not None:
            pairs.append(pair)
    return pairs


def _json_safe(value: Any) -> bool:
    """Whether the value survives a JSONL write (Parquet can hold bytes, dates and the like)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return True
    try:
        json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        return False
    return True


def _type_name(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number",
             bool: "a boolean", type(None): "null"}
    return names.get(type(value), type(value).__name__)
