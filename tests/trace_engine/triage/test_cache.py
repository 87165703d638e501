from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from trace_engine.judge.base import Usage, Verdict
from trace_engine.triage.cache import KIND_REWRITE, KIND_VERDICT, VerdictStore, cache_key_parts

BASE = dict(
    kind=KIND_VERDICT, judge_id="j", template_version="v1", policy_sha256="p", prompt="q", response="r"
)


def _key(**change: object) -> str:
    args = {**BASE, **change}
    return cache_key_parts(**args).key  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "change",
    [
        {"judge_id": "j2"},
        {"template_version": "v2"},
        {"policy_sha256": "p2"},
        {"prompt": "q2"},
        {"response": "r2"},
        {"kind": KIND_REWRITE},
        {"prompt": [{"role": "user", "content": "q"}]},
    ],
)
def test_changing_any_part_changes_the_key(change: dict) -> None:
    assert _key(**change) != _key()


def test_key_is_stable_and_unambiguous() -> None:
    assert _key() == _key()
    assert _key(prompt="ab", response="c") != _key(prompt="a", response="bc")


def test_store_round_trip_and_miss_on_any_change(tmp_path: Path) -> None:
    path = tmp_path / "v.sqlite"
    with VerdictStore(path) as store:
        parts = cache_key_parts(**BASE)  # type: ignore[arg-type]
        store.put(
            parts,
            verdict=Verdict("violating", ("C",), "why"),
            usage=Usage(calls=1, prompt_tokens=7),
            raw="{}",
        )
    with VerdictStore(path) as store:  # a fresh connection sees the committed row
        found = store.get_many([_key(), _key(response="other")])
        assert list(found) == [_key()]
        assert found[_key()].verdict == Verdict("violating", ("C",), "why")
        for change in (
            {"judge_id": "j2"},
            {"template_version": "v2"},
            {"policy_sha256": "p2"},
            {"prompt": "x"},
        ):
            assert store.get_many([_key(**change)]) == {}
        assert store.raw_for(_key()) == "{}"
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT prompt_tokens, judge_id, template_version FROM entries").fetchone() == (
        7,
        "j",
        "v1",
    )


def test_errors_are_recorded_but_never_served(tmp_path: Path) -> None:
    with VerdictStore(tmp_path / "v.sqlite") as store:
        parts = cache_key_parts(**BASE)  # type: ignore[arg-type]
        store.put_error(parts, "HTTP 500")
        assert store.get_many([parts.key]) == {}
        assert store.errors_for(parts.key) == ["HTTP 500"]


def test_empty_answer_is_refused(tmp_path: Path) -> None:
    with VerdictStore(tmp_path / "v.sqlite") as store:
        parts = cache_key_parts(**{**BASE, "kind": KIND_REWRITE})  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="non-empty"):
            store.put(parts, text="")


def test_many_keys_lookup_is_chunked(tmp_path: Path) -> None:
    with VerdictStore(tmp_path / "v.sqlite") as store:
        keys = []
        for i in range(1200):
            parts = cache_key_parts(**{**BASE, "response": f"r{i}"})  # type: ignore[arg-type]
            store.put(parts, verdict=Verdict("compliant"))
            keys.append(parts.key)
        assert len(store.get_many(keys + ["missing"])) == 1200
