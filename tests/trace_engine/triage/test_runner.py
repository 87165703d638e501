from __future__ import annotations

import asyncio
from pathlib import Path

from trace_engine.data.pairs import PreferencePair
from trace_engine.triage.cache import KIND_REWRITE, KIND_VERDICT, VerdictStore
from trace_engine.triage.runner import Progress, triage

from .triage_doubles import POLICY, KeywordJudge, make_pairs


def _run(pairs, judge, store, **kw):  # type: ignore[no-untyped-def]
    return asyncio.run(triage(pairs, POLICY, judge, store, **kw))


def test_categories_and_rows(tmp_path: Path) -> None:
    judge = KeywordJudge()
    with VerdictStore(tmp_path / "v.sqlite") as store:
        result = _run(make_pairs(6), judge, store)
    assert result.counts == {"INVERT": 2, "PUNISH": 2, "RETAIN": 2, "ERROR": 0}
    assert [r["category"] for r in result.rows[:3]] == ["INVERT", "PUNISH", "RETAIN"]
    assert result.rows[0]["chosen"] == "good rejected 0" and result.rows[0]["swapped"] is True
    assert (
        result.verdicts.sent == 12 and result.verdicts.cache_hits == 0 and result.usage.prompt_tokens == 120
    )
    assert not result.aborted and result.errors == []


def test_identical_responses_share_one_call(tmp_path: Path) -> None:
    pairs = [
        PreferencePair(id="a", prompt="q", chosen="BAD x", rejected="fine"),
        PreferencePair(id="b", prompt="q", chosen="BAD x", rejected="fine"),
        PreferencePair(id="c", prompt="other q", chosen="BAD x", rejected="fine"),
    ]
    judge = KeywordJudge()
    with VerdictStore(tmp_path / "v.sqlite") as store:
        result = _run(pairs, judge, store)
    assert result.verdicts.requests == 4  # (q, BAD x), (q, fine), (other q, BAD x), (other q, fine)
    assert sum(judge.calls.values()) == 4
    assert result.counts["INVERT"] == 3


def test_rerun_makes_zero_calls_and_a_changed_input_misses(tmp_path: Path) -> None:
    pairs = make_pairs(9)
    with VerdictStore(tmp_path / "v.sqlite") as store:
        first = _run(pairs, KeywordJudge(), store)
        again = KeywordJudge()
        second = _run(pairs, again, store)
        assert sum(again.calls.values()) == 0 and second.verdicts.cache_hits == 18
        assert [r["category"] for r in second.rows] == [r["category"] for r in first.rows]
        other_judge = KeywordJudge(judge_id="keyword-2")
        _run(pairs, other_judge, store)
        assert sum(other_judge.calls.values()) == 18


def test_concurrency_bound_is_reached_and_never_exceeded(tmp_path: Path) -> None:
    judge = KeywordJudge(latency_s=0.01)
    with VerdictStore(tmp_path / "v.sqlite") as store:
        _run(make_pairs(50), judge, store, concurrency=7)
    assert judge.max_in_flight == 7


def test_item_error_is_listed_and_retried_on_rerun(tmp_path: Path) -> None:
    pairs = make_pairs(6)
    judge = KeywordJudge(fail_responses={"good rejected 0"})
    with VerdictStore(tmp_path / "v.sqlite") as store:
        result = _run(pairs, judge, store)
        assert result.counts["ERROR"] == 1 and result.rows[0]["category"] == "ERROR"
        assert "rejected: HTTP 500" in result.rows[0]["error"]
        assert result.errors == [
            {"kind": KIND_VERDICT, "item_ids": ["p0"], "error": "HTTP 500 after retries"}
        ]
        assert result.usage.retries == 2 and not result.aborted
        healthy = KeywordJudge()
        rerun = _run(pairs, healthy, store)
        assert dict(healthy.calls) == {"good rejected 0": 1}
        assert rerun.counts["ERROR"] == 0 and rerun.rows[0]["category"] == "INVERT"


def test_consecutive_failures_stop_cleanly_and_resume(tmp_path: Path) -> None:
    pairs = make_pairs(40)
    with VerdictStore(tmp_path / "v.sqlite") as store:
        good = _run(pairs[:10], KeywordJudge(), store)  # 20 verdicts stored
        assert good.verdicts.succeeded == 20
        down = KeywordJudge(fail_all=True)
        result = _run(pairs, down, store, concurrency=4, max_consecutive_failures=5)
        assert result.aborted and "resume" in (result.abort_reason or "")
        assert 5 <= sum(down.calls.values()) <= 5 + 4 - 1  # stops after 5 failures, in-flight ones finish
        assert result.counts["ERROR"] == 30
        assert store.count(KIND_VERDICT) == 20
        healthy = KeywordJudge()
        resumed = _run(pairs, healthy, store, concurrency=4, max_consecutive_failures=5)
        assert sum(healthy.calls.values()) == 60 and not resumed.aborted
        assert resumed.counts["ERROR"] == 0


def test_oracle_rewrite_is_stored_and_cached(tmp_path: Path) -> None:
    pairs = make_pairs(6)
    with VerdictStore(tmp_path / "v.sqlite") as store:
        judge = KeywordJudge()
        result = _run(pairs, judge, store, oracle=True)
        punish = [r for r in result.rows if r["category"] == "PUNISH"]
        assert [r["oracle_response"] for r in punish] == ["A compliant answer."] * 2
        assert all("oracle_response" not in r for r in result.rows if r["category"] != "PUNISH")
        assert sorted(judge.rewrites) == ["BAD chosen 1", "BAD chosen 4"]
        assert store.count(KIND_REWRITE) == 2
        again = KeywordJudge(rewrite_text=None)
        rerun = _run(pairs, again, store, oracle=True)
        assert sum(again.rewrites.values()) == 0 and rerun.rewrites.cache_hits == 2


def test_oracle_failure_is_recorded_never_empty(tmp_path: Path) -> None:
    with VerdictStore(tmp_path / "v.sqlite") as store:
        for judge in (KeywordJudge(rewrite_text=None), KeywordJudge(rewrite_text="   ")):
            result = _run(make_pairs(3), judge, store, oracle=True)
            punish = result.rows[1]
            assert "oracle_response" not in punish and punish["oracle_error"]
            assert result.errors[0]["kind"] == KIND_REWRITE and result.errors[0]["item_ids"] == ["p1"]
        assert store.count(KIND_REWRITE) == 0


def test_progress_reports_reach_the_total(tmp_path: Path) -> None:
    seen: list[Progress] = []
    with VerdictStore(tmp_path / "v.sqlite") as store:
        _run(make_pairs(5)[:2], KeywordJudge(), store)
        _run(make_pairs(5), KeywordJudge(), store, progress=seen.append)
    assert seen[0].done == 4 and seen[0].total == 10  # cached ones count as done
    assert seen[-1].done == 10 and seen[-1].eta_s == 0
