"""Schemathesis over the whole OpenAPI schema (the gateway's OpenAI-compatible routes included): no input may
get a 5xx. The app runs in-process on a fresh Postgres database, `/readyz` pings the real Redis, and the gateway
talks to a stub serving backend that always behaves (so any 5xx is the API's own fault).

Per operation: a bounded, seeded number of schemathesis cases in positive and negative mode, sent with a valid
tenant key so they get past auth. Each case may be poisoned: a NUL character or a lone surrogate put into one
string (value or key) of its JSON body, or a NUL into a query, path or header value (Latin-1 into a header), path
ids swapped for ids that exist, or the key dropped. Schemathesis itself never generates lone surrogates and keeps positive-mode headers ASCII,
so an explicit matrix follows: every parameter of every operation with NUL / encoded-surrogate / invalid UTF-8 /
Latin-1 values, every string (and a key) of a valid body with NUL and lone surrogates, and uploads whose file
name or rows carry them.

All 5xx are collected and reported together (method, path, status, what was injected, a body excerpt); the
counts go to tests/api/last_fuzz_report.md (gitignored; docs/benchmarks.md quotes them).
`REALIGN_FUZZ_EXAMPLES` sets the examples per operation and mode (default 100), `REALIGN_FUZZ_SEED` the seed.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.python import asgi  # noqa: E402

from api.app import create_app  # noqa: E402
from core.db.access.tenants import create_api_key  # noqa: E402
from core.db.engine import session_scope  # noqa: E402
from core.settings import Settings  # noqa: E402
from tests.support.postgres import fresh_postgres_database  # noqa: E402

from .support import RecordingEnqueuer, realign_body, register_adapter, tenant_of  # noqa: E402

pytestmark = pytest.mark.timeout(900)

EXAMPLES = int(os.environ.get("REALIGN_FUZZ_EXAMPLES", "100"))
SEED = int(os.environ.get("REALIGN_FUZZ_SEED", "20261203"))
REDIS_URL = "redis://127.0.0.1:6379/0"
REPORT = Path(__file__).with_name("last_fuzz_report.md")
REQUEST_TIMEOUT_S = 20.0
# By design, not a fault: /readyz answers 503 while a dependency (or, with ?require_workers=true, a worker of
# some queue) is missing; this app has no workers. Counted in the report, never as a failure.
EXPECTED_5XX = {("GET", "/readyz", 503)}
NUL, SURROGATES = "\x00", ("\ud800", "\udfff", "\udc80")
POISONS = ("none", "none", "nul", "surrogate", "known_ids", "no_auth")
GOOD_ROWS = [{"id": f"p{i}", "prompt": f"q{i}", "chosen": "yes", "rejected": "no"} for i in range(3)]


@dataclass
class Tally:
    operations: list[str] = field(default_factory=list)
    sent: Counter[str] = field(default_factory=Counter)  # per source: schemathesis / explicit
    classes: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    expected_5xx: int = 0
    failures: list[str] = field(default_factory=list)

    failing_operations: set[str] = field(default_factory=set)
    by_operation: dict[str, Counter[str]] = field(default_factory=dict)

    clean: dict[str, int] = field(default_factory=dict)  # status of each valid body sent unpoisoned
    last_status: int = 0

    def record(self, source: str, operation: str, path: str, status: int, body: bytes, note: str) -> None:
        self.last_status = status
        self.sent[source] += 1
        self.statuses[status] += 1
        self.classes[f"{status // 100}xx"] += 1
        self.by_operation.setdefault(operation, Counter())[f"{status // 100}xx"] += 1
        if status >= 500:
            method, template = operation.split(" ", 1)
            if (method, template, status) in EXPECTED_5XX and b"worker" in body:
                self.expected_5xx += 1
            else:
                excerpt = _show(body[:160].decode("utf-8", "replace"))
                self.failing_operations.add(operation)
                self.failures.append(f"{method} {_show(path)} -> {status} [{note}] {excerpt}")


def _show(text: str) -> str:
    """Control characters and lone surrogates escaped, so a report line stays one readable line."""
    return "".join(c if c.isprintable() and not 0xD800 <= ord(c) <= 0xDFFF else ascii(c)[1:-1] for c in text)


class _Errors(logging.Handler):
    """The server-side exceptions behind 500s (the catch-all handler logs them), for the failure report."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.last: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            self.last = f"{type(exc).__name__}: {str(exc)[:120]}"


# ---------------------------------------------------------------- a stub serving backend


class _Events(httpx.AsyncByteStream):
    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self) -> Any:
        yield self.data


def _stub_backend(request: httpx.Request) -> httpx.Response:
    """vLLM's protocol, well behaved: answers depend on the model so adapters pass the deploy gate."""
    path = request.url.path
    if path == "/v1/models":
        return httpx.Response(200, json={"object": "list", "data": [{"id": "synthetic-tiny", "object": "model"}]})
    if path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
        return httpx.Response(200, text="ok")
    try:
        body = json.loads(request.content)
    except ValueError:
        return httpx.Response(400, json={"error": {"message": "bad json", "type": "invalid_request_error"}})
    model = str(body.get("model"))
    text = f"answer from {model}"
    if path == "/v1/chat/completions":
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                  "finish_reason": "stop"}
        if body.get("logprobs") is True:  # as vLLM: per token, its log-prob and the top alternatives
            steps = [{"token": word, "logprob": -0.1 * (1 + len(model) % 7), "top_logprobs": []}
                     for word in text.split()]
            choice["logprobs"] = {"content": steps}
    else:
        choice = {"index": 0, "text": text, "finish_reason": "stop"}
    if body.get("stream") is True:
        delta = {"index": 0, "delta": {"content": text}} if "chat" in path else {"index": 0, "text": text}
        events = f"data: {json.dumps({'model': model, 'choices': [delta]})}\n\ndata: [DONE]\n\n"
        return httpx.Response(200, stream=_Events(events.encode()), headers={"content-type": "text/event-stream"})
    return httpx.Response(200, json={"id": "x", "object": "chat.completion", "model": model, "choices": [choice],
                                     "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}})


class RaiseRecorder:
    """The app as the client sees it; remembers whether a request reached it and any exception it let out (the
    client then gets no response: that counts as a 500, not as a request that could not be sent)."""

    def __init__(self, app: Any) -> None:
        self.app, self.raised, self.called = app, None, False

    def reset(self) -> None:
        self.raised, self.called = None, False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.called = True
        try:
            await self.app(scope, receive, send)
        except Exception as exc:
            self.raised = exc
            raise


def _redis_ping() -> None:
    import redis

    redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2).ping()


# ---------------------------------------------------------------- the app under test


@dataclass
class World:
    app: Any
    asgi_app: RaiseRecorder
    client: asgi.ASGIClient
    auth: dict[str, str]
    ids: dict[str, list[str]]
    adapter_name: str


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    try:
        _redis_ping()
    except Exception as exc:  # no Redis on this machine
        pytest.skip(f"Redis at {REDIS_URL} unreachable: {exc}")
    with fresh_postgres_database("realign_fuzz") as url:
        data_dir = tmp_path_factory.mktemp("fuzz") / "state"
        config = Settings(data_dir=data_dir, database_url=url, serving_url="http://stub-backend/v1", serving_isolation="off",
                          sse_poll_interval_s=0.05, sse_max_duration_s=0.5, max_upload_bytes=64 * 1024,
                          max_submissions_per_minute=0, max_active_jobs_per_tenant=0,
                          metrics_token="fuzz-metrics-token", deploy_gate_max_tokens=4)
        app = create_app(config, RecordingEnqueuer(), broker_check=_redis_ping)
        backend = app.state.serving.backend
        backend._client = httpx.AsyncClient(base_url=backend.base_url, transport=httpx.MockTransport(_stub_backend))
        with session_scope(app.state.sessions) as session:
            key = create_api_key(session, tenant_name=f"fuzz-{secrets.token_hex(4)}")
        auth = {"Authorization": f"Bearer {key}"}
        recorder = RaiseRecorder(app)
        client = asgi.get_client(recorder)
        with client:
            job = client.post("/v1/realign", json=realign_body(), headers=auth)
            assert job.status_code in (200, 201, 202), job.text
            upload = client.post("/v1/files", headers=auth,
                                 files={"file": ("pairs.jsonl", "".join(json.dumps(r) + "\n" for r in GOOD_ROWS))})
            assert upload.status_code == 201, upload.text
            tenant = tenant_of(app.state.sessions, auth)
            adapter_id = register_adapter(app.state.sessions, config, tenant, adapter_name="fuzz-adapter")
            adapter = client.get(f"/v1/adapters/{adapter_id}", headers=auth).json()
            ids = {"job_id": [job.json()["id"], adapter["job_id"]], "file_id": [upload.json()["id"]],
                   "adapter_id": [adapter_id, adapter["name"]], "name": ["report.json", "metrics.jsonl"]}
            yield World(app, recorder, client, auth, ids, adapter["name"])
        asgi.shutdown_lifespans()
        app.state.engine.dispose()


# ---------------------------------------------------------------- poisoning a generated case


def _string_slots(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], str]]:
    """(path, kind) of every string value ("value") and dict key ("key") in a JSON value."""
    if isinstance(value, str):
        yield path, "value"
    elif isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str):
                yield (*path, k), "key"
            yield from _string_slots(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _string_slots(v, (*path, i))


def _inject(text: str, bad: str, at: int) -> str:
    at = at % (len(text) + 1)
    return text[:at] + bad + text[at:]


def _poison_json(body: Any, bad: str, pick: int) -> tuple[Any, str] | None:
    slots = list(_string_slots(body))
    if not slots:
        return None
    where, kind = slots[pick % len(slots)]
    if not where:
        return _inject(body, bad, pick), "body"
    parent = body
    for part in where[:-1]:
        parent = parent[part]
    last = where[-1]
    if kind == "key":
        parent[_inject(last, bad, pick)] = parent.pop(last)
    else:
        parent[last] = _inject(parent[last], bad, pick)
    return body, "body." + ".".join(map(str, where)) + (" (key)" if kind == "key" else "")


def _poison(case: Any, poison: str, pick: int, world: World) -> str:
    """Mutate `case` in place; returns a note of what was done."""
    if poison == "known_ids":
        for name in case.path_parameters:
            if name in world.ids:
                case.path_parameters[name] = world.ids[name][pick % len(world.ids[name])]
        if isinstance(case.body, dict) and "model" in case.body:
            case.body["model"] = [world.adapter_name, "synthetic-tiny"][pick % 2]
        return "known ids"
    if poison not in ("nul", "surrogate"):
        return poison
    bad = NUL if poison == "nul" else SURROGATES[pick % len(SURROGATES)]
    json_body = case.media_type in (None, "application/json") and not isinstance(case.body, (bytes, type(None)))
    if json_body and pick % 3 != 0:
        try:
            poisoned = _poison_json(case.body, bad, pick)
        except (TypeError, AttributeError):  # NotSet or a non-JSON body
            poisoned = None
        if poisoned is not None:
            case.body = poisoned[0]
            return f"{'NUL' if bad == NUL else f'U+{ord(bad):04X}'} in {poisoned[1]}"
    # Outside a JSON body a lone surrogate cannot be sent as text (URLs are UTF-8, headers Latin-1): there it
    # becomes a NUL, or a non-ASCII Latin-1 character in a header.
    targets = [("query", k) for k, v in case.query.items() if isinstance(v, str)]
    targets += [("path", k) for k, v in case.path_parameters.items() if isinstance(v, str)]
    targets += [("header", k) for k, v in case.headers.items() if isinstance(v, str)]
    if not targets:
        case.headers["X-Fuzz"] = "a" + (NUL if poison == "nul" else "\xe9\xff") + "b"
        return f"{'NUL' if poison == 'nul' else 'Latin-1'} in header X-Fuzz"
    where, name = targets[pick % len(targets)]
    if where == "header":
        bad = NUL if poison == "nul" else "\xe9"
        case.headers[name] = _inject(case.headers[name], bad, pick)
    elif where == "query":
        bad = NUL if poison == "nul" else "\U0001f600"
        case.query[name] = _inject(case.query[name], bad, pick)
    else:
        bad = NUL
        case.path_parameters[name] = _inject(case.path_parameters[name] or "x", bad, pick)
    return f"{'NUL' if bad == NUL else f'U+{ord(bad):04X}'} in {where} {name}"


def _fuzz_operation(operation: Any, mode: GenerationMode, world: World, tally: Tally, errors: _Errors) -> None:
    label = f"{operation.method.upper()} {operation.path}"

    @seed(SEED)
    @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck), print_blob=False, derandomize=False)
    @given(case=operation.as_strategy(generation_mode=mode), poison=st.sampled_from(POISONS),
           pick=st.integers(min_value=0, max_value=10_000))
    def run(case: Any, poison: str, pick: int) -> None:
        note = f"{mode.value}, " + _poison(case, poison, pick, world)
        headers = {} if poison == "no_auth" else dict(world.auth)
        errors.last = None
        world.asgi_app.reset()
        try:
            response = case.call(session=world.client, headers=headers, timeout=REQUEST_TIMEOUT_S)
        except Exception as exc:  # the app raised past every handler, or the request could not be built
            if not world.asgi_app.called:
                tally.sent["unsendable"] += 1  # a case the HTTP client refuses to put on the wire
                return
            tally.record("schemathesis", label, case.formatted_path, 599, repr(exc).encode(),
                         note + f", raised {type(exc).__name__}")
            return
        body = response.content or b""
        if response.status_code >= 500 and errors.last:
            body = errors.last.encode() + b" | " + body
        tally.record("schemathesis", label, case.formatted_path, response.status_code, body, note)

    try:
        run()
    except Unsatisfiable:  # negative mode on an operation with nothing to make invalid (no parameters, no body)
        return


# ---------------------------------------------------------------- the explicit matrix

BAD_URL_VALUES = {"nul": "a%00b", "surrogate": "a%ED%A0%80b", "invalid-utf8": "a%FF%FEb", "nul-only": "%00"}
BAD_HEADER_VALUES = {"nul": "a\x00b", "surrogate-bytes": "a\xed\xa0\x80b", "latin1": "caf\xe9\xff"}


def _valid_bodies(world: World) -> dict[str, Any]:
    policy = {"text": "# P\n## [P1] Be kind\nRefuse insults.\n", "name": "p"}
    return {
        "/v1/realign": realign_body(),
        "/v1/evals": {"model": world.adapter_name, "suites": ["tpa"], "policy": policy,
                      "judge": {"provider": "synthetic"}, "dataset": {"type": "synthetic", "seed": 1, "n": 8},
                      "metadata": {"k": "v"}},
        "/v1/chat/completions": {"model": world.adapter_name, "messages": [{"role": "user", "content": "hi"}]},
        "/v1/completions": {"model": "synthetic-tiny", "prompt": "hi", "max_tokens": 4},
    }


def _explicit(operation: Any, world: World, tally: Tally, errors: _Errors) -> None:
    method, template = operation.method.upper(), operation.path
    definition = operation.definition.raw
    params = definition.get("parameters", [])
    path_ok = {p["name"]: world.ids.get(p["name"], ["x"])[0] for p in params if p["in"] == "path"}
    bodies = _valid_bodies(world)

    def url(path_values: dict[str, str], query: str = "") -> str:
        path = template
        for name, value in path_values.items():
            path = path.replace("{" + name + "}", value)
        return path + (f"?{query}" if query else "")

    def send(target: str, note: str, **kwargs: Any) -> None:
        errors.last = None
        world.asgi_app.reset()
        headers = {**world.auth, **kwargs.pop("headers", {})}
        try:
            response = world.client.request(method, target, headers=headers, timeout=REQUEST_TIMEOUT_S, **kwargs)
            status, body = response.status_code, response.content or b""
        except Exception as exc:
            if not world.asgi_app.called:
                raise  # the client could not send it (the caller may send it another way)
            status, body = 599, repr(exc).encode()
        if status >= 500 and errors.last:
            body = errors.last.encode() + b" | " + body
        tally.record("explicit", f"{method} {template}", target, status, body, note)

    for name in path_ok:
        for kind, value in BAD_URL_VALUES.items():
            send(url({**path_ok, name: value}), f"{kind} in path {name}")
    for p in (p for p in params if p["in"] == "query"):
        for kind, value in BAD_URL_VALUES.items():
            send(url(path_ok, f"{quote(p['name'])}={value}"), f"{kind} in query {p['name']}")
            send(url(path_ok, f"{value}=1"), f"{kind} in a query parameter name")
    for p in (p for p in params if p["in"] == "header"):
        for kind, value in BAD_HEADER_VALUES.items():
            send(url(path_ok), f"{kind} in header {p['name']}", headers={p["name"]: value})
    for kind, value in BAD_HEADER_VALUES.items():
        send(url(path_ok), f"{kind} in header X-Fuzz", headers={"X-Fuzz": value})
    send(url(path_ok), "NUL in the API key", headers={"Authorization": "Bearer ab\x00cd"})
    send(url(path_ok), "Latin-1 in the API key", headers={"Authorization": "Bearer caf\xe9"})

    if template in bodies:
        base = bodies[template]
        send(url(path_ok), "the valid body, unpoisoned", data=json.dumps(base).encode(),
             headers={"Content-Type": "application/json"})
        tally.clean[f"{method} {template}"] = tally.last_status
        for index, (where, kind) in enumerate(_string_slots(base)):
            for bad in (NUL, SURROGATES[index % len(SURROGATES)]):
                body = json.loads(json.dumps(base))
                parent = body
                for part in where[:-1]:
                    parent = parent[part]
                if kind == "key":
                    parent[where[-1] + bad] = parent.pop(where[-1])
                else:
                    parent[where[-1]] = _inject(parent[where[-1]], bad, 1)
                label = "NUL" if bad == NUL else f"U+{ord(bad):04X}"
                send(url(path_ok), f"{label} in body.{'.'.join(map(str, where))}{' (key)' if kind == 'key' else ''}",
                     data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        raw = json.dumps(base).encode()
        for note, data in (("invalid UTF-8 in the JSON body", raw[:-1] + b' , "\xff\xfe": 1}'),
                           ("raw surrogate bytes in the JSON body", raw.replace(b'"', b'"\xed\xa0\x80', 1)),
                           ("deep nesting", b"[" * 5000 + b"]" * 5000), ("deep object", b'{"a":' * 3000 + b"1"
                                                                       + b"}" * 3000)):
            send(url(path_ok), note, data=data, headers={"Content-Type": "application/json"})

    if template == "/v1/files" and method == "POST":
        rows = "".join(json.dumps(r) + "\n" for r in GOOD_ROWS)
        for note, filename, content in (
                ("NUL in the file name", "a\x00b.jsonl", rows),
                ("surrogate in the file name", "a\ud800b.jsonl", rows),
                ("NUL in a pair id", "pairs.jsonl", rows.replace('"p0"', '"p\\u00000"')),
                ("surrogate in a prompt", "pairs.jsonl", rows.replace('"q1"', '"q\\ud8001"')),
                ("raw NUL byte in a row", "pairs.jsonl", rows.replace("q2", "q\x002")),
                ("invalid UTF-8 in a row", "pairs.jsonl", rows.encode().replace(b"q0", b"q\xff\xfe0"))):
            try:
                files = {"file": (filename, content)}
                send(url(path_ok), note, files=files)
            except UnicodeEncodeError:
                # The client cannot encode it; send the multipart body by hand with the raw bytes.
                boundary = "fuzzboundary"
                data = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="'.encode()
                        + filename.encode("utf-8", "surrogatepass") + b'"\r\n\r\n'
                        + (content if isinstance(content, bytes) else content.encode()) + f"\r\n--{boundary}--\r\n"
                        .encode())
                send(url(path_ok), note, data=data,
                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})


# ---------------------------------------------------------------- the test


def test_no_input_gets_a_5xx(world: World) -> None:
    tally, errors = Tally(), _Errors()
    logging.getLogger("realign").addHandler(errors)
    started = time.monotonic()
    try:
        schema = schemathesis.openapi.from_asgi("/openapi.json", world.asgi_app)
        schema.config.generation.update(allow_x00=True, with_security_parameters=False, codec="utf-8")
        operations = []
        for result in schema.get_all_operations():
            operations.append(result.ok())  # an operation schemathesis cannot read is a failure of its own
        # destructive operations last, so earlier ones still find the known ids
        operations.sort(key=lambda op: (op.method.upper() == "DELETE", op.path, op.method))
        assert any(op.path == "/v1/chat/completions" for op in operations), "the gateway is not in the schema"
        for operation in operations:
            tally.operations.append(f"{operation.method.upper()} {operation.path}")
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                _fuzz_operation(operation, mode, world, tally, errors)
            _explicit(operation, world, tally, errors)
    finally:
        logging.getLogger("realign").removeHandler(errors)
    elapsed = time.monotonic() - started
    _write_report(tally, elapsed)
    assert not tally.failures, (f"{len(tally.failures)} response(s) with a 5xx at {len(tally.failing_operations)} "
                                f"operation(s) ({REPORT.name} has them all):\n" + "\n".join(tally.failures[:60]))
    # the explicit body cases poison bodies the API otherwise accepts, so they reach the code behind validation
    assert all(status < 300 for status in tally.clean.values()), tally.clean


def _cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "unknown CPU"
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown CPU")


def _write_report(tally: Tally, elapsed: float) -> None:
    sent = tally.sent["schemathesis"] + tally.sent["explicit"]
    lines = [
        "# Last API fuzzing run (tests/api/test_fuzz_schemathesis.py)", "",
        f"- schemathesis {schemathesis.__version__}, seed {SEED}, {EXAMPLES} examples per operation and mode "
        "(positive, negative)",
        f"- machine: {os.cpu_count()} CPUs ({_cpu_model()}); wall time {elapsed:.1f} s",
        f"- operations: {len(tally.operations)}",
        f"- requests sent: {sent} ({tally.sent['schemathesis']} generated by schemathesis, "
        f"{tally.sent['explicit']} explicit NUL/surrogate/encoding cases); {tally.sent['unsendable']} generated "
        "cases the HTTP client refused to send",
        "- responses by class: " + ", ".join(f"{k}: {v}" for k, v in sorted(tally.classes.items())),
        "- responses by status: " + ", ".join(f"{k}: {v}" for k, v in sorted(tally.statuses.items())),
        "- status 599 = the app raised instead of answering (the client got no response)",
        f"- 5xx: {len(tally.failures)} unexpected, at {len(tally.failing_operations)} operation(s); "
        f"{tally.expected_5xx} expected (/readyz 503: no live workers)",
        "",
    ]
    if tally.failures:
        lines += ["## Operations with a 5xx", "", *[f"- {op}" for op in sorted(tally.failing_operations)], "",
                  "## 5xx responses", "", *[f"- {f}" for f in tally.failures], ""]
    lines += ["## Responses per operation (generated and explicit together)", "",
              "| operation | sent | 2xx | 3xx | 4xx | 5xx |", "| --- | --- | --- | --- | --- | --- |"]
    for op in tally.operations:
        counts = tally.by_operation.get(op, Counter())
        lines.append(f"| `{op}` | {sum(counts.values())} | " + " | ".join(str(counts[f"{k}xx"]) for k in (2, 3, 4, 5))
                     + " |")
    lines.append("")
    REPORT.write_text("\n".join(lines), encoding="utf-8", errors="backslashreplace")
