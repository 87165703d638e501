"""Issue 10: a body without Content-Length (chunked) could bypass both size limits: a 300 MB JSON body took the API
to 1.25 GB RSS, a 2 GB upload was written to disk before its 413. Now every body is counted while it streams and
answered 413 once it passes its limit; the app never reads more than the limit plus one chunk.

A real uvicorn server on loopback and httpx sending a generator body (chunked transfer encoding). An ASGI wrapper
around the whole app counts the body bytes the app pulled from the server: that is all it could have held in
memory or written to disk."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from core.db.access.tenants import create_api_key
from core.db.engine import session_scope
from core.settings import Settings
from trace_engine.serving.uvicorn_thread import serve_in_thread

from .support import RecordingEnqueuer

LIMIT = 64 * 1024  # both max_upload_bytes and max_json_bytes
CHUNK = 64 * 1024  # what the client sends per chunk
TOTAL = 32 * 1024 * 1024  # what it would send in all: 512 times the limit
SLACK = 512 * 1024  # "plus a chunk": uvicorn hands the app what it buffered, up to 64 KiB + a 256 KiB socket read
BOUNDARY = "realign-test-boundary"


@dataclass
class BodyMeter:
    """ASGI wrapper: per request, the body bytes the app received and the status it answered."""

    app: Any
    received: list[int] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        index = len(self.received)
        self.received.append(0)

        async def counted() -> dict[str, Any]:
            message = await receive()
            if message["type"] == "http.request":
                self.received[index] += len(message.get("body", b""))
            return message

        async def answered(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                self.statuses.append(message["status"])
            await send(message)

        await self.app(scope, counted, answered)


@dataclass
class Served:
    base_url: str
    meter: BodyMeter
    settings: Settings
    headers: dict[str, str]


@pytest.fixture
def served(postgres_url: str, tmp_path: Path) -> Iterator[Served]:
    settings = Settings(data_dir=tmp_path / "state", database_url=postgres_url, max_upload_bytes=LIMIT,
                        max_json_bytes=LIMIT)
    app = create_app(settings, RecordingEnqueuer())
    with session_scope(app.state.sessions) as session:
        key = create_api_key(session, tenant_name=f"limits-{secrets.token_hex(4)}")
    meter = BodyMeter(app)
    try:
        with serve_in_thread(meter) as base_url:
            yield Served(base_url, meter, settings, {"Authorization": f"Bearer {key}"})
    finally:
        app.state.engine.dispose()


@dataclass
class Sender:
    """A chunked body: `head`, then `TOTAL` bytes in `CHUNK`s, then `tail`; counts the chunks httpx took."""

    head: bytes
    tail: bytes
    filler: bytes = b"x"
    taken: int = 0

    def __iter__(self) -> Iterator[bytes]:
        yield self.head
        for _ in range(TOTAL // CHUNK):
            self.taken += 1
            yield self.filler * CHUNK
        yield self.tail


def send(served: Served, path: str, body: Sender, content_type: str) -> httpx.Response | None:
    """POST the generator body; None when the server closed the connection before httpx could read the answer
    (the server-side status is in `served.meter.statuses`)."""
    headers = {**served.headers, "Content-Type": content_type}
    try:
        with httpx.Client(base_url=served.base_url, timeout=30) as client:
            return client.post(path, content=iter(body), headers=headers)
    except httpx.TransportError:
        return None


def check_stopped_early(served: Served, response: httpx.Response | None, body: Sender, limit: int) -> None:
    received = served.meter.received[-1]
    assert received <= limit + SLACK, \
        f"the app read {received} bytes of a chunked body whose limit is {limit} (the whole body: {TOTAL + 200})"
    assert served.meter.statuses == [413], f"the server answered {served.meter.statuses}, not 413"
    assert body.taken * CHUNK < TOTAL // 2, f"the client sent {body.taken * CHUNK} bytes before it was stopped"
    if response is not None:
        assert response.status_code == 413
        problem = response.json()
        assert problem["max_bytes"] == limit and str(limit) in problem["detail"]


def test_a_chunked_upload_over_the_limit_is_413_while_it_streams(served: Served) -> None:
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jsonl\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    body = Sender(head, f"\r\n--{BOUNDARY}--\r\n".encode())
    response = send(served, "/v1/files", body, f"multipart/form-data; boundary={BOUNDARY}")
    from api.limits import MULTIPART_OVERHEAD_BYTES

    check_stopped_early(served, response, body, LIMIT + MULTIPART_OVERHEAD_BYTES)
    assert list(served.settings.files_dir.iterdir()) == []  # nothing kept, not even a partial file


def test_a_chunked_json_body_over_the_limit_is_413_while_it_streams(served: Served) -> None:
    body = Sender(b'{"policy": {"name": "p", "text": "', b'"}}')
    response = send(served, "/v1/realign", body, "application/json")
    check_stopped_early(served, response, body, LIMIT)


def test_a_chunked_body_under_the_limit_still_works(served: Served) -> None:
    rows = b"".join(b'{"prompt": "p%d", "chosen": "c", "rejected": "r"}\n' % i for i in range(20))
    multipart = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"ok.jsonl\"\r\n"
                 "Content-Type: application/octet-stream\r\n\r\n").encode() + rows + f"\r\n--{BOUNDARY}--\r\n".encode()
    with httpx.Client(base_url=served.base_url, timeout=30) as client:
        response = client.post("/v1/files", content=iter([multipart[:100], multipart[100:]]),
                               headers={**served.headers, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    assert response.status_code == 201, response.text
    assert response.json()["pairs"] == 20
