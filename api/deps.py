"""Request-scoped dependencies: the database session, settings and the app's injected services."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Annotated, Protocol

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from api.auth import Principal, require_principal
from core.settings import Settings


class Enqueuer(Protocol):
    """Queue one stage of one job; the message carries nothing else (design.md §7)."""

    def __call__(self, job_id: str, stage: str) -> None: ...


BrokerCheck = Callable[[], None]  # raises when the broker is unreachable


async def get_session(request: Request) -> AsyncIterator[Session]:
    """Async on purpose: creating a session does no I/O (the connection is checked out lazily, in the route's
    thread), and this saves two thread hops per request."""
    session = request.app.state.sessions()
    try:
        yield session
    finally:
        session.close()


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
PrincipalDep = Annotated[Principal, Depends(require_principal)]
IdempotencyKeyHeader = Annotated[str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255)]
