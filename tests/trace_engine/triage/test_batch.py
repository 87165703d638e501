from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.support.fake_openai import FakeOpenAI
from trace_engine.judge.openai_judge import OpenAIJudge
from trace_engine.judge.rules import RulesJudge
from trace_engine.policy import Policy
from trace_engine.triage.batch import batch_state_path, openai_batch_sender
from trace_engine.triage.cache import KIND_VERDICT, VerdictStore
from trace_engine.triage.runner import triage, verdict_requests

from .triage_doubles import make_pairs

POLICY = Policy(text="## [C1] No BAD\nA response containing BAD violates C1.\n")


@pytest.fixture
def fake() -> FakeOpenAI:
    with FakeOpenAI(violate_marker="BAD") as server:
        yield server


def test_state_path_depends_on_the_request_set_only() -> None:
    requests, _ = verdict_requests(make_pairs(4), "j", "v", "p")
    listed = list(requests.values())
    assert batch_state_path(Path("d"), listed) == batch_state_path(Path("d"), listed[::-1])
    assert batch_state_path(Path("d"), listed) != batch_state_path(Path("d"), listed[1:])


def test_batch_needs_an_openai_judge(tmp_path: Path) -> None:
    rules = tmp_path / "r.json"
    rules.write_text(json.dumps({"version": 1, "clauses": [{"id": "C1", "violating_if_response": ["BAD"]}]}))
    with pytest.raises(ValueError, match="openai"):
        openai_batch_sender(RulesJudge.from_file(rules), POLICY, tmp_path)


def _run(judge: OpenAIJudge, store: VerdictStore, pairs, state_dir: Path, timeout: float | None = None):  # type: ignore[no-untyped-def]
    sender = openai_batch_sender(judge, POLICY, state_dir, api_key_env=None, poll_interval=0.01)
    return asyncio.run(asyncio.wait_for(triage(pairs, POLICY, judge, store, batch=sender), timeout))


def test_batch_submits_only_uncached_and_resumes_the_same_batch(tmp_path: Path, fake: FakeOpenAI) -> None:
    pairs = make_pairs(6)
    with VerdictStore(tmp_path / "v.sqlite") as store:
        online = OpenAIJudge("m", base_url=fake.base_url, api_key="k")
        asyncio.run(triage(pairs[:2], POLICY, online, store))  # 4 verdicts cached online
        fake.reset()
        fake.configure(batch_polls_to_complete=10_000)
        with pytest.raises(TimeoutError):  # "crash" while the batch is pending
            _run(OpenAIJudge("m", base_url=fake.base_url, api_key="k"), store, pairs, tmp_path / "batch", 0.5)
        assert fake.stats()["batches_created"] == 1
        fake.configure(batch_polls_to_complete=1)
        result = _run(OpenAIJudge("m", base_url=fake.base_url, api_key="k"), store, pairs, tmp_path / "batch")
        stats = fake.stats()
        assert stats["batches_created"] == 1 and stats["files_uploaded"] == 1  # polled, not resubmitted
        assert stats["calls_total"] == 0  # no online chat calls
        assert result.verdicts.cache_hits == 4 and result.verdicts.sent == 8
        assert result.counts == {"INVERT": 2, "PUNISH": 2, "RETAIN": 2, "ERROR": 0}
        assert store.count(KIND_VERDICT) == 12
        rerun = _run(OpenAIJudge("m", base_url=fake.base_url, api_key="k"), store, pairs, tmp_path / "batch")
        assert fake.stats()["batches_created"] == 1 and rerun.verdicts.cache_hits == 12


def test_batch_item_failures_are_recorded_and_retried_in_a_new_batch(
    tmp_path: Path, fake: FakeOpenAI
) -> None:
    pairs = make_pairs(3)
    fake.configure(batch_polls_to_complete=1, batch_failed_markers=["good rejected 0"])
    with VerdictStore(tmp_path / "v.sqlite") as store:
        judge = OpenAIJudge("m", base_url=fake.base_url, api_key="k")
        result = _run(judge, store, pairs, tmp_path / "batch")
        assert result.counts["ERROR"] == 1 and result.errors[0]["item_ids"] == ["p0"]
        fake.configure(batch_failed_markers=[])
        retry = _run(OpenAIJudge("m", base_url=fake.base_url, api_key="k"), store, pairs, tmp_path / "batch")
        assert retry.counts["ERROR"] == 0 and retry.verdicts.sent == 1
        assert fake.stats()["batches_created"] == 2
