"""An evaluation job end to end through the runner, in-process (no serving backend configured): the target
adapter, the base model and the parent adapter are evaluated on the same prompts and compared."""

from __future__ import annotations

import json
import secrets
import shutil
from pathlib import Path

import pytest

from core.db.access.events import list_events
from core.db.access.jobs import create_job, load_job
from core.db.access.tenants import get_or_create_tenant
from core.db.engine import session_scope
from core.db.states import JobState, Stage
from core.registry import adapter_relative_path
from tests.trace_engine.serving.tiny_adapters import TinyWorld, tiny_world
from worker import runner
from worker.registration import register_job_adapter

from .conftest import synthetic_body


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> TinyWorld:
    return tiny_world(tmp_path_factory.mktemp("eval-world"))


def register(services: runner.WorkerServices, tenant_id: str, source: Path, **overrides: object) -> str:
    body = synthetic_body(base_model={"name_or_path": "tiny-base"}, **overrides)
    with session_scope(services.sessions) as session:
        job, _ = create_job(session, tenant_id=tenant_id, request=body, body_hash=secrets.token_hex(8))
    shutil.copytree(source, services.settings.data_dir / adapter_relative_path(job.id))
    with session_scope(services.sessions) as session:
        return register_job_adapter(session, services.settings, job.id).id


def test_eval_job_compares_the_adapter_with_the_base_and_its_parent(services: runner.WorkerServices,
                                                                    world: TinyWorld) -> None:
    services.settings.train_device = "cpu"
    shutil.copytree(world.base, services.settings.models_root / "tiny-base")
    with session_scope(services.sessions) as session:
        tenant_id = get_or_create_tenant(session, name=f"t-{secrets.token_hex(3)}").id
    parent = register(services, tenant_id, world.adapter_b)
    target = register(services, tenant_id, world.adapter_a, parent_adapter=parent)
    body = {"model": target, "suites": ["tpa", "capability"], "policy": {"text": "# P\nBe kind.\n"},
            "judge": {"provider": "synthetic"}, "dataset": {"type": "synthetic", "seed": 0}, "n": 3,
            "max_new_tokens": 6}
    with session_scope(services.sessions) as session:
        job, _ = create_job(session, tenant_id=tenant_id, request=body, body_hash="e", kind="eval")
    assert runner.run_stage(services, job.id, Stage.VALIDATE, "w1") == runner.DONE
    assert services.enqueue.calls[-1] == (job.id, "evaluate")  # type: ignore[attr-defined]
    assert runner.run_stage(services, job.id, Stage.EVALUATE, "w1") == runner.DONE
    with services.sessions() as session:
        done = load_job(session, job_id=job.id)
        warnings = [e.data["message"] for e in list_events(session, tenant_id=done.tenant_id, job_id=job.id,
                                                           limit=100)
                    if e.type == "warning"]
    assert done.state == JobState.SUCCEEDED.value
    assert any("capability" in w for w in warnings)  # no benchmark data in this job: skipped, said so
    assert done.artifacts["eval_report"] == "eval/report.json"  # relative to the job folder, never a server path
    report = json.loads((services.settings.data_dir / "jobs" / job.id / done.artifacts["eval_report"]).read_text())
    assert str(services.settings.data_dir) not in json.dumps(report)
    assert set(report["summary"]) == {"target", "base", "parent"}
    for label in ("target", "base", "parent"):
        assert report["summary"][label]["tpa/overall"]["n"] == 3
        assert report["reports"][label]["model"]["backend"] == "local-transformers"
    assert {m["label"]: m["adapter_id"] for m in report["models"]} == {"target": target, "base": None,
                                                                       "parent": parent}
    assert {d["metric"] for d in report["comparison"]["vs_parent"]} == {"tpa/overall"} | {
        d["metric"] for d in report["comparison"]["vs_base"]}
    assert done.metrics["eval"]["summary"] == report["summary"]
    # readable (issue 17): the same prompts answered by base, parent and target side by side, and the
    # synthetic rule judge grading a real model's free text is flagged in the report, the metrics and an event
    samples = report["samples"]
    assert report["samples_suite"] == "tpa" and len(samples) == 3
    assert all(list(s["answers"]) == ["base", "parent", "target"] == list(s["verdicts"]) for s in samples)
    assert done.metrics["eval"]["samples"] == samples
    assert "'synthetic'" in report["judge_warning"] and report["judge_warning"] in warnings
    assert done.metrics["eval"]["judge_warning"] == report["judge_warning"]
