"""Liveness, readiness (database and broker reachable) and Prometheus metrics (operator token only)."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.errors import ProblemError
from api.routes import problems
from api.schemas import Health
from core.db.access.workers import live_workers_by_queue, ping

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is up", openapi_extra={"security": []},
            description="Liveness: answers 200 while the process serves requests; checks nothing else. Needs no "
            "API key.")
def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses=problems(503), summary="Database and broker reachable",
            openapi_extra={"security": []},
            description="Readiness: 200 when the database and the broker answer, 503 otherwise, with `checks` per "
            "dependency, `workers` (live workers per queue) and the gateway's serving state. Missing workers alone "
            "do not make the API unready unless `require_workers=true`. Needs no API key.")
def readyz(request: Request, require_workers: Annotated[bool, Query(
        description="also answer 503 when a queue (judge, gpu) has no live worker")] = False) -> Health:
    """Database and broker reachable (503 otherwise), plus `workers`: live workers per queue. Missing workers
    alone do not make the API unready unless `?require_workers=true`: in compose the workers start after the
    API is healthy (docs/operations.md)."""
    checks: dict[str, str] = {}
    try:
        with request.app.state.sessions() as session:
            ping(session)
        checks["database"] = "ok"
    except Exception as exc:  # any driver error means not ready
        checks["database"] = f"unreachable: {type(exc).__name__}"
    try:
        request.app.state.broker_check()
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"unreachable: {type(exc).__name__}"
    workers = _live_workers(request) if checks["database"] == "ok" else {}
    failing = [name for name, value in checks.items() if value != "ok"]
    if require_workers:
        failing += [f"no live {queue} worker" for queue, count in workers.items() if count == 0]
    serving = _serving(request)
    if failing:
        raise ProblemError(503, f"not ready: {', '.join(failing)}", slug="not-ready",
                           status_text="unavailable", checks=checks, workers=workers,
                           **({"serving": serving} if serving else {}))
    return Health(status="ok", checks=checks, workers=workers, serving=serving)


def _serving(request: Request) -> dict[str, Any] | None:
    """The gateway backend's isolation state (issue 17); informational: the jobs API works without it."""
    gateway = getattr(request.app.state, "serving", None)
    if gateway is None:
        return None
    return {"url": gateway.backend.base_url, "isolation": gateway.backend.isolation}


def _live_workers(request: Request) -> dict[str, int]:
    """Live workers (heartbeat seen within `worker_stale_after_s`) per logical queue (judge, gpu)."""
    from core.celery_app import GPU_QUEUE, JUDGE_QUEUE

    settings = request.app.state.settings
    names = {settings.queue_prefix + queue: queue for queue in (JUDGE_QUEUE, GPU_QUEUE)}
    try:
        with request.app.state.sessions() as session:
            counts = live_workers_by_queue(session, queues=list(names),
                                           stale_after_s=settings.worker_stale_after_s)
    except Exception:
        return {}
    return {names[queue]: count for queue, count in counts.items()}


@router.get("/metrics", summary="Prometheus metrics (operator token)", response_class=Response,
            description="Prometheus text format, for the operator only: `Authorization: Bearer "
            "<REALIGN_METRICS_TOKEN>` (tenant API keys never open it; without a configured token it answers 404). "
            "Job counts by state and HTTP requests by method, route template and status; no tenant labels.",
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, **problems(401, 403, 404)})
def metrics(request: Request, authorization: Annotated[str | None, Header(include_in_schema=False)] = None) -> Response:
    """For the operator only: `Authorization: Bearer <REALIGN_METRICS_TOKEN>`. Without a configured token the
    endpoint is disabled (404); tenant API keys never open it. Labels carry no tenant: job counts by state, and
    HTTP requests by method, route template and status."""
    token = request.app.state.settings.metrics_token
    if token is None:
        raise ProblemError(404, "metrics are disabled: the operator sets REALIGN_METRICS_TOKEN to enable them",
                           slug="metrics-disabled")
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise ProblemError(401, "metrics need the operator's token: Authorization: Bearer <REALIGN_METRICS_TOKEN>",
                           slug="unauthorized", headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
    if not hmac.compare_digest(given.strip().encode(), token.get_secret_value().encode()):
        raise ProblemError(403, "this token does not open /metrics (it needs the operator's metrics token)",
                           slug="forbidden")
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
