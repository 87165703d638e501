"""Registering a succeeded realign job's adapter, inside the transaction that marks the job succeeded (so a
succeeded job always has its adapter registered, and a crash before the commit leaves neither)."""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from core.db.access.adapters import adapter_of_job, create_adapter, find_adapter
from core.db.access.jobs import load_job
from core.db.models import Adapter, Job
from core.jobspec import RealignRequest
from core.registry import (
    adapter_relative_path,
    adapter_weights_sha256,
    default_adapter_name,
    local_adapter_dir,
    weights_file,
)
from core.settings import Settings
from worker.context import StageFailed


def file_sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_eval_summary(settings: Settings, job_id: str) -> dict[str, Any] | None:
    """The evaluate stage's report (its summary part, which holds the CIs), if the job ran one."""
    path = settings.data_dir / "jobs" / job_id / "eval" / "report.json"
    if not path.is_file():
        return None
    report = json.loads(path.read_text(encoding="utf-8"))
    return report.get("summary") if isinstance(report.get("summary"), dict) and report["summary"] else report


def provenance(settings: Settings, job: Job, request: RealignRequest, parent_id: str | None) -> dict[str, Any]:
    """Everything needed to know what this adapter is and to reproduce it (secret NAMES only, never values)."""
    policy = request.policy.to_policy()
    snapshot = settings.data_dir / "jobs" / job.id / "data" / "pairs.jsonl"
    judge = request.judge.model_dump(mode="json", exclude_none=True)  # a profile NAME, never a URL or a secret
    if request.judge.provider == "openai":
        from core.judges import JudgeProfileError, resolve_judge_profile

        with contextlib.suppress(JudgeProfileError):  # profiles changed since: record what the request said
            judge["model"] = resolve_judge_profile(settings, request.judge).model
    return {
        "policy": {"name": policy.name, "sha256": policy.sha256},
        "dataset": {"reference": request.dataset.model_dump(mode="json"), "sha256": file_sha256(snapshot)},
        "base_model": {"name_or_path": request.base_model.name_or_path, "revision": request.base_model.revision},
        "judge": {**judge, "id": f"{request.judge.provider}:{judge.get('model') or request.judge.rules_path or ''}"},
        "method": request.method.model_dump(mode="json"),
        "metrics": dict(job.metrics or {}),
        "parent_adapter_id": parent_id,
        "job_id": job.id,
    }


def register_job_adapter(session: Session, settings: Settings, job_id: str) -> Adapter:
    """Create the registry row for the job's trained adapter (idempotent per job)."""
    job = load_job(session, job_id=job_id)
    existing = adapter_of_job(session, tenant_id=job.tenant_id, job_id=job_id)
    if existing is not None:
        return existing
    request = RealignRequest.model_validate(job.request)
    relative = adapter_relative_path(job_id)
    if not weights_file(settings, relative).is_file():
        raise StageFailed(f"the trained adapter is missing its weights ({relative})", kind="missing_input")
    parent = None
    if request.parent_adapter:
        found = find_adapter(session, tenant_id=job.tenant_id, id_or_name=request.parent_adapter)
        parent = found.id if found is not None else None
    name = request.adapter_name or default_adapter_name(request.policy.name, job_id)
    if find_adapter(session, tenant_id=job.tenant_id, id_or_name=name) is not None:
        name = f"{name}-{job_id[4:]}"  # taken (e.g. a reused adapter_name): the job id makes it unique
    weights = weights_file(settings, relative)
    return create_adapter(
        session, tenant_id=job.tenant_id, job_id=job_id, name=name, path=relative,
        sha256=adapter_weights_sha256(local_adapter_dir(settings, relative)), size_bytes=weights.stat().st_size,
        provenance=provenance(settings, job, request, parent), eval_report=read_eval_summary(settings, job_id))
