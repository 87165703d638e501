"""Evaluation jobs: POST /v1/evals queues a job of kind `eval` (validate -> evaluate) on the same queues as
re-alignment; GET /v1/evals/{id} is the job with its report (also visible as /v1/jobs/{id})."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request, Response
from sqlalchemy.orm import Session

from api.deps import IdempotencyKeyHeader, PrincipalDep, SessionDep, SettingsDep
from api.routes import problems
from api.routes.jobs import (
    check_references,
    create_and_enqueue,
    field_problem,
    job_out,
)
from api.schemas import EvalJobOut
from core.db.access.adapters import find_adapter
from core.db.access.common import NotFound
from core.db.access.jobs import get_job
from core.jobspec import SYNTHETIC_BASE_NAMES, EvalRequest
from core.paths import PathEscapesRoot, resolve_under_root
from core.settings import Settings

router = APIRouter(prefix="/v1", tags=["evals"])


def is_base_model_name(settings: Settings, model: str) -> bool:
    """The serving backend's base model, the synthetic world's, or a folder under the model root."""
    if model == settings.serving_base_model or model in SYNTHETIC_BASE_NAMES:
        return True
    try:
        return resolve_under_root(settings.models_root, model).is_dir()
    except PathEscapesRoot:
        return False


def _check_model(session: Session, settings: Settings, tenant_id: str, model: str) -> None:
    if find_adapter(session, tenant_id=tenant_id, id_or_name=model) is not None:
        return
    if not is_base_model_name(settings, model):
        raise field_problem(["body", "model"], f"no adapter and no base model named {model!r} (GET /v1/adapters "
                             "lists yours)", "not_found")


def _report(settings: Settings, job_id: str, state: str) -> dict[str, Any] | None:
    path = settings.data_dir / "jobs" / job_id / "eval" / "report.json"
    if state != "succeeded" or not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def eval_job_out(session: Session, settings: Settings, job: Any) -> EvalJobOut:
    base = job_out(session, job)
    return EvalJobOut(**base.model_dump(), report=_report(settings, job.id, job.state))


@router.post("/evals", status_code=202, response_model=EvalJobOut, responses=problems(401, 413, 422, 429),
             summary="Evaluate an adapter (or the base model) against a policy",
             description="Queues an evaluation job (202): the suites (tpa: target-policy agreement; asr: attack "
             "success rate; over_refusal; capability) on the named model, judged under the policy, with "
             "confidence intervals; with `compare` the base model and the adapter's parent are evaluated too. "
             "`model` is one of your adapters (id or name) or a base model; anything else is a 422. "
             "`Idempotency-Key` and the 429 quotas work as for `POST /v1/realign`.")
def submit_eval(
    body: EvalRequest,
    request: Request,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> EvalJobOut:
    check_references(session, settings, principal.tenant_id, body)
    _check_model(session, settings, principal.tenant_id, body.model)
    job = create_and_enqueue(request, response, session, tenant_id=principal.tenant_id, body=body,
                             idempotency_key=idempotency_key, kind="eval", location="/v1/evals")
    return eval_job_out(session, settings, job)


@router.get("/evals/{job_id}", response_model=EvalJobOut, responses=problems(401, 404),
            summary="An evaluation job with its report",
            description="The evaluation job's state and progress, and once it has succeeded its `report`: per "
            "model (target, base, parent) the metrics with confidence intervals, and the comparisons.")
def get_eval(job_id: str, session: SessionDep, settings: SettingsDep, principal: PrincipalDep) -> EvalJobOut:
    job = get_job(session, tenant_id=principal.tenant_id, job_id=job_id)
    if job.kind != "eval":
        raise NotFound(f"job {job_id} is not an evaluation job (see /v1/jobs/{job_id})")
    return eval_job_out(session, settings, job)
