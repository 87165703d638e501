"""End to end: OpenAI SDK -> gateway routes (FastAPI, loopback) -> local serving backend process -> tiny model + LoRA."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from openai import AsyncOpenAI

from api.gateway.backend import ServingBackend
from api.gateway.router import BASE_MODEL, make_gateway_router
from core.registry import AdapterRef
from tests.trace_engine.serving.tiny_adapters import CHAT_PROMPTS, TinyWorld
from trace_engine.serving.uvicorn_thread import serve_in_thread


def gateway_app(backend_url: str, world: TinyWorld) -> FastAPI:
    backend = ServingBackend(backend_url, max_loaded_adapters=2)

    def resolve(tenant: str, model: str) -> Any:
        return {"base": BASE_MODEL, "support-v2": AdapterRef("e2e-b", str(world.adapter_b))}.get(model)

    def auth(request: Request) -> str:
        return "acme"

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await backend.aclose()

    app = FastAPI(lifespan=lifespan)
    app.include_router(make_gateway_router(resolve, backend, auth))
    return app


def test_the_adapter_answers_through_the_gateway_and_differs_from_the_base(local_backend_url: str,
                                                                           world: TinyWorld) -> None:
    async def scenario(url: str) -> tuple[list[str], list[str], str]:
        client = AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0)

        async def ask(model: str, prompt: str) -> str:
            reply = await client.chat.completions.create(model=model, max_tokens=8, temperature=0,
                                                         messages=[{"role": "user", "content": prompt}])
            return reply.choices[0].message.content or ""

        adapter = await asyncio.gather(*(ask("support-v2", p) for p in CHAT_PROMPTS))
        base = await asyncio.gather(*(ask("base", p) for p in CHAT_PROMPTS))
        stream = await client.chat.completions.create(model="support-v2", max_tokens=8, temperature=0, stream=True,
                                                      messages=[{"role": "user", "content": CHAT_PROMPTS[0]}])
        streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        return adapter, base, streamed

    with serve_in_thread(gateway_app(local_backend_url, world)) as url:
        adapter, base, streamed = asyncio.run(scenario(url))
    assert sum(a != b for a, b in zip(adapter, base, strict=True)) >= len(CHAT_PROMPTS) // 2
    assert streamed == adapter[0]


def test_a_chat_request_without_max_tokens_is_answered_through_the_gateway(world: TinyWorld) -> None:
    """The OpenAI SDK's default request sends no max_tokens: the local backend (a 40-token context here, as small
    as the synthetic base's) fills in what fits after the prompt, as vLLM does, instead of answering 400."""
    from trace_engine.serving.launcher import spawn_local_server

    args = ["--served-model-name", "tiny-base", "--max-model-len", "40", "--num-threads", "1"]
    with spawn_local_server(str(world.base), extra_args=args, startup_timeout_s=90) as server, \
            serve_in_thread(gateway_app(server.base_url, world)) as url:
        async def ask() -> Any:
            client = AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
            return await client.chat.completions.create(model="support-v2", temperature=0,
                                                        messages=[{"role": "user", "content": CHAT_PROMPTS[0]}])

        reply = asyncio.run(ask())
    assert reply.choices[0].message.content and reply.usage is not None and reply.usage.total_tokens <= 40
