"""Issue 13, "the first hour", service side: what can be checked at submission is refused with a 422 at once
(a judge profile whose key is not set on the server, an unpinned Hub model or a branch-head Hub dataset) instead
of a 202 and a job that fails seconds later; a junk upload's error counts agree and say where they are capped;
a revoked API key gets 401."""

from __future__ import annotations

import json
from typing import Any

import pytest

from core.settings import JudgeProfile

from .support import Harness, assert_problem, realign_body

PROFILES = {"default": JudgeProfile(base_url="http://judge.internal/v1", api_key_env="B13_JUDGE_KEY",
                                    default_model="m"),
            "keyless": JudgeProfile(base_url="http://vllm-judge:8000/v1", api_key_env=None, default_model="m")}
SHA = "0123456789abcdef0123456789abcdef01234567"


def post(h: Harness, path: str, body: dict[str, Any]) -> Any:
    return h.client.post(path, json=body, headers=h.headers)


def errors_by_field(problem: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["field"]: e for e in problem["errors"]}


def eval_body(**overrides: Any) -> dict[str, Any]:
    body = {"model": "synthetic-tiny", "suites": ["tpa"], "policy": {"text": "# P\nBe kind.\n"},
            "judge": {"provider": "synthetic"}, "dataset": {"type": "synthetic", "seed": 0}}
    return {**body, **overrides}


def test_a_judge_profile_without_its_key_on_the_server_is_a_422(harness: Harness,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    harness.settings.judge_profiles = dict(PROFILES)
    monkeypatch.delenv("B13_JUDGE_KEY", raising=False)
    judge = {"provider": "openai", "profile": "default"}
    for path, body in (("/v1/realign", realign_body(judge=judge)), ("/v1/evals", eval_body(judge=judge))):
        problem = assert_problem(post(harness, path, body), 422)
        error = errors_by_field(problem)["judge.profile"]
        assert error["kind"] == "judge_key_missing" and "has no API key on this server" in error["message"]
        assert "B13_JUDGE_KEY" not in json.dumps(problem)  # the operator's variable name is not shown to tenants
    assert harness.enqueuer.calls == []
    keyless = post(harness, "/v1/realign", realign_body(judge={"provider": "openai", "profile": "keyless"}))
    assert keyless.status_code == 202, keyless.text  # a profile that needs no key
    monkeypatch.setenv("B13_JUDGE_KEY", "sk-the-operators")
    assert post(harness, "/v1/realign", realign_body(judge=judge)).status_code == 202


def test_an_unpinned_hub_model_is_a_422(harness: Harness) -> None:
    for revision in (None, "main", "v1.0", SHA[:12], SHA.upper()):
        base = {"name_or_path": "Qwen/Qwen2.5-0.5B-Instruct", **({"revision": revision} if revision else {})}
        for body in (realign_body(base_model=base),):
            problem = assert_problem(post(harness, "/v1/realign", body), 422)
            error = errors_by_field(problem)["base_model.revision"]
            assert error["kind"] == "unpinned_revision" and "40-character commit sha" in error["message"], revision
    problem = assert_problem(post(harness, "/v1/realign", realign_body(base_model={"name_or_path": "../etc"})), 422)
    assert "base_model.name_or_path" in errors_by_field(problem)
    assert harness.enqueuer.calls == []
    pinned = post(harness, "/v1/realign", realign_body(base_model={"name_or_path": "Qwen/Qwen2.5-0.5B-Instruct",
                                                                   "revision": SHA}))
    assert pinned.status_code == 202, pinned.text
    local = harness.settings.models_root / "my-model"
    local.mkdir(parents=True)
    assert post(harness, "/v1/realign", realign_body(base_model={"name_or_path": "my-model"})).status_code == 202


def test_a_hub_dataset_on_a_branch_head_is_a_422(harness: Harness) -> None:
    for revision in ("main", "MASTER", "refs/heads/dev"):
        dataset = {"type": "hf", "repo": "org/data", "revision": revision, "split": "train"}
        for path, body in (("/v1/realign", realign_body(dataset=dataset)), ("/v1/evals", eval_body(dataset=dataset))):
            error = errors_by_field(assert_problem(post(harness, path, body), 422))["dataset.revision"]
            assert error["kind"] == "unpinned_revision" and "commit sha" in error["message"]
    for revision in (SHA, "v1.0"):
        dataset = {"type": "hf", "repo": "org/data", "revision": revision, "split": "train"}
        assert post(harness, "/v1/realign", realign_body(dataset=dataset)).status_code == 202


def test_a_junk_upload_reports_counts_that_agree_and_says_what_is_capped(harness: Harness) -> None:
    junk = b"".join(b"junk %d\n" % i for i in range(2500)) + b'{"prompt": "p"}\n' * 300  # < 64 KiB
    assert len(junk) < harness.settings.max_upload_bytes
    problem = assert_problem(harness.client.post("/v1/files", headers=harness.headers,
                                                 files={"file": ("junk.jsonl", junk)}), 422)
    report = problem["report"]
    assert report["error_count"] == problem["error_count"] == 2500 + 2 * 300  # each row misses chosen and rejected
    assert sum(report["issues_by_kind"].values()) == report["error_count"] + report["warning_count"]
    assert report["issues_by_kind"] == {"bad_json": 2500, "missing_field": 600}
    assert len(report["issues"]) == 1000 and report["issues_not_stored"] == 2100 and report["issues_capped"] is True
    assert "first 1000 of 3100" in report["issues_note"]
    assert len(problem["errors"]) == 100 and problem["errors_capped"] is True
    assert "errors lists the first 100" in problem["detail"]


def test_a_small_bad_upload_is_not_called_capped(harness: Harness) -> None:
    problem = assert_problem(harness.client.post("/v1/files", headers=harness.headers,
                                                 files={"file": ("bad.jsonl", b"junk\n")}), 422)
    assert problem["errors_capped"] is False and problem["report"]["issues_capped"] is False
    assert problem["report"]["issues_note"] == "issues lists all 1 issue(s)"
    assert "errors lists" not in problem["detail"]
