"""`create_app(settings, enqueue)`: the FastAPI service. Storage and queue are injected so tests, the embedded
mode and production differ only in what they pass here. Never imports torch."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from sqlalchemy import Engine

from api.auth import PrincipalCache
from api.deps import BrokerCheck, Enqueuer
from api.errors import install_error_handlers
from api.limits import BodyLimitMiddleware
from api.metrics import MetricsMiddleware, ServiceMetrics
from api.openapi import install_openapi
from api.routes import adapters, artifacts, evals, files, health, jobs, review, ui
from api.serving import make_serving
from core.db.access.jobs import count_jobs_by_state
from core.db.engine import make_service_engine, make_session_factory, upgrade_head
from core.settings import Settings


def _no_broker_check() -> None:
    """Embedded mode: the in-process broker is always there."""


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    serving = getattr(app.state, "serving", None)
    if serving is not None:  # the gateway's connections to the serving backend
        await serving.backend.aclose()


def create_app(
    settings: Settings,
    enqueue: Enqueuer,
    *,
    broker_check: BrokerCheck = _no_broker_check,
    engine: Engine | None = None,
    routers: Sequence[APIRouter] = (),
) -> FastAPI:
    """Build the app; runs `alembic upgrade head` first unless `settings.run_migrations` is off. `routers` are
    mounted as they are. With `settings.serving_url` the OpenAI-compatible gateway over the adapter registry is
    mounted too (`api.serving`)."""
    if engine is None:
        engine = make_service_engine(settings, role="api")
    if settings.run_migrations:
        upgrade_head(engine)
    for directory in (settings.data_dir, settings.files_dir, settings.datasets_root):
        directory.mkdir(parents=True, exist_ok=True)
    sessions = make_session_factory(engine)

    def count_by_state() -> dict[str, int]:
        with sessions() as session:
            return count_jobs_by_state(session)

    metrics = ServiceMetrics(count_by_state)
    app = FastAPI(
        title="realign",
        lifespan=_lifespan,
        version="0.1.0",
        description="Re-align a deployed LLM to a changed policy (TRACE) as queued jobs.",
        docs_url=None, redoc_url=None,  # api.openapi serves /docs from vendored Swagger UI (no CDN)
        responses={401: {"description": "Missing or invalid API key", "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}},
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessions = sessions
    app.state.enqueue = enqueue
    app.state.broker_check = broker_check
    app.state.metrics = metrics
    app.state.principal_cache = PrincipalCache(settings.auth_cache_ttl_s)
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(files.router)
    app.include_router(adapters.router)
    app.include_router(artifacts.router)
    app.include_router(evals.router)
    app.include_router(review.router)  # triage review (jobs with review: true)
    app.include_router(ui.router)  # the dashboard at /ui (static files)
    serving = make_serving(settings, sessions)  # the OpenAI-compatible gateway, when a backend is configured
    app.state.serving = serving[0] if serving else None
    if serving is not None:
        app.include_router(serving[1])
    for router in routers:
        app.include_router(router)
    app.add_middleware(BodyLimitMiddleware, max_json_bytes=settings.max_json_bytes,
                       max_upload_bytes=settings.max_upload_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    install_openapi(app)
    return app
