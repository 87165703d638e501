"""A realign job's final stage registers its adapter in the transaction that marks it succeeded; evaluation
jobs refuse an adapter whose weights no longer match the registry."""

from __future__ import annotations

import json
import secrets

import pytest
from sqlalchemy import select

from core.db.access.jobs import create_job, load_job, transition_job
from core.db.engine import session_scope
from core.db.models import Adapter
from core.db.states import JobState, Stage
from core.registry import adapter_relative_path
from worker import runner
from worker.context import StageContext, StageResult

from .conftest import new_job, synthetic_body


def job_in_training(services: runner.WorkerServices, **overrides: object) -> str:
    job_id = new_job(services, synthetic_body(**overrides))
    with session_scope(services.sessions) as session:
        transition_job(session, job_id=job_id, to_state=JobState.VALIDATING)
        transition_job(session, job_id=job_id, to_state=JobState.TRAINING)
    return job_id


def write_adapter(services: runner.WorkerServices, job_id: str, weights: bytes = b"lora") -> None:
    folder = services.settings.data_dir / adapter_relative_path(job_id)
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(weights)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 4}))


def trained(ctx: StageContext) -> StageResult:
    return StageResult(metrics={"train_steps": 2})


def adapters_of(services: runner.WorkerServices, job_id: str) -> list[Adapter]:
    with services.sessions() as session:
        return list(session.scalars(select(Adapter).where(Adapter.job_id == job_id)))


def test_the_last_stage_registers_the_adapter_with_the_success(services: runner.WorkerServices,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(runner.STAGE_FUNCTIONS, Stage.TRAIN, trained)
    job_id = job_in_training(services)
    write_adapter(services, job_id)
    report = services.settings.data_dir / "jobs" / job_id / "eval" / "report.json"
    report.parent.mkdir(parents=True)
    report.write_text(json.dumps({"summary": {"tpa_after": 0.75, "tpa_after_ci": [0.5, 0.9]}, "before": {}}))
    assert runner.run_stage(services, job_id, Stage.TRAIN, "w1") == runner.DONE
    with services.sessions() as session:
        job = load_job(session, job_id=job_id)
    [adapter] = adapters_of(services, job_id)
    assert job.state == JobState.SUCCEEDED.value and job.artifacts["adapter_id"] == adapter.id
    assert adapter.path == f"jobs/{job_id}/train/adapter" and adapter.provenance["metrics"]["train_steps"] == 2
    assert adapter.provenance["dataset"]["sha256"] is None  # no snapshot was taken in this test
    assert adapter.eval_report == {"tpa_after": 0.75, "tpa_after_ci": [0.5, 0.9]}  # the job's evaluation
    assert runner.run_stage(services, job_id, Stage.TRAIN, "w2") == runner.SKIPPED  # a duplicate: still one row
    assert len(adapters_of(services, job_id)) == 1


def test_a_job_without_adapter_weights_fails_instead_of_succeeding(services: runner.WorkerServices,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(runner.STAGE_FUNCTIONS, Stage.TRAIN, trained)
    job_id = job_in_training(services)
    assert runner.run_stage(services, job_id, Stage.TRAIN, "w1") == runner.FAILED
    with services.sessions() as session:
        job = load_job(session, job_id=job_id)
    assert job.state == JobState.FAILED.value and job.error["kind"] == "missing_input"
    assert adapters_of(services, job_id) == []


def test_an_eval_job_refuses_an_adapter_whose_weights_changed(services: runner.WorkerServices,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(runner.STAGE_FUNCTIONS, Stage.TRAIN, trained)
    job_id = job_in_training(services)
    write_adapter(services, job_id, b"original")
    assert runner.run_stage(services, job_id, Stage.TRAIN, "w1") == runner.DONE
    [adapter] = adapters_of(services, job_id)
    (services.settings.data_dir / adapter.path / "adapter_model.safetensors").write_bytes(b"tampered")
    body = {"model": adapter.name, "suites": ["tpa"], "policy": {"text": "# P\nBe kind.\n"},
            "judge": {"provider": "synthetic"}, "dataset": {"type": "synthetic", "seed": 0}, "n": 2}
    with session_scope(services.sessions) as session:
        eval_job, _ = create_job(session, tenant_id=adapter.tenant_id, request=body,
                                 body_hash=secrets.token_hex(8), kind="eval")
    assert runner.run_stage(services, eval_job.id, Stage.VALIDATE, "w1") == runner.FAILED
    with services.sessions() as session:
        failed = load_job(session, job_id=eval_job.id)
    assert failed.error["kind"] == "adapter_invalid" and "does not match the registry" in failed.error["message"]
