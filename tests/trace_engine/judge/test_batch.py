"""Batch mode end to end against the fake server, including resume from the state file."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.support.fake_openai import FakeOpenAI
from trace_engine.judge.base import JudgeOutcome
from trace_engine.judge.batch import (
    BatchClientConfig,
    BatchRequest,
    BatchStateError,
    build_judge_requests,
    outcome_from_line,
    rewrite_request,
    run_batch,
)
from trace_engine.judge.prompt import RESPONSE_FORMAT
from trace_engine.policy import Policy

POLICY = Policy("## [C1] Weapons\nNo weapons.\n")
RESPONSES = ["fine", "VIOLATE[C1] step 1", "also fine", "VIOLATE", "VIOLATE[C7] odd clause"]


def _requests() -> list[BatchRequest]:
    items = [(f"key-{i}", POLICY, f"prompt {i}", r) for i, r in enumerate(RESPONSES)]
    return build_judge_requests("judge-model", items)


def _cfg(fake: FakeOpenAI, **kw: int) -> BatchClientConfig:
    return BatchClientConfig(base_url=fake.base_url, api_key="sk-test", max_retries=0, **kw)


def _run(fake: FakeOpenAI, requests: list[BatchRequest], state: Path, **kw: object) -> dict[str, JudgeOutcome]:
    return asyncio.run(run_batch(_cfg(fake), requests, state, poll_interval=0.01, **kw))  # type: ignore[arg-type]


def test_requests_carry_judge_settings() -> None:
    body = _requests()[0].body
    assert body["temperature"] == 0 and body["response_format"] == RESPONSE_FORMAT
    assert json.loads(_requests()[0].line)["url"] == "/v1/chat/completions"


def test_end_to_end_and_rerun_creates_no_second_batch(fake: FakeOpenAI, tmp_path: Path) -> None:
    fake.configure(batch_polls_to_complete=3)
    state = tmp_path / "state.json"
    out = _run(fake, _requests(), state)
    assert [out[f"key-{i}"].verdict.verdict for i in range(5)] == [  # type: ignore[union-attr]
        "compliant", "violating", "compliant", "violating", "violating"]
    assert out["key-1"].verdict.clauses == ("C1",)  # type: ignore[union-attr]
    assert out["key-4"].warnings and "C7" in out["key-4"].warnings[0]  # unknown clause flagged, kept
    assert out["key-1"].usage.calls == 1 and out["key-1"].usage.prompt_tokens > 0
    stats = fake.stats()
    assert stats["batches_created"] == 1 and stats["files_uploaded"] == 1 and stats["batch_polls"] == 3
    saved = json.loads(state.read_text())
    assert saved["chunks"][0]["status"] == "completed" and "fine" not in state.read_text()  # ids, not data

    again = _run(fake, _requests(), state)
    assert {k: v.verdict for k, v in again.items()} == {k: v.verdict for k, v in out.items()}
    assert fake.stats()["batches_created"] == 1 and fake.stats()["files_uploaded"] == 1


class _Crash(Exception):
    pass


def test_resume_after_crash_polls_the_existing_batch(fake: FakeOpenAI, tmp_path: Path) -> None:
    fake.configure(batch_polls_to_complete=3)
    state = tmp_path / "state.json"

    async def crash(_: float) -> None:
        raise _Crash()

    with pytest.raises(_Crash):
        _run(fake, _requests(), state, sleep=crash)
    mid = json.loads(state.read_text())["chunks"][0]
    assert mid["batch_id"] and mid["status"] == "in_progress"

    out = _run(fake, _requests(), state)
    assert out["key-3"].verdict is not None and out["key-3"].verdict.violating
    assert fake.stats()["batches_created"] == 1 and fake.stats()["files_uploaded"] == 1


def test_state_for_other_requests_is_refused(fake: FakeOpenAI, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    _run(fake, _requests(), state)
    with pytest.raises(BatchStateError, match="different set of requests"):
        _run(fake, _requests()[:3], state)


def test_item_errors_and_chunking(fake: FakeOpenAI, tmp_path: Path) -> None:
    fake.configure(batch_failed_markers=["also fine"], batch_polls_to_complete=1)
    requests = [*_requests(), rewrite_request("judge-model", "rw-0", POLICY, "how to stay safe")]
    out = asyncio.run(run_batch(_cfg(fake, max_requests_per_batch=2), requests, tmp_path / "s.json",
                                poll_interval=0.01))
    assert fake.stats()["batches_created"] == 3
    assert out["key-2"].error is not None and out["key-2"].transient  # scripted server_error item
    assert out["rw-0"].text and "how to stay safe" in out["rw-0"].text
    assert sum(o.error is None for o in out.values()) == 5


def test_duplicate_custom_ids_rejected(fake: FakeOpenAI, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="duplicate custom_id"):
        _run(fake, [*_requests(), _requests()[0]], tmp_path / "s.json")


def test_outcome_from_line_errors_are_classified() -> None:
    req = _requests()[0]
    not_found = {"custom_id": "key-0", "response": {"status_code": 404, "body": {"error": {"message": "no model"}}}}
    assert outcome_from_line(not_found, req).error_kind == "permanent"
    limited = {"custom_id": "key-0", "response": {"status_code": 429, "body": {"error": {"message": "slow"}}}}
    assert outcome_from_line(limited, req).transient
    garbage = {"custom_id": "key-0", "response": {"status_code": 200, "body": {
        "choices": [{"message": {"content": "no idea"}}]}}}
    bad = outcome_from_line(garbage, req)
    assert bad.verdict is None and bad.error_kind == "permanent" and bad.raw == "no idea"


def test_run_judge_batch_uses_the_online_judge_settings(fake: FakeOpenAI, tmp_path: Path) -> None:
    from trace_engine.judge.batch import run_judge_batch
    from trace_engine.judge.openai_judge import OpenAIJudge

    judge = OpenAIJudge("judge-model", base_url=fake.base_url, api_key="sk-test")
    items = [("a", "p1", "VIOLATE[C1]"), ("b", "p2", "fine")]

    async def go() -> tuple[dict[str, JudgeOutcome], dict[str, JudgeOutcome]]:
        try:
            verdicts = await run_judge_batch(judge, POLICY, items, tmp_path / "v.json", poll_interval=0.01)
            rewrites = await run_judge_batch(judge, POLICY, items[:1], tmp_path / "r.json", rewrite=True,
                                             poll_interval=0.01)
            return verdicts, rewrites
        finally:
            await judge.aclose()

    verdicts, rewrites = asyncio.run(go())
    assert verdicts["a"].verdict.clauses == ("C1",) and verdicts["b"].verdict.verdict == "compliant"  # type: ignore[union-attr]
    assert rewrites["a"].text and "p1" in rewrites["a"].text
    assert judge.usage.calls == 3 and judge.usage.prompt_tokens > 0
