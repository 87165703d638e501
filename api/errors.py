"""Every error leaves as `application/problem+json` (RFC 9457) with a `detail` that says what to fix.

Validation errors list each bad field (`loc`, `message`, `kind`) but never echo the submitted value: a value in
the wrong place may be a secret.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:realign:problem:"
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


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(request, status=exc.status, detail=exc.detail, title=exc.title, slug=exc.slug,
                                errors=exc.errors, headers=exc.headers, **exc.extensions)

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

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(request, status=500, detail="internal error; the server log has the details",
                                slug="internal-error")
