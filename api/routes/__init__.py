"""Thin HTTP routes: parse, check ownership, call `core.db.access`, shape the response."""

from __future__ import annotations

from typing import Any

PROBLEM_CONTENT = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
_DESCRIPTIONS = {
    400: "Bad request", 401: "Missing or invalid API key", 404: "Not found (or another tenant's)",
    409: "Conflict with the object's state", 410: "The object's files are gone from storage",
    413: "Request body larger than the limit",
    422: "Invalid request (field errors in `errors`)",
    429: "Too many unfinished jobs, or too many submissions this minute (wait `Retry-After` seconds)",
    503: "A dependency is unavailable",
}


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for error codes, all problem+json."""
    return {code: {"description": _DESCRIPTIONS.get(code, "Error"), "content": PROBLEM_CONTENT} for code in codes}
