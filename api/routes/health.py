"""Liveness, readiness (database and broker reachable) and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.db import access
from api.errors import ProblemError
from api.routes import problems
from api.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is up")
def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses=problems(503), summary="Database and broker reachable")
def readyz(request: Request) -> Health:
    checks: dict[str, str] = {}
    try:
        with request.app.state.sessions() as session:
            access.ping(session)
        checks["database"] = "ok"
    except Exception as exc:  # any driver error means not ready
        checks["database"] = f"unreachable: {type(exc).__name__}"
    try:
        request.app.state.broker_check()
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"unreachable: {type(exc).__name__}"
    failing = [name for name, value in checks.items() if value != "ok"]
    if failing:
        raise ProblemError(503, f"not ready: {', '.join(failing)} unreachable", slug="not-ready",
                           status_text="unavailable", checks=checks)
    return Health(status="ok", checks=checks)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
