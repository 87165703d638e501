"""Issue 10, security: judges are operator profiles (no tenant URL or secret name), /metrics needs the operator
token, job records show no server paths, error texts are sanitised."""

from __future__ import annotations

import json
from typing import Any

from pydantic import SecretStr

from core.sanitise import sanitise_error_text
from core.settings import JudgeProfile

from .support import Harness, assert_problem, realign_body

PROFILES = {"default": JudgeProfile(base_url="http://judge.internal/v1", api_key_env="JUDGE_KEY", default_model="m"),
            "local": JudgeProfile(base_url="http://vllm-judge:8000/v1", api_key_env=None, models=["a", "b"])}


def post(h: Harness, path: str, body: dict[str, Any]) -> Any:
    return h.client.post(path, json=body, headers=h.headers)


def fields(problem: dict[str, Any]) -> dict[str, str]:
    return {e["field"]: e["message"] for e in problem["errors"]}


def eval_body(judge: dict[str, Any]) -> dict[str, Any]:
    return {"model": "synthetic-tiny", "suites": ["tpa"], "policy": {"text": "# P\nBe kind.\n"}, "judge": judge,
            "dataset": {"type": "synthetic", "seed": 0}}


def test_a_request_cannot_give_a_judge_url_or_a_secret_name(harness: Harness) -> None:
    harness.settings.judge_profiles = dict(PROFILES)
    for extra in ({"base_url": "http://attacker.example/v1"}, {"api_key_secret": "REALIGN_DATABASE_URL"},
                  {"api_key_env": "OPENAI_API_KEY"}):
        judge = {"provider": "openai", "model": "m", **extra}
        for path, body in (("/v1/realign", realign_body(judge=judge)), ("/v1/evals", eval_body(judge))):
            problem = assert_problem(post(harness, path, body), 422)
            assert "judge profile" in fields(problem)["judge"], problem
            text = json.dumps(problem)
            assert "attacker.example" not in text and "REALIGN_DATABASE_URL" not in text
    assert harness.enqueuer.calls == []


def test_an_unknown_profile_or_model_is_refused_at_submission(harness: Harness) -> None:
    problem = assert_problem(post(harness, "/v1/realign", realign_body(judge={"provider": "openai"})), 422)
    assert "known profiles: none" in fields(problem)["judge.profile"]
    harness.settings.judge_profiles = dict(PROFILES)
    for path, body in (("/v1/realign", realign_body(judge={"provider": "openai", "profile": "evil"})),
                       ("/v1/evals", eval_body({"provider": "openai", "profile": "evil"}))):
        problem = assert_problem(post(harness, path, body), 422)
        assert fields(problem)["judge.profile"] == "unknown judge profile 'evil'; known profiles: default, local"
    problem = assert_problem(post(harness, "/v1/realign", realign_body(
        judge={"provider": "openai", "profile": "local", "model": "c"})), 422)
    assert "allowed: a, b" in fields(problem)["judge.model"]
    assert_problem(post(harness, "/v1/realign", realign_body(judge={"provider": "synthetic", "profile": "local"})),
                   422)
    ok = post(harness, "/v1/realign", realign_body(judge={"provider": "openai", "profile": "local", "model": "b"}))
    assert ok.status_code == 202, ok.text
    assert "vllm-judge" not in ok.text  # the tenant sees the profile's name only


def test_metrics_need_the_operator_token(harness: Harness) -> None:
    assert "REALIGN_METRICS_TOKEN" in assert_problem(harness.client.get("/metrics"), 404)["detail"]  # disabled
    harness.settings.metrics_token = SecretStr("operator-token-123")
    assert_problem(harness.client.get("/metrics"), 401)
    assert_problem(harness.client.get("/metrics", headers=harness.headers), 403)  # a tenant's API key
    assert_problem(harness.client.get("/metrics", headers={"Authorization": "Bearer wrong"}), 403)
    post(harness, "/v1/realign", realign_body())
    ok = harness.client.get("/metrics", headers={"Authorization": "Bearer operator-token-123"})
    assert ok.status_code == 200 and 'realign_jobs{state="queued"}' in ok.text
    assert "tenant" not in ok.text and "acme" not in ok.text  # job counts by state, no tenant labels


def test_error_texts_lose_secrets_paths_and_long_remote_bodies(tmp_path: Any, monkeypatch: Any) -> None:
    from core.settings import Settings

    monkeypatch.setenv("JUDGE_KEY", "s3cr3t-value-for-the-judge")
    settings = Settings(data_dir=tmp_path / "state", judge_profiles=dict(PROFILES),
                        database_url="postgresql://realign:pg-password-1@db:5432/realign")
    body = "<html>" + "x" * 5000 + "</html>"
    text = (f"HTTP 500: {body} key=s3cr3t-value-for-the-judge dsn=postgresql://realign:pg-password-1@db/x "
            f"at '{settings.data_dir}/jobs/job_0123456789abcdef/triage/triaged.jsonl' \x00\ud800 sk-proj-abcdefgh12")
    clean = sanitise_error_text(text, settings=settings, max_len=300)
    assert len(clean) < 350 and "more characters cut" in clean
    full = sanitise_error_text(text.replace(body, "body"), settings=settings)
    for leaked in ("s3cr3t", "pg-password-1", str(tmp_path), "\x00", "\ud800", "sk-proj-abcdefgh12"):
        assert leaked not in full, leaked
    assert "<data>/jobs/job_0123456789abcdef/triage/triaged.jsonl" in full and "\\x00" in full
