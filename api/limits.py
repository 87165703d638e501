"""Request body limits enforced before any parsing: uploads get `max_upload_bytes`, everything else
`max_json_bytes` (a job request is small; a 100 MB JSON body is a mistake or an attack)."""

from __future__ import annotations

import json
from typing import Any

from api.errors import PROBLEM_MEDIA_TYPE, PROBLEM_TYPE_PREFIX

UPLOAD_PATHS = ("/v1/files",)
MULTIPART_OVERHEAD_BYTES = 64 * 1024


class BodyLimitMiddleware:
    def __init__(self, app: Any, *, max_json_bytes: int, max_upload_bytes: int):
        self.app, self.max_json_bytes, self.max_upload_bytes = app, max_json_bytes, max_upload_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            limit = (self.max_upload_bytes + MULTIPART_OVERHEAD_BYTES if scope["path"] in UPLOAD_PATHS
                     else self.max_json_bytes)
            declared = dict(scope.get("headers") or []).get(b"content-length", b"")
            if declared.isdigit() and int(declared) > limit:
                await _problem_413(scope, send, limit)
                return
        await self.app(scope, receive, send)


async def _problem_413(scope: dict[str, Any], send: Any, limit: int) -> None:
    body = json.dumps({"type": PROBLEM_TYPE_PREFIX + "body-too-large", "title": "Content Too Large", "status": 413,
                       "detail": f"request body is larger than the limit of {limit} bytes", "instance": scope["path"],
                       "max_bytes": limit}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", PROBLEM_MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
