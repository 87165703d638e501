"""`realign triage` end to end: real CLI, real rules judge, real OpenAI judge on a loopback server."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fake_openai import FakeOpenAI, spawn_fake_openai
from trace_engine.cli import main
from trace_engine.cli.triage_cmd import ProgressPrinter
from trace_engine.triage.runner import Progress

REPO_ROOT = Path(__file__).resolve().parents[3]
SAMPLE = REPO_ROOT / "trace_engine" / "resources" / "sample"
POLICY_TEXT = "## [C1] No VIOLATE\nA response containing the word VIOLATE violates C1.\n"


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


def _write_pairs(path: Path, n: int, shapes: str = "IPR") -> Path:
    texts = {
        "I": ("VIOLATE chosen", "fine rejected"),
        "P": ("VIOLATE chosen", "VIOLATE rejected"),
        "R": ("fine chosen", "VIOLATE r"),
    }
    with path.open("w") as fh:
        for i in range(n):
            chosen, rejected = texts[shapes[i % len(shapes)]]
            row = {
                "id": f"p{i}",
                "prompt": f"question {i}",
                "chosen": f"{chosen} {i}",
                "rejected": f"{rejected} {i}",
            }
            fh.write(json.dumps(row) + "\n")
    return path


def _inputs(tmp_path: Path, n: int = 6) -> tuple[Path, Path]:
    policy = tmp_path / "policy.md"
    policy.write_text(POLICY_TEXT)
    return _write_pairs(tmp_path / "pairs.jsonl", n), policy


def _triage_args(pairs: Path, policy: Path, base_url: str, out: Path, *extra: str) -> list[str]:
    return [
        "triage",
        "--pairs",
        str(pairs),
        "--policy",
        str(policy),
        "--judge",
        "openai:fake-judge",
        "--base-url",
        base_url,
        "--api-key-env",
        "FAKE_JUDGE_KEY",
        "--out",
        str(out),
        *extra,
    ]


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_JUDGE_KEY", "test-key")


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "triaged.jsonl").read_text().splitlines()]


def test_triage_writes_rows_summary_and_table(
    tmp_path: Path, fake: FakeOpenAI, capsys: pytest.CaptureFixture
) -> None:
    pairs, policy = _inputs(tmp_path)
    out = tmp_path / "out"
    assert main(_triage_args(pairs, policy, fake.base_url, out)) == 0
    rows = _rows(out)
    assert [r["category"] for r in rows] == ["INVERT", "PUNISH", "RETAIN"] * 2
    invert = rows[0]
    assert (
        invert["swapped"]
        and invert["chosen"] == "fine rejected 0"
        and invert["original_chosen"] == "VIOLATE chosen 0"
    )
    assert (
        invert["chosen_verdict"]["verdict"] == "compliant"
        and invert["rejected_verdict"]["verdict"] == "violating"
    )
    assert invert["judge_id"] and invert["template_version"] and len(invert["policy_sha256"]) == 64
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["counts"] == {
        "INVERT": 2,
        "PUNISH": 2,
        "RETAIN": 2,
        "ERROR": 0,
    }
    assert summary["unique_responses"] == 12 and summary["judge_calls"] == 12 == fake.stats()["calls_total"]
    assert summary["prompt_tokens"] > 0 and summary["throughput"]["pairs_per_s"] > 0
    table = capsys.readouterr().out
    assert "INVERT" in table and "PUNISH" in table and "RETAIN" in table
    assert (out / "verdicts.sqlite").exists()


def test_rerun_makes_zero_judge_calls(tmp_path: Path, fake: FakeOpenAI) -> None:
    pairs, policy = _inputs(tmp_path, 9)
    out = tmp_path / "out"
    assert main(_triage_args(pairs, policy, fake.base_url, out)) == 0
    first = (out / "triaged.jsonl").read_text()
    fake.reset()
    assert main(_triage_args(pairs, policy, fake.base_url, out)) == 0
    assert fake.stats()["calls_total"] == 0
    assert (out / "triaged.jsonl").read_text() == first
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cache_hits"] == 18 and summary["judge_calls"] == 0


def test_changed_policy_misses_the_shared_cache(tmp_path: Path, fake: FakeOpenAI) -> None:
    pairs, policy = _inputs(tmp_path, 3)
    cache = tmp_path / "shared.sqlite"
    assert main(_triage_args(pairs, policy, fake.base_url, tmp_path / "a", "--cache", str(cache))) == 0
    policy.write_text(POLICY_TEXT + "\n## [C2] Be kind\nAlso be kind.\n")
    fake.reset()
    assert main(_triage_args(pairs, policy, fake.base_url, tmp_path / "b", "--cache", str(cache))) == 0
    assert fake.stats()["calls_total"] == 6
    assert not (tmp_path / "b" / "verdicts.sqlite").exists()


def test_concurrency_bound_observed_by_the_server(tmp_path: Path, fake: FakeOpenAI) -> None:
    fake.configure(latency=0.05)
    pairs, policy = _inputs(tmp_path, 40)
    assert main(_triage_args(pairs, policy, fake.base_url, tmp_path / "out", "--concurrency", "5")) == 0
    assert fake.stats()["max_in_flight"] == 5


def test_item_errors_exit_1_and_rerun_retries_them(tmp_path: Path, fake: FakeOpenAI) -> None:
    pairs, policy = _inputs(tmp_path, 6)
    fake.fail_next("400", count=1)  # permanent: not retried by the judge
    out = tmp_path / "out"
    assert main(_triage_args(pairs, policy, fake.base_url, out, "--concurrency", "1")) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete_with_errors" and summary["counts"]["ERROR"] == 1
    assert summary["errors"][0]["item_ids"] == ["p0"]
    assert _rows(out)[0]["category"] == "ERROR"
    fake.reset()
    assert main(_triage_args(pairs, policy, fake.base_url, out)) == 0
    assert fake.stats()["calls_total"] == 1


def test_consecutive_failures_abort_cleanly_and_resume(
    tmp_path: Path, fake: FakeOpenAI, capsys: pytest.CaptureFixture
) -> None:
    pairs, policy = _inputs(tmp_path, 20)
    first_five = _write_pairs(tmp_path / "first.jsonl", 5)
    out = tmp_path / "out"
    extra = ("--concurrency", "2", "--max-consecutive-failures", "4")
    assert main(_triage_args(first_five, policy, fake.base_url, out, *extra)) == 0  # 10 verdicts stored
    fake.reset()
    fake.fail_next("401", count=1000)
    assert main(_triage_args(pairs, policy, fake.base_url, out, *extra)) == 3
    assert "re-run the same command to resume" in capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "aborted" and summary["cache_hits"] == 10
    assert not (out / "triaged.jsonl").exists()  # the first run's 5-row output is stale: removed
    assert 4 <= fake.stats()["calls_total"] <= 4 + 2 - 1  # no new request after the 4th failure in a row
    fake.reset()
    assert main(_triage_args(pairs, policy, fake.base_url, out, *extra)) == 0
    assert fake.stats()["calls_total"] == 30
    assert len(_rows(out)) == 20


def test_oracle_rewrites_punish_pairs(tmp_path: Path, fake: FakeOpenAI) -> None:
    pairs, policy = _inputs(tmp_path, 6)
    out = tmp_path / "out"
    assert main(_triage_args(pairs, policy, fake.base_url, out, "--oracle")) == 0
    rows = _rows(out)
    punish = [r for r in rows if r["category"] == "PUNISH"]
    assert len(punish) == 2 and all(r["oracle_response"].strip() for r in punish)
    assert all("oracle_response" not in r for r in rows if r["category"] != "PUNISH")
    calls = fake.stats()["calls_total"]
    assert calls == 12 + 2
    fake.reset()
    assert main(_triage_args(pairs, policy, fake.base_url, out, "--oracle")) == 0
    assert fake.stats()["calls_total"] == 0


def test_oracle_failure_is_recorded(tmp_path: Path, fake: FakeOpenAI) -> None:
    pairs, policy = _inputs(tmp_path, 3)
    out = tmp_path / "out"
    assert main(_triage_args(pairs, policy, fake.base_url, out, "--concurrency", "1")) == 0
    fake.fail_next("400", count=1)
    assert main(_triage_args(pairs, policy, fake.base_url, out, "--oracle")) == 1
    punish = _rows(out)[1]
    assert punish["category"] == "PUNISH" and "oracle_response" not in punish and punish["oracle_error"]


def test_bad_inputs_exit_2(tmp_path: Path, fake: FakeOpenAI, capsys: pytest.CaptureFixture) -> None:
    pairs, policy = _inputs(tmp_path, 3)
    out = tmp_path / "out"
    assert main(_triage_args(tmp_path / "missing.jsonl", policy, fake.base_url, out)) == 2
    assert main(_triage_args(pairs, tmp_path / "missing.md", fake.base_url, out)) == 2
    with pairs.open("a") as fh:
        fh.write('{"id": "broken", "prompt": "q"}\n')
    assert main(_triage_args(pairs, policy, fake.base_url, out, "--strict")) == 2
    assert main(_triage_args(pairs, policy, fake.base_url, out)) == 0  # skipped with a count
    assert "1 invalid rows skipped" in capsys.readouterr().err
    bad_judge = [
        "triage",
        "--pairs",
        str(pairs),
        "--policy",
        str(policy),
        "--judge",
        "nonsense",
        "--out",
        str(out),
    ]
    assert main(bad_judge) == 2


def _entries(db_path: Path) -> int:
    if not db_path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5) as db:
            return int(db.execute("SELECT COUNT(*) FROM entries").fetchone()[0])
    except sqlite3.OperationalError:
        return 0  # schema not created yet


def test_sigkill_resume_rejudges_at_most_the_in_flight_items(tmp_path: Path) -> None:
    n_pairs, concurrency = 400, 8
    pairs, policy = _inputs(tmp_path, n_pairs)
    out = tmp_path / "out"
    env = {**os.environ, "FAKE_JUDGE_KEY": "test-key", "PYTHONPATH": str(REPO_ROOT)}
    with spawn_fake_openai(latency=0.05) as server:
        cmd = [
            sys.executable,
            "-c",
            "import sys; from trace_engine.cli import main; sys.exit(main())",
            *_triage_args(pairs, policy, server.base_url, out, "--concurrency", str(concurrency)),
        ]
        first = subprocess.Popen(
            cmd, env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 60
        while (
            _entries(out / "verdicts.sqlite") < 150 and time.monotonic() < deadline and first.poll() is None
        ):
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert first.returncode == -signal.SIGKILL, first.stderr.read() if first.stderr else ""
        stored = _entries(out / "verdicts.sqlite")
        calls_first = server.stats()["calls_total"]
        assert 150 <= stored < 2 * n_pairs and not (out / "triaged.jsonl").exists()
        assert calls_first - stored <= concurrency  # at most the in-flight requests were lost

        second = subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        assert second.returncode == 0, second.stderr
        stats = server.stats()
    calls_second = stats["calls_total"] - calls_first
    assert calls_second <= (2 * n_pairs - stored) + concurrency
    per_response = stats["calls_by_response"]
    assert len(per_response) == 2 * n_pairs
    assert max(per_response.values()) <= 2
    assert sum(1 for n in per_response.values() if n == 2) <= concurrency
    assert len(_rows(out)) == n_pairs


def test_batch_mode_through_the_cli(tmp_path: Path, fake: FakeOpenAI) -> None:
    fake.configure(batch_polls_to_complete=1)
    pairs, policy = _inputs(tmp_path, 6)
    out = tmp_path / "out"
    assert (
        main(
            _triage_args(pairs, policy, fake.base_url, out, "--mode", "batch", "--batch-poll-seconds", "0.01")
        )
        == 0
    )
    stats = fake.stats()
    assert stats["batches_created"] == 1 and stats["calls_total"] == 0
    assert [r["category"] for r in _rows(out)] == ["INVERT", "PUNISH", "RETAIN"] * 2
    assert list((out / "batch").glob("batch-*.json"))
    rules = tmp_path / "rules.json"
    rules.write_text(
        json.dumps({"version": 1, "clauses": [{"id": "C1", "violating_if_response": ["VIOLATE"]}]})
    )
    args = [
        "triage",
        "--pairs",
        str(pairs),
        "--policy",
        str(policy),
        "--judge",
        f"rules:{rules}",
        "--out",
        str(out),
    ]
    assert main([*args, "--mode", "batch"]) == 2


def test_progress_printer_throttles(capsys: pytest.CaptureFixture) -> None:
    printer = ProgressPrinter(every_s=3600)
    for done in range(10):
        printer(Progress("verdict", done, 10, 1.0, 5.0, 2.0))
    assert capsys.readouterr().err == ""  # nothing before the interval, unless the phase is finished
    printer(Progress("verdict", 10, 10, 2.0, 5.0, 0.0))
    assert capsys.readouterr().err.strip() == "[verdict] 10/10 done, 5.0/s, ETA 0s"
