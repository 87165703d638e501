"""Content-addressed verdict store on SQLite: the crash-safe part of triage.

One row per judged (kind, judge_id, template version, policy hash, prompt, response), keyed by the sha256 of those
parts, committed as soon as the verdict arrives. WAL mode with synchronous=NORMAL: a committed row survives the
process being killed (SIGKILL); only a power loss can drop the last few commits. Errors go to a separate table and
are never served as cached answers, so a re-run retries them. Several runs may share one file (`--cache PATH`):
SQLite's locking plus a busy timeout serialise the writers.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from trace_engine.data.pairs import Prompt, prompt_key, sha256_text
from trace_engine.judge.base import Usage, Verdict

KIND_VERDICT = "verdict"
KIND_REWRITE = "rewrite"
SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    judge_id TEXT NOT NULL,
    template_version TEXT NOT NULL,
    policy_sha256 TEXT NOT NULL,
    prompt_sha256 TEXT NOT NULL,
    response_sha256 TEXT NOT NULL,
    verdict_json TEXT,
    text TEXT,
    raw TEXT,
    calls INTEGER NOT NULL DEFAULT 0,
    retries INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS errors (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    kind TEXT NOT NULL,
    judge_id TEXT NOT NULL,
    error TEXT NOT NULL,
    calls INTEGER NOT NULL DEFAULT 0,
    retries INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS errors_key ON errors(key);
"""

_LOOKUP_CHUNK = 500  # stays under SQLite's bound-parameter limit


@dataclass(frozen=True)
class CacheKeyParts:
    """The identity of one judge request; `key` is what the store is addressed by."""

    kind: str
    judge_id: str
    template_version: str
    policy_sha256: str
    prompt: str  # canonical text from `prompt_key`
    response: str

    @property
    def key(self) -> str:
        return sha256_text(
            self.kind, self.judge_id, self.template_version, self.policy_sha256, self.prompt, self.response
        )


def cache_key_parts(
    kind: str, judge_id: str, template_version: str, policy_sha256: str, prompt: Prompt, response: str
) -> CacheKeyParts:
    return CacheKeyParts(kind, judge_id, template_version, policy_sha256, prompt_key(prompt), response)


@dataclass(frozen=True)
class CachedEntry:
    key: str
    kind: str
    verdict: Verdict | None
    text: str | None
    created_at: float


class VerdictStore:
    """SQLite-backed store; one connection, used from the event-loop thread only."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        found = self._db.execute("SELECT value FROM meta WHERE name='schema_version'").fetchone()
        if found is None:
            self._db.execute(
                "INSERT OR IGNORE INTO meta(name, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,)
            )
        elif found[0] != SCHEMA_VERSION:
            raise ValueError(
                f"verdict cache {self.path} has schema {found[0]}, this version needs {SCHEMA_VERSION}"
            )

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> VerdictStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get_many(self, keys: Iterable[str]) -> dict[str, CachedEntry]:
        """Cached answers for the keys that have one (errors are not answers)."""
        wanted = list(dict.fromkeys(keys))
        found: dict[str, CachedEntry] = {}
        for start in range(0, len(wanted), _LOOKUP_CHUNK):
            chunk = wanted[start : start + _LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT key, kind, verdict_json, text, created_at FROM entries WHERE key IN ({marks})", chunk
            )
            for key, kind, verdict_json, text, created_at in rows:
                verdict = Verdict.from_dict(json.loads(verdict_json)) if verdict_json else None
                found[key] = CachedEntry(key, kind, verdict, text, created_at)
        return found

    def put(
        self,
        parts: CacheKeyParts,
        *,
        verdict: Verdict | None = None,
        text: str | None = None,
        usage: Usage | None = None,
        raw: str | None = None,
    ) -> None:
        """Store one answer and commit it now (autocommit), so a crash right after keeps it."""
        if verdict is None and not text:
            raise ValueError("an answer needs a verdict or a non-empty text; record failures with put_error")
        usage = usage or Usage()
        self._db.execute(
            "INSERT OR REPLACE INTO entries(key, kind, judge_id, template_version, policy_sha256, prompt_sha256,"
            " response_sha256, verdict_json, text, raw, calls, retries, prompt_tokens, completion_tokens, created_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                parts.key,
                parts.kind,
                parts.judge_id,
                parts.template_version,
                parts.policy_sha256,
                sha256_text(parts.prompt),
                sha256_text(parts.response),
                json.dumps(verdict.to_dict(), ensure_ascii=False) if verdict is not None else None,
                text,
                raw,
                usage.calls,
                usage.retries,
                usage.prompt_tokens,
                usage.completion_tokens,
                time.time(),
            ),
        )

    def put_error(self, parts: CacheKeyParts, error: str, usage: Usage | None = None) -> None:
        usage = usage or Usage()
        self._db.execute(
            "INSERT INTO errors(key, kind, judge_id, error, calls, retries, created_at) VALUES (?,?,?,?,?,?,?)",
            (parts.key, parts.kind, parts.judge_id, error, usage.calls, usage.retries, time.time()),
        )

    def count(self, kind: str | None = None) -> int:
        if kind is None:
            return int(self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0])
        return int(self._db.execute("SELECT COUNT(*) FROM entries WHERE kind=?", (kind,)).fetchone()[0])

    def errors_for(self, key: str) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT error FROM errors WHERE key=? ORDER BY id", (key,))]

    def raw_for(self, key: str) -> str | None:
        row = self._db.execute("SELECT raw FROM entries WHERE key=?", (key,)).fetchone()
        return row[0] if row else None
