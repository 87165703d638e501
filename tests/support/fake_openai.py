"""A real OpenAI-compatible HTTP server on loopback, for tests of judges, triage and batch mode.

Speaks HTTP/1.1 (keep-alive) with asyncio streams on its own event loop, so a per-call latency never blocks other
requests (128 concurrent 100 ms calls take ~0.1 s). Endpoints:

    POST /v1/chat/completions      judge verdicts (JSON) or rewrite text, with `usage`
    POST /v1/files                 multipart upload (purpose "batch")
    GET  /v1/files/{id}/content    file bytes
    POST /v1/batches               create a batch over an uploaded JSONL file
    GET  /v1/batches/{id}          poll; completes after `batch_polls_to_complete` polls
    GET  /_fake/stats              counters (JSON)        POST /_fake/config  set knobs (JSON)
    POST /_fake/fail               script failures        POST /_fake/reset   clear counters and script

Two ways to run it:

    with FakeOpenAI(latency=0.1) as fake:          # background thread inside pytest
        client = AsyncOpenAI(base_url=fake.base_url, api_key="x")
        fake.fail_next("429", count=2, retry_after=0.2)
        fake.stats()["calls_total"]

    with spawn_fake_openai(latency=0.1) as proc:   # separate process; survives killing the client
        proc.configure(latency=0.0); proc.fail_next("500"); proc.stats()
    # or: python -m tests.support.fake_openai --port 0 --latency 0.1   (prints one JSON line with base_url)

Default verdict: "violating" iff the response block of the judge prompt contains `violate_marker` ("VIOLATE"),
with clauses from `VIOLATE[C1]`-style markers; replace it with `verdict_fn(request) -> dict` in-process.
Failure kinds for `fail_next`: "429" (retry_after seconds | retry_after_ms | retry_after_date), "500", "503",
"slow" (delay seconds, then a normal answer), "malformed" (content that is no verdict), "400", "401",
"reject_response_format" (a 400 naming response_format), "drop" (close the connection without answering),
"bad_body" (a 200 whose JSON body is cut off).
Each chat call consumes one scripted failure, in order. Other knobs (`KNOBS`, settable at start, with `configure`,
or as `--knob JSON` on the command line): latency, ignore_response_format (answer prose with embedded JSON),
reject_response_format (always 400 when response_format is sent), batch_polls_to_complete,
batch_failed_markers (batch lines containing one go to the error file), require_api_key (else 401),
keep_request_log (turn off for big benchmarks), rewrite_text (fixed answer to rewrite requests).
Counters (`stats()`): calls_total, calls_by_response, max_in_flight, in_flight, batches_created, files_uploaded,
batch_polls, pending_failures; `requests` is the log of request bodies and headers (authorization removed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trace_engine.judge.prompt import PROMPT_TAG, RESPONSE_TAG, extract_block

REPO_ROOT = Path(__file__).resolve().parents[2]
KNOBS = ("latency", "violate_marker", "ignore_response_format", "reject_response_format", "batch_polls_to_complete",
         "batch_failed_markers", "require_api_key", "keep_request_log", "rewrite_text")
FAILURE_KINDS = ("429", "500", "503", "slow", "malformed", "400", "401", "reject_response_format", "drop",
                 "bad_body")


@dataclass
class ChatRequest:
    """What a verdict function sees: the request body and the data blocks pulled out of it."""

    body: dict[str, Any]
    system: str
    user: str
    prompt: str | None  # unescaped contents of the prompt block
    response: str | None  # unescaped contents of the response block (None for a rewrite request)

    @property
    def is_judge(self) -> bool:
        return self.response is not None


VerdictFn = Callable[[ChatRequest], dict[str, Any]]
RewriteFn = Callable[[ChatRequest], str]


@dataclass
class _Failure:
    kind: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Batch:
    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    created_at: int
    polls: int = 0
    status: str = "validating"
    output_file_id: str | None = None
    error_file_id: str | None = None
    counts: dict[str, int] = field(default_factory=lambda: {"total": 0, "completed": 0, "failed": 0})


class _HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None, code: str = "error"):
        super().__init__(message)
        self.status, self.message, self.headers, self.code = status, message, headers or {}, code


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests",
            500: "Internal Server Error", 503: "Service Unavailable"}


class FakeOpenAI:
    """The server object; every knob is an attribute and may be changed while it runs."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        violate_marker: str = "VIOLATE",
        verdict_fn: VerdictFn | None = None,
        rewrite_fn: RewriteFn | None = None,
        ignore_response_format: bool = False,
        reject_response_format: bool = False,
        batch_polls_to_complete: int = 2,
        batch_failed_markers: tuple[str, ...] = (),
        require_api_key: str | None = None,
        keep_request_log: bool = True,
        rewrite_text: str | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.latency = latency
        self.violate_marker = violate_marker
        self.verdict_fn = verdict_fn
        self.rewrite_fn = rewrite_fn
        self.ignore_response_format = ignore_response_format
        self.reject_response_format = reject_response_format
        self.batch_polls_to_complete = batch_polls_to_complete
        self.batch_failed_markers = batch_failed_markers  # batch lines whose body contains one -> error file
        self.require_api_key = require_api_key
        self.keep_request_log = keep_request_log
        self.rewrite_text = rewrite_text  # fixed rewrite answer (usable from another process), else a default
        self._lock = threading.Lock()
        self._failures: deque[_Failure] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._files: dict[str, tuple[str, str, bytes]] = {}  # id -> (filename, purpose, content)
        self._batches: dict[str, _Batch] = {}
        self._seq = 0
        self.reset()

    # ---- knobs and counters -------------------------------------------------------------------------------

    def reset(self) -> None:
        """Clear counters, the request log and scripted failures (files and batches are kept)."""
        with self._lock:
            self._failures.clear()
            self.calls_total = 0
            self.calls_by_response: Counter[str] = Counter()
            self.in_flight = 0
            self.max_in_flight = 0
            self.requests: list[dict[str, Any]] = []
            self.batches_created = 0
            self.files_uploaded = 0
            self.batch_polls = 0

    def fail_next(self, kind: str, count: int = 1, **params: Any) -> None:
        """Script the next `count` chat calls to fail with `kind` (see module docstring)."""
        if kind not in FAILURE_KINDS:
            raise ValueError(f"unknown failure kind {kind!r}; expected one of {FAILURE_KINDS}")
        with self._lock:
            self._failures.extend(_Failure(kind, dict(params)) for _ in range(count))

    def configure(self, **knobs: Any) -> None:
        unknown = set(knobs) - set(KNOBS)
        if unknown:
            raise ValueError(f"unknown knobs {sorted(unknown)}; allowed: {list(KNOBS)}")
        for k, v in knobs.items():
            setattr(self, k, tuple(v) if k == "batch_failed_markers" else v)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "calls_total": self.calls_total,
                "calls_by_response": dict(self.calls_by_response),
                "max_in_flight": self.max_in_flight,
                "in_flight": self.in_flight,
                "batches_created": self.batches_created,
                "files_uploaded": self.files_uploaded,
                "batch_polls": self.batch_polls,
                "pending_failures": len(self._failures),
                "requests_logged": len(self.requests),
            }

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    # ---- lifecycle ----------------------------------------------------------------------------------------

    def start(self) -> FakeOpenAI:
        """Serve in a daemon thread; returns once the port is bound."""
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._bind())
            except BaseException as e:  # noqa: BLE001 - reported to the starting thread
                errors.append(e)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-openai", daemon=True)
        self._thread.start()
        ready.wait(10)
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = self._thread = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _bind(self) -> None:
        self._server = await asyncio.start_server(self._handle_connection, self.host, self.port, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ---- HTTP plumbing ------------------------------------------------------------------------------------

    async def _handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    break
                method, path, headers, body = request
                try:
                    status, out_headers, payload = await self._route(method, path, headers, body)
                except _HttpError as e:
                    status, out_headers = e.status, dict(e.headers)
                    payload = json.dumps(
                        {"error": {"message": e.message, "type": "invalid_request_error", "param": None,
                                   "code": e.code}}
                    ).encode()
                except _Drop:
                    break
                except _RawReply as r:
                    status, out_headers, payload = r.status, {}, r.payload
                out_headers.setdefault("content-type", "application/json")
                head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
                head += [f"{k}: {v}" for k, v in out_headers.items()]
                head += [f"content-length: {len(payload)}", "connection: keep-alive", "", ""]
                writer.write("\r\n".join(head).encode() + payload)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _route(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        path = path.split("?", 1)[0]
        if path.startswith("/_fake/"):
            return self._control(method, path, body)
        if self.require_api_key is not None and headers.get("authorization") != f"Bearer {self.require_api_key}":
            raise _HttpError(401, "Incorrect API key provided.", code="invalid_api_key")
        if method == "POST" and path == "/v1/chat/completions":
            return await self._chat(headers, body)
        if method == "POST" and path == "/v1/files":
            return self._upload(headers, body)
        m = re.fullmatch(r"/v1/files/([\w-]+)/content", path)
        if method == "GET" and m:
            if m.group(1) not in self._files:
                raise _HttpError(404, f"No such file {m.group(1)}")
            return 200, {"content-type": "application/octet-stream"}, self._files[m.group(1)][2]
        if method == "POST" and path == "/v1/batches":
            return self._create_batch(body)
        m = re.fullmatch(r"/v1/batches/([\w-]+)", path)
        if method == "GET" and m:
            return self._poll_batch(m.group(1))
        raise _HttpError(404, f"no route {method} {path}")

    # ---- control endpoints (for the separate-process mode) ------------------------------------------------

    def _control(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        data = json.loads(body or b"{}")
        try:
            if path == "/_fake/stats" and method == "GET":
                return 200, {}, json.dumps(self.stats()).encode()
            if path == "/_fake/requests" and method == "GET":
                with self._lock:
                    return 200, {}, json.dumps(self.requests).encode()
            if path == "/_fake/config" and method == "POST":
                self.configure(**data)
            elif path == "/_fake/fail" and method == "POST":
                self.fail_next(data.pop("kind"), int(data.pop("count", 1)), **data)
            elif path == "/_fake/reset" and method == "POST":
                self.reset()
            else:
                raise _HttpError(404, f"no control route {method} {path}")
        except (ValueError, KeyError, TypeError) as e:
            raise _HttpError(400, str(e)) from e
        return 200, {}, b'{"ok": true}'

    # ---- chat completions ---------------------------------------------------------------------------------

    async def _chat(self, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        try:
            req_body = json.loads(body)
        except json.JSONDecodeError as e:
            raise _HttpError(400, f"body is not JSON: {e}") from e
        request = _chat_request(req_body)
        with self._lock:
            self.calls_total += 1
            self.calls_by_response[request.response if request.response is not None else "<rewrite>"] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            failure = self._failures.popleft() if self._failures else None
            if self.keep_request_log:
                self.requests.append({"body": req_body, "headers": {k: v for k, v in headers.items()
                                                                    if k != "authorization"}})
        try:
            if self.latency > 0:
                await asyncio.sleep(self.latency)
            if failure is not None:
                await self._apply_failure(failure)
            if "response_format" in req_body and self.reject_response_format:
                raise _HttpError(400, "Invalid parameter: 'response_format' of type 'json_schema' is not supported "
                                 "with this model.", code="invalid_request_error")
            malformed = failure is not None and failure.kind == "malformed"
            content = self._answer(request, malformed=malformed)
            return 200, {}, json.dumps(self._completion(req_body, content)).encode()
        finally:
            with self._lock:
                self.in_flight -= 1

    async def _apply_failure(self, failure: _Failure) -> None:
        kind, p = failure.kind, failure.params
        if kind == "429":
            hdrs: dict[str, str] = {}
            if "retry_after" in p:
                hdrs["retry-after"] = str(p["retry_after"])
            if "retry_after_ms" in p:
                hdrs["retry-after-ms"] = str(p["retry_after_ms"])
            if "retry_after_date" in p:  # seconds from now, sent as an HTTP date
                hdrs["retry-after"] = email.utils.formatdate(time.time() + float(p["retry_after_date"]), usegmt=True)
            raise _HttpError(429, "Rate limit reached for requests", hdrs, code="rate_limit_exceeded")
        if kind in ("500", "503"):
            raise _HttpError(int(kind), "The server had an error while processing your request.", code="server_error")
        if kind == "400":
            raise _HttpError(400, p.get("message", "Invalid request: bad parameter."), code="invalid_request_error")
        if kind == "401":
            raise _HttpError(401, "Incorrect API key provided.", code="invalid_api_key")
        if kind == "reject_response_format":
            raise _HttpError(400, "Invalid parameter: 'response_format' of type 'json_schema' is not supported.",
                             code="invalid_request_error")
        if kind == "slow":
            await asyncio.sleep(float(p.get("delay", 5.0)))
        if kind == "drop":
            raise _Drop()
        if kind == "bad_body":
            raise _RawReply(200, b'{"id": "chatcmpl-broken", "choices": [')

    def _answer(self, request: ChatRequest, *, malformed: bool) -> str:
        if malformed:
            return "I am not sure what you mean. Verdict: maybe?"
        if not request.is_judge:
            if self.rewrite_fn is not None:
                return self.rewrite_fn(request)
            if self.rewrite_text is not None:
                return self.rewrite_text
            return f"Here is a careful, policy-compliant answer to: {(request.prompt or '')[:60]}"
        verdict = self.verdict_fn(request) if self.verdict_fn is not None else self._default_verdict(request)
        as_json = json.dumps(verdict)
        if self.ignore_response_format or "response_format" not in request.body:
            return f"Having read the policy carefully, here is my assessment:\n{as_json}\nI hope this helps."
        return as_json

    def _default_verdict(self, request: ChatRequest) -> dict[str, Any]:
        text = request.response or ""
        if self.violate_marker and self.violate_marker in text:
            clauses = re.findall(re.escape(self.violate_marker) + r"\[([\w.\-]+)\]", text)
            return {"verdict": "violating", "clauses": clauses,
                    "rationale": f"the response contains {self.violate_marker}"}
        return {"verdict": "compliant", "clauses": [], "rationale": "no marker in the response"}

    def _completion(self, req_body: dict[str, Any], content: str) -> dict[str, Any]:
        self._seq += 1
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in req_body.get("messages", []))
        completion_tokens = len(content.split())
        return {
            "id": f"chatcmpl-fake{self._seq}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req_body.get("model", "fake"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    # ---- files and batches --------------------------------------------------------------------------------

    def _new_id(self, prefix: str) -> str:
        self._seq += 1
        return f"{prefix}-fake{self._seq}"

    def _upload(self, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        fields = _parse_multipart(headers.get("content-type", ""), body)
        if "file" not in fields or "purpose" not in fields:
            raise _HttpError(400, "multipart upload needs 'file' and 'purpose'")
        filename, content = fields["file"]
        purpose = fields["purpose"][1].decode()
        file_id = self._new_id("file")
        self._files[file_id] = (filename or "upload", purpose, content)
        with self._lock:
            self.files_uploaded += 1
        return 200, {}, json.dumps(self._file_object(file_id)).encode()

    def _file_object(self, file_id: str) -> dict[str, Any]:
        filename, purpose, content = self._files[file_id]
        return {"id": file_id, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                "filename": filename, "purpose": purpose, "status": "processed"}

    def _create_batch(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        data = json.loads(body)
        if data.get("input_file_id") not in self._files:
            raise _HttpError(400, f"unknown input_file_id {data.get('input_file_id')!r}")
        if data.get("endpoint") != "/v1/chat/completions":
            raise _HttpError(400, f"unsupported endpoint {data.get('endpoint')!r}")
        batch = _Batch(self._new_id("batch"), data["input_file_id"], data["endpoint"],
                       data.get("completion_window", "24h"), int(time.time()))
        batch.counts["total"] = len(self._files[batch.input_file_id][2].splitlines())
        self._batches[batch.id] = batch
        with self._lock:
            self.batches_created += 1
        return 200, {}, json.dumps(self._batch_object(batch)).encode()

    def _poll_batch(self, batch_id: str) -> tuple[int, dict[str, str], bytes]:
        batch = self._batches.get(batch_id)
        if batch is None:
            raise _HttpError(404, f"No batch found with id '{batch_id}'.")
        with self._lock:
            self.batch_polls += 1
        batch.polls += 1
        if batch.status not in ("completed", "failed"):
            if batch.polls >= self.batch_polls_to_complete:
                self._complete_batch(batch)
            else:
                batch.status = "in_progress"
        return 200, {}, json.dumps(self._batch_object(batch)).encode()

    def _complete_batch(self, batch: _Batch) -> None:
        out_lines, err_lines = [], []
        for raw in self._files[batch.input_file_id][2].decode().splitlines():
            if not raw.strip():
                continue
            line = json.loads(raw)
            custom_id, body = line["custom_id"], line["body"]
            if any(m in json.dumps(body) for m in self.batch_failed_markers):
                err_lines.append({"id": self._new_id("batch_req"), "custom_id": custom_id, "response": None,
                                  "error": {"code": "server_error", "message": "scripted batch item failure"}})
                continue
            request = _chat_request(body)
            with self._lock:
                self.calls_by_response[request.response if request.response is not None else "<rewrite>"] += 1
            completion = self._completion(body, self._answer(request, malformed=False))
            out_lines.append({"id": self._new_id("batch_req"), "custom_id": custom_id,
                              "response": {"status_code": 200, "request_id": self._new_id("req"),
                                           "body": completion}, "error": None})
        batch.output_file_id = self._store_jsonl(out_lines, f"{batch.id}_output.jsonl")
        batch.error_file_id = self._store_jsonl(err_lines, f"{batch.id}_errors.jsonl") if err_lines else None
        batch.counts.update(completed=len(out_lines), failed=len(err_lines))
        batch.status = "completed"

    def _store_jsonl(self, lines: list[dict[str, Any]], filename: str) -> str:
        file_id = self._new_id("file")
        self._files[file_id] = (filename, "batch_output", "".join(json.dumps(x) + "\n" for x in lines).encode())
        return file_id

    def _batch_object(self, b: _Batch) -> dict[str, Any]:
        return {"id": b.id, "object": "batch", "endpoint": b.endpoint, "errors": None,
                "input_file_id": b.input_file_id, "completion_window": b.completion_window, "status": b.status,
                "output_file_id": b.output_file_id, "error_file_id": b.error_file_id, "created_at": b.created_at,
                "request_counts": dict(b.counts), "metadata": None}


class _Drop(Exception):
    """Close the connection without answering."""


class _RawReply(Exception):
    """Answer with these exact bytes (e.g. a truncated JSON body)."""

    def __init__(self, status: int, payload: bytes) -> None:
        super().__init__(status)
        self.status, self.payload = status, payload


def _chat_request(body: dict[str, Any]) -> ChatRequest:
    messages = body.get("messages") or []
    system = "\n".join(str(m.get("content", "")) for m in messages if m.get("role") == "system")
    user = "\n".join(str(m.get("content", "")) for m in messages if m.get("role") == "user")
    return ChatRequest(body=body, system=system, user=user, prompt=extract_block(user, PROMPT_TAG),
                       response=extract_block(user, RESPONSE_TAG))


async def _read_request(
    reader: asyncio.StreamReader,
) -> tuple[str, str, dict[str, str], bytes] | None:
    """One HTTP/1.1 request (Content-Length or chunked body); None at a clean end of the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            chunks.append(chunk[:-2])
        body = b"".join(chunks)
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return method, path, headers, body


def _parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """name -> (filename, bytes) for a multipart/form-data body."""
    m = re.search(r'boundary="?([^";]+)"?', content_type)
    if not m:
        raise _HttpError(400, "multipart body without boundary")
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in body.split(b"--" + m.group(1).encode())[1:]:
        if part.startswith(b"--"):
            break
        head, _, content = part.lstrip(b"\r\n").partition(b"\r\n\r\n")
        disposition = head.decode("latin-1")
        name = re.search(r'name="([^"]*)"', disposition)
        filename = re.search(r'filename="([^"]*)"', disposition)
        if name:
            fields[name.group(1)] = (filename.group(1) if filename else None, content.removesuffix(b"\r\n"))
    return fields


# ---- separate-process mode ------------------------------------------------------------------------------------


class FakeOpenAIProcess:
    """A fake server in a child process, driven through its /_fake/ control endpoints."""

    def __init__(self, proc: subprocess.Popen[str], base_url: str) -> None:
        self.proc, self.base_url = proc, base_url

    @property
    def root_url(self) -> str:
        return self.base_url.removesuffix("/v1")

    def _call(self, method: str, path: str, data: dict[str, Any] | None = None) -> Any:
        req = urllib.request.Request(self.root_url + path, method=method,
                                     data=None if data is None else json.dumps(data).encode(),
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def configure(self, **knobs: Any) -> None:
        self._call("POST", "/_fake/config", knobs)

    def fail_next(self, kind: str, count: int = 1, **params: Any) -> None:
        self._call("POST", "/_fake/fail", {"kind": kind, "count": count, **params})

    def reset(self) -> None:
        self._call("POST", "/_fake/reset", {})

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/_fake/stats")

    def requests(self) -> list[dict[str, Any]]:
        return self._call("GET", "/_fake/requests")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self) -> FakeOpenAIProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def spawn_fake_openai(port: int = 0, **knobs: Any) -> FakeOpenAIProcess:
    """Start `python -m tests.support.fake_openai` and wait for its base URL (knobs as in `configure`)."""
    cmd = [sys.executable, "-m", "tests.support.fake_openai", "--port", str(port)]
    for k, v in knobs.items():
        cmd += ["--" + k.replace("_", "-"), json.dumps(v)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(5)
        raise RuntimeError(f"fake OpenAI server process exited (rc={proc.returncode}) before it was ready")
    return FakeOpenAIProcess(proc, json.loads(line)["base_url"])


@contextlib.contextmanager
def running_fake_openai(**knobs: Any) -> Iterator[FakeOpenAI]:
    """In-thread server as a context manager (the pytest fixture body)."""
    with FakeOpenAI(**knobs) as fake:
        yield fake


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fake OpenAI-compatible server for tests.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    for knob in KNOBS:
        parser.add_argument("--" + knob.replace("_", "-"), type=json.loads, default=None,
                            help="value as JSON")
    args = parser.parse_args(argv)
    knobs = {k: v for k, v in vars(args).items() if k not in ("host", "port") and v is not None}
    fake = FakeOpenAI(host=args.host, port=args.port)
    fake.configure(**knobs)

    async def serve() -> None:
        fake._loop = asyncio.get_running_loop()
        await fake._bind()
        print(json.dumps({"base_url": fake.base_url, "pid": os.getpid()}), flush=True)
        assert fake._server is not None
        async with fake._server:
            await fake._server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
