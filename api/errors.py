"""Every error leaves as `application/problem+json` (RFC 9457) with a `detail` that says what to fix.

Validation errors list each bad field (`loc`, `message`, `kind`) but never echo the submitted value: a value in
the wrong place may be a secret.

The data-access layer's `NotFound` (404: missing, or another tenant's) and `BadCursor` (400) are mapped here once,
so routes let them propagate.

Outages are not bugs: a database or broker that cannot be reached answers 503 with `Retry-After`, and storage that
is full or read-only answers 507, wherever the error surfaces (`outage_of` looks through the exception chain).
"""

from __future__ import annotations

import errno
import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.db.access.common import BadCursor, NotFound

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:realign:problem:"
RETRY_AFTER_S = 5
STORAGE_ERRNOS = {errno.ENOSPC: "storage is full", errno.EROFS: "storage is read-only",
                  errno.EDQUOT: "the storage quota is exhausted"}
# (module prefix, class name) of errors meaning "the database or the broker cannot be reached right now"; matched by
# name along the MRO so the API needs no broker client imported.
_UNAVAILABLE = {("sqlalchemy", "OperationalError"): "database", ("sqlalchemy", "InterfaceError"): "database",
                ("sqlalchemy", "DisconnectionError"): "database", ("sqlalchemy", "TimeoutError"): "database",
                ("psycopg", "OperationalError"): "database", ("sqlite3", "OperationalError"): "database",
                ("kombu", "OperationalError"): "broker", ("redis", "ConnectionError"): "broker",
                ("redis", "TimeoutError"): "broker", ("amqp", "ConnectionError"): "broker"}
log = logging.getLogger("realign.api")


class ProblemError(Exception):
    """Raise from a route to answer with a problem document."""

    def __init__(self, status: int, detail: str, *, slug: str | None = None, title: str | None = None,
                 errors: list[dict[str, Any]] | None = None, headers: dict[str, str] | None = None,
                 **extensions: Any):
        super().__init__(detail)
        self.status, self.detail, self.slug = status, detail, slug
        self.title = title or HTTPStatus(status).phrase
        self.errors, self.headers, self.extensions = errors, headers, extensions


def problem_response(request: Request, *, status: int, detail: str, title: str | None = None,
                     slug: str | None = None, errors: list[dict[str, Any]] | None = None,
                     headers: dict[str, str] | None = None, **extensions: Any) -> JSONResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_PREFIX + slug if slug else "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
    }
    if errors is not None:
        body["errors"] = errors
    body.update(extensions)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def _loc(loc: tuple[Any, ...]) -> list[str | int]:
    return [part if isinstance(part, (str, int)) else str(part) for part in loc]


def validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    errors = []
    for error in exc.errors():
        loc = _loc(tuple(error.get("loc", ())))
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        errors.append({"loc": loc, "field": ".".join(str(p) for p in loc[1:]) or None,
                       "kind": str(error.get("type", "invalid")), "message": message})
    return errors


def outage_of(exc: BaseException) -> tuple[int, str, str] | None:
    """(status, detail, slug) when `exc` (or an exception it was raised from) is an outage: 503 for a database
    or broker that cannot be reached, 507 for full or read-only storage; None for anything else."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in STORAGE_ERRNOS:
            return 507, f"{STORAGE_ERRNOS[current.errno]}; try again once an operator has freed space", \
                "storage-unavailable"
        for cls in type(current).__mro__:
            what = _UNAVAILABLE.get((cls.__module__.split(".")[0], cls.__name__))
            if what is not None:
                if what == "database" and _from_sqlite(current) and not _sqlite_outage(current):
                    return None  # SQLite has no server: its other OperationalErrors are bugs, not outages
                return 503, f"the {what} is unreachable right now; retry in a few seconds", f"{what}-unavailable"
        current = current.__cause__ or current.__context__
    return None


def _sqlite_outage(exc: BaseException) -> bool:
    return any(m in str(exc) for m in ("database is locked", "unable to open", "disk I/O"))


def _from_sqlite(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", exc)
    return type(orig).__module__.startswith("sqlite3")


def outage_response(request: Request, exc: BaseException) -> JSONResponse | None:
    outage = outage_of(exc)
    if outage is None:
        return None
    status, detail, slug = outage
    log.warning("outage on %s %s: %s", request.method, request.url.path, type(exc).__name__)
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return problem_response(request, status=status, detail=detail, slug=slug, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(request, status=exc.status, detail=exc.detail, title=exc.title, slug=exc.slug,
                                errors=exc.errors, headers=exc.headers, **exc.extensions)

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> JSONResponse:
        return problem_response(request, status=404, detail=str(exc), slug="not-found")

    @app.exception_handler(BadCursor)
    async def _bad_cursor(request: Request, exc: BadCursor) -> JSONResponse:
        return problem_response(request, status=400, detail=f"{exc}; pass back the next_cursor of a previous page",
                                slug="bad-cursor")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = validation_errors(exc)
        first = errors[0] if errors else {"field": None, "message": "invalid request"}
        where = f" at {first['field']}" if first.get("field") else ""
        detail = f"{len(errors)} invalid field(s); first{where}: {first['message']}"
        return problem_response(request, status=422, detail=detail, slug="validation-error",
                                title="Request validation failed", errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).description
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            detail = f"method {request.method} not allowed on {request.url.path}"
        return problem_response(request, status=exc.status_code, detail=detail, headers=exc.headers)

    async def _outage(request: Request, exc: Exception) -> JSONResponse:
        outage = outage_response(request, exc)
        if outage is None:
            raise exc  # not an outage: the catch-all below answers 500 and logs it
        return outage

    for outage_type in _outage_types():
        app.add_exception_handler(outage_type, _outage)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        outage = outage_response(request, exc)
        if outage is not None:
            return outage
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(request, status=500, detail="internal error; the server log has the details",
                                slug="internal-error")


def _outage_types() -> list[type[BaseException]]:
    """Exception types that may be outages, handled without the 500 path (which re-raises to the server)."""
    import sqlalchemy.exc

    types: list[type[BaseException]] = [OSError, sqlalchemy.exc.SQLAlchemyError]
    for module, name in (("kombu.exceptions", "OperationalError"), ("redis.exceptions", "RedisError")):
        try:
            types.append(getattr(__import__(module, fromlist=[name]), name))
        except ImportError:  # that broker client is not installed
            continue
    return types
