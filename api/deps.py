"""Request-scoped dependencies: the database session, settings, the caller, pagination and the app's injected
services."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Protocol

from fastapi import Depends, Header, Query, Request
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


@dataclass(frozen=True)
class Pagination:
    """A list route's page request: the client's `limit` (None: the route's default) and opaque `cursor`."""

    limit: int | None
    cursor: str | None

    def size(self, settings: Settings) -> int:
        """Rows on this page: the client's limit, else the server's default, never above the server's cap."""
        return min(self.limit or settings.default_page_size, settings.max_page_size)


async def get_pagination(
    limit: Annotated[int | None, Query(ge=1)] = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Pagination:
    """The two query parameters of every list route, validated once; `api.openapi` describes them."""
    return Pagination(limit=limit, cursor=cursor)


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
PrincipalDep = Annotated[Principal, Depends(require_principal)]
PaginationDep = Annotated[Pagination, Depends(get_pagination)]
IdempotencyKeyHeader = Annotated[str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255)]
