"""The service app wired to Celery: `uvicorn --factory api.service:app_from_env` in production (Postgres + Redis
from `REALIGN_DATABASE_URL` / `REALIGN_BROKER_URL`), and what `realign serve` runs embedded. Never imports torch."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, FastAPI

from api.app import create_app
from core.settings import Settings


def build_app(settings: Settings, *, routers: Sequence[APIRouter] = ()) -> FastAPI:
    """`create_app` with a Celery enqueuer on the configured broker (the embedded filesystem broker when none)."""
    from core.celery_app import CeleryEnqueuer, broker_check, make_celery

    celery = make_celery(settings)
    if settings.broker_url:
        return create_app(settings, CeleryEnqueuer(celery), broker_check=broker_check(celery), routers=routers)
    return create_app(settings, CeleryEnqueuer(celery), routers=routers)


def app_from_env() -> FastAPI:
    return build_app(Settings())
