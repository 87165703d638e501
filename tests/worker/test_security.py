"""Issue 10, security, worker side: a failed stage's error is sanitised before it reaches the job; artifacts and
stage summaries name files relative to the job folder, never server paths."""

from __future__ import annotations

import json

import pytest

from core.db.access.events import list_events
from core.db.access.jobs import load_job
from core.db.states import Stage
from core.settings import JudgeProfile
from worker import runner
from worker.context import StageContext, StageResult

from .conftest import new_job, synthetic_body


def test_a_crash_text_with_paths_and_secrets_is_sanitised_in_the_job(services: runner.WorkerServices,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUDGE_KEY", "the-operators-judge-key")
    services.settings.judge_profiles = {"default": JudgeProfile(api_key_env="JUDGE_KEY")}
    data_dir = str(services.settings.data_dir)

    def broken(ctx: StageContext) -> StageResult:
        raise RuntimeError(f"remote said: the-operators-judge-key; open {data_dir}/jobs/{ctx.job_id}/x.json "
                           + "y" * 5000)

    monkeypatch.setitem(runner.STAGE_FUNCTIONS, Stage.VALIDATE, broken)
    job_id = new_job(services, synthetic_body())
    assert runner.run_stage(services, job_id, Stage.VALIDATE, "w1") == runner.FAILED
    with services.sessions() as session:
        job = load_job(session, job_id=job_id)
        events = [e.data for e in list_events(session, tenant_id=job.tenant_id, job_id=job_id, limit=100)
                  if e.type == "error"]
    text = json.dumps([job.error, events])
    assert "the-operators-judge-key" not in text and data_dir not in text
    assert f"<data>/jobs/{job_id}/x.json" in job.error["message"] and len(job.error["message"]) < 1100


def test_validation_records_no_server_paths(services: runner.WorkerServices) -> None:
    from trace_engine.synthetic.base_model import ensure_base_model

    job_id = new_job(services, synthetic_body(method={"variant": "no_impact"}))
    assert runner.run_stage(services, job_id, Stage.VALIDATE, "w1") == runner.DONE
    assert runner.run_stage(services, job_id, Stage.TRIAGE, "w1") == runner.DONE
    with services.sessions() as session:
        job = load_job(session, job_id=job_id)
        events = [e.data for e in list_events(session, tenant_id=job.tenant_id, job_id=job_id, limit=100)]
    text = json.dumps([job.artifacts, job.metrics, job.error, events])
    assert str(services.settings.data_dir) not in text and str(ensure_base_model().path) not in text
    assert job.artifacts["dataset_snapshot"] == "data/pairs.jsonl"
    assert job.artifacts["triaged"] == "triage/triaged.jsonl"


def test_field_names_stay_readable_while_key_like_tokens_are_masked() -> None:
    from core.sanitise import sanitise_error_text
    from core.settings import Settings

    text = sanitise_error_text("judge.api_key_secret is not accepted; got sk-proj-AbCd0123456789xyz",
                               settings=Settings(), secrets=())
    assert "judge.api_key_secret" in text and "0123456789" not in text
