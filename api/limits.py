"""Request hygiene enforced before any route runs, on every HTTP request.

- Body size: uploads get `max_upload_bytes` (plus multipart overhead), everything else `max_json_bytes` (a job
  request is small; a 100 MB JSON body is a mistake or an attack). A declared Content-Length over the limit is
  answered 413 at once; a body without one (chunked) is counted while it streams and answered 413 as soon as it
  passes the limit, so neither memory nor disk ever holds more than the limit (plus one chunk).
- Text no database can store: a NUL character (Postgres rejects it in text and JSON) or a lone surrogate (cannot be
  encoded as UTF-8) in the path, the query string, a header or any string (or key) of a JSON body is answered 422.
- Nesting: a JSON body nested deeper than `MAX_JSON_DEPTH` is answered 422 (400 on the OpenAI-compatible routes)
  before anything recursive touches it.

Answers are problem documents (RFC 9457), or OpenAI-style `{"error": ...}` on the gateway's routes.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

from starlette.exceptions import HTTPException as StarletteHTTPException

from api.errors import PROBLEM_MEDIA_TYPE, PROBLEM_TYPE_PREFIX
from trace_engine.data.validate import escape_name, find_unstorable, unstorable_char

UPLOAD_PATHS = ("/v1/files",)
GATEWAY_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/models")
MULTIPART_OVERHEAD_BYTES = 64 * 1024
MAX_JSON_DEPTH = 64

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BodyTooLarge(StarletteHTTPException):
    """Raised from `receive` once a streamed body passes its limit (an HTTPException, so body parsers re-raise it
    rather than wrapping it); the middleware answers 413 whatever the app makes of it."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body is larger than the limit of {limit} bytes")


class BodyLimitMiddleware:
    def __init__(self, app: Any, *, max_json_bytes: int, max_upload_bytes: int):
        self.app, self.max_json_bytes, self.max_upload_bytes = app, max_json_bytes, max_upload_bytes

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope["path"] in UPLOAD_PATHS
        limit = self.max_upload_bytes + MULTIPART_OVERHEAD_BYTES if upload else self.max_json_bytes
        bad = url_or_header_problem(scope)
        if bad is not None:
            await reject(scope, send, 422, bad[1], slug="invalid-characters", kind="unstorable_text", loc=bad[0])
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await _reject_too_large(scope, send, limit)
            return
        if upload:
            await self._stream_counted(scope, receive, send, limit)
            return
        body, complete = await read_limited(receive, limit)
        if body is None:
            await _reject_too_large(scope, send, limit)
            return
        problem = json_body_problem(body) if complete else None
        if problem is not None:
            status, detail, kind, loc = problem
            if status == 400 and not is_gateway(scope):
                status = 422
            await reject(scope, send, status, detail, slug="invalid-json-body", kind=kind, loc=loc)
            return
        await self.app(scope, _replay(body, complete, receive), send)

    async def _stream_counted(self, scope: dict[str, Any], receive: Receive, send: Send, limit: int) -> None:
        """Pass the body through while counting; past the limit stop reading and answer 413 instead of whatever
        the app would have answered."""
        received, exceeded, answered = 0, False, False

        async def counted() -> Message:
            nonlocal received, exceeded
            if exceeded:
                raise BodyTooLarge(limit)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise BodyTooLarge(limit)
            return message

        async def guarded(message: Message) -> None:
            nonlocal answered
            if exceeded:
                if not answered and message["type"] == "http.response.start":
                    answered = True
                    await _reject_too_large(scope, send, limit)
                return
            answered = answered or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not answered:
            await _reject_too_large(scope, send, limit)


async def read_limited(receive: Receive, limit: int) -> tuple[bytes | None, bool]:
    """(body, complete): the whole body, or (None, False) as soon as it passes `limit`; a client that disconnects
    mid-body gives what came so far and complete=False."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None, False
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), True


def _replay(body: bytes, complete: bool, receive: Receive) -> Receive:
    """The buffered body as one message, then the client's own messages (disconnects)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            if complete:
                return {"type": "http.request", "body": body, "more_body": False}
            return {"type": "http.disconnect"}
        return await receive()

    return replayed


def url_or_header_problem(scope: dict[str, Any]) -> tuple[list[str], str] | None:
    """(loc, detail) when the path, the query string or a header holds a NUL character or a lone surrogate."""
    bad = unstorable_char(scope.get("path", ""))
    if bad is not None:
        return ["path"], f"the URL path contains {bad}"
    query = scope.get("query_string", b"")
    if query and (b"\x00" in query or b"%00" in query or b"%u0000" in query.lower()):
        # percent-decoded with errors="replace", so only NUL (never a surrogate) can reach a parameter
        name = next((unquote(part.split("=", 1)[0]) for part in query.decode("latin-1").split("&")
                     if "\x00" in unquote(part)), "")
        return ["query", escape_name(name)], f"query parameter {escape_name(name)!r} contains a NUL character (U+0000)"
    for key, value in scope.get("headers") or []:
        if b"\x00" in value or b"\x00" in key:
            header = key.decode("latin-1").replace("\x00", "\\x00")
            return ["header", header], f"header {header!r} contains a NUL character (U+0000)"
    return None


def json_body_problem(body: bytes) -> tuple[int, str, str, list[str | int]] | None:
    """(status, detail, kind, loc) for a JSON body nested too deeply or holding unstorable text; None otherwise
    (including bodies that are not JSON at all: the route answers those). Cheap for ordinary bodies: it only parses
    when the bytes could be deep (many brackets) or could hold an escaped NUL or surrogate (a `\\u` escape)."""
    if not body or (body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH and b"\\u" not in body):
        return None
    try:
        value = json.loads(body)
    except RecursionError:
        return 400, f"the JSON body is nested more than {MAX_JSON_DEPTH} levels deep", "too_deep", ["body"]
    except ValueError:
        return None
    if json_depth(value) > MAX_JSON_DEPTH:
        return 400, f"the JSON body is nested more than {MAX_JSON_DEPTH} levels deep", "too_deep", ["body"]
    found = find_unstorable(value)
    if found is None:
        return None
    where, what = found
    loc: list[str | int] = ["body", *[p for p in where.replace("[", ".").replace("]", "").split(".") if p]]
    return 422, f"{where or 'the body'} contains {what}, which cannot be stored", "unstorable_text", loc


def json_depth(value: Any) -> int:
    """Nesting depth of containers (a scalar is 0, [] is 1), computed without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def is_gateway(scope: dict[str, Any]) -> bool:
    return scope["path"] in GATEWAY_PATHS


async def reject(scope: dict[str, Any], send: Send, status: int, detail: str, *, slug: str, kind: str,
                 loc: list[Any], headers: list[tuple[bytes, bytes]] | None = None, **extensions: Any) -> None:
    """Answer without calling the app: a problem document, or an OpenAI-style error on the gateway's routes."""
    if is_gateway(scope):
        payload: dict[str, Any] = {"error": {"message": detail, "type": "invalid_request_error",
                                             "param": ".".join(str(p) for p in loc[1:]) or None, "code": kind}}
        media_type = "application/json"
    else:
        payload = {"type": PROBLEM_TYPE_PREFIX + slug, "title": _TITLES.get(status, "Bad Request"),
                   "status": status, "detail": detail, "instance": scope["path"],
                   "errors": [{"loc": loc, "field": ".".join(str(p) for p in loc[1:]) or None, "kind": kind,
                               "message": detail}], **extensions}
        media_type = PROBLEM_MEDIA_TYPE
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", media_type.encode()), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


_TITLES = {400: "Bad Request", 413: "Content Too Large", 422: "Unprocessable Content"}


async def _reject_too_large(scope: dict[str, Any], send: Send, limit: int) -> None:
    await reject(scope, send, 413, f"request body is larger than the limit of {limit} bytes", slug="body-too-large",
                 kind="too_large", loc=["body"], headers=[(b"connection", b"close")], max_bytes=limit)
