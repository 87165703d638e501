"""The gateway's backend client against a fake vLLM server over real loopback HTTP."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.gateway.backend import AdapterLoadError, GatewayError, ServingBackend
from core.registry import AdapterRef
from tests.support.fake_vllm import FakeVLLM

LOAD, UNLOAD, CHAT = "/v1/load_lora_adapter", "/v1/unload_lora_adapter", "/v1/chat/completions"


@pytest.fixture
def fake() -> Iterator[FakeVLLM]:
    with FakeVLLM() as server:
        yield server


@pytest.fixture
def adapters(tmp_path: Path) -> dict[str, AdapterRef]:
    refs = {}
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        refs[name] = AdapterRef(f"adp-{name}", str(tmp_path / name))
    return refs


def chat_body(text: str = "hello there", **extra: Any) -> dict[str, Any]:
    return {"model": "ignored", "messages": [{"role": "user", "content": text}], "max_tokens": 32, **extra}


def content(data: dict[str, Any]) -> str:
    return data["choices"][0]["message"]["content"]


def run(coro_fn: Any, fake: FakeVLLM, **kwargs: Any) -> Any:
    async def main() -> Any:
        async with ServingBackend(fake.base_url, **kwargs) as backend:
            return await coro_fn(backend)

    return asyncio.run(main())


def test_adapter_loads_on_first_use_only_and_is_applied(fake: FakeVLLM, adapters: dict[str, AdapterRef]) -> None:
    async def scenario(backend: ServingBackend) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        first = await backend.chat_completions(chat_body(), adapters["a"], client_model="my-model")
        second = await backend.chat_completions(chat_body(), adapters["a"], client_model="my-model")
        base = await backend.chat_completions(chat_body(), None, client_model="base")
        return first, second, base

    first, second, base = run(scenario, fake)
    assert fake.calls_to(LOAD) == [{"lora_name": "adp-a", "lora_path": adapters["a"].path}]
    assert [b["model"] for b in fake.calls_to(CHAT)] == ["adp-a", "adp-a", "fake-base"]
    assert content(first) == content(second) == "adp-a answers: hello there"
    assert content(base) == "fake-base answers: hello there"
    assert first["model"] == "my-model"  # the backend's name never reaches the client


def test_least_recently_used_adapter_is_unloaded_beyond_the_limit(fake: FakeVLLM,
                                                                   adapters: dict[str, AdapterRef]) -> None:
    async def scenario(backend: ServingBackend) -> list[str]:
        for name in ("a", "b", "a", "c"):  # b is the least recently used when c arrives
            await backend.chat_completions(chat_body(), adapters[name])
        return backend.loaded_adapters

    loaded = run(scenario, fake, max_loaded_adapters=2)
    assert fake.calls_to(UNLOAD) == [{"lora_name": "adp-b"}]
    assert loaded == ["adp-a", "adp-c"]
    assert sorted(fake.loaded) == ["adp-a", "adp-c"]


def test_concurrent_first_requests_load_the_adapter_once(adapters: dict[str, AdapterRef]) -> None:
    with FakeVLLM(load_latency=0.1) as fake:
        async def scenario(backend: ServingBackend) -> list[Any]:
            return await asyncio.gather(*(backend.chat_completions(chat_body(f"q{i}"), adapters["a"])
                                          for i in range(12)))

        results = run(scenario, fake)
    assert len(fake.calls_to(LOAD)) == 1
    assert [content(r) for r in results] == [f"adp-a answers: q{i}" for i in range(12)]


def test_an_adapter_in_use_is_not_unloaded(adapters: dict[str, AdapterRef]) -> None:
    with FakeVLLM(latency=0.3) as fake:
        async def scenario(backend: ServingBackend) -> Any:
            slow = asyncio.create_task(backend.chat_completions(chat_body(), adapters["a"]))
            await asyncio.sleep(0.1)  # a is loaded and busy
            other = await backend.chat_completions(chat_body(), adapters["b"])
            return await slow, other

        first, other = run(scenario, fake, max_loaded_adapters=1)
    assert fake.calls_to(UNLOAD) == []  # over the limit for a moment rather than pulling a busy adapter
    assert content(first).startswith("adp-a") and content(other).startswith("adp-b")


def test_streaming_passes_events_through_with_the_client_model_name(fake: FakeVLLM,
                                                                     adapters: dict[str, AdapterRef]) -> None:
    async def scenario(backend: ServingBackend) -> bytes:
        stream = await backend.chat_completions(chat_body("one two three", stream=True), adapters["a"],
                                                client_model="mine")
        return b"".join([chunk async for chunk in stream])

    raw = run(scenario, fake)
    events = [e.removeprefix(b"data: ") for e in raw.split(b"\n\n") if e]
    assert events[-1] == b"[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "adp-a answers: one two three"
    assert {c["model"] for c in chunks} == {"mine"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_backend_down_is_503_with_an_openai_error_body(adapters: dict[str, AdapterRef]) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"

    async def scenario() -> GatewayError:
        async with ServingBackend(url, base_model="x", connect_timeout_s=1) as backend:
            with pytest.raises(GatewayError) as info:
                await backend.chat_completions(chat_body(), None)
            return info.value

    error = asyncio.run(scenario())
    assert error.status == 503
    assert error.body()["error"]["code"] == "backend_unavailable"
    assert set(error.body()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(("failure", "status"), [("500", 502), ("503", 503)])
def test_backend_errors_map_to_gateway_statuses(fake: FakeVLLM, failure: str, status: int) -> None:
    fake.fail_next(failure)

    async def scenario(backend: ServingBackend) -> GatewayError:
        with pytest.raises(GatewayError) as info:
            await backend.chat_completions(chat_body(), None)
        return info.value

    assert run(scenario, fake).status == status


def test_a_failed_stream_start_raises_before_any_byte(fake: FakeVLLM) -> None:
    fake.fail_next("500")

    async def scenario(backend: ServingBackend) -> int:
        with pytest.raises(GatewayError) as info:
            await backend.chat_completions(chat_body(stream=True), None)
        return info.value.status

    assert run(scenario, fake) == 502


def test_a_stream_broken_midway_ends_with_an_in_band_error(fake: FakeVLLM) -> None:
    fake.fail_next("break_stream")

    async def scenario(backend: ServingBackend) -> bytes:
        stream = await backend.chat_completions(chat_body(stream=True), None, client_model="m")
        return b"".join([chunk async for chunk in stream])

    events = [e.removeprefix(b"data: ") for e in run(scenario, fake).split(b"\n\n") if e]
    assert json.loads(events[0])["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert json.loads(events[1])["choices"][0]["delta"]["content"] == "fake-base"
    assert json.loads(events[-2])["error"]["code"] == "backend_stream_broken"
    assert events[-1] == b"[DONE]"


def test_backend_restart_reloads_the_adapter_and_retries(fake: FakeVLLM, adapters: dict[str, AdapterRef]) -> None:
    async def scenario(backend: ServingBackend) -> dict[str, Any]:
        await backend.chat_completions(chat_body(), adapters["a"])
        fake.restart()  # vLLM restarted: it no longer knows adp-a, the gateway still thinks it is loaded
        return await backend.chat_completions(chat_body(), adapters["a"])

    assert content(run(scenario, fake)) == "adp-a answers: hello there"
    assert len(fake.calls_to(LOAD)) == 2


def test_already_loaded_on_the_backend_counts_as_loaded(fake: FakeVLLM, adapters: dict[str, AdapterRef]) -> None:
    httpx.post(fake.base_url + LOAD, json={"lora_name": "adp-a", "lora_path": adapters["a"].path}).raise_for_status()

    async def scenario(backend: ServingBackend) -> dict[str, Any]:
        return await backend.chat_completions(chat_body(), adapters["a"])

    assert content(run(scenario, fake)) == "adp-a answers: hello there"
    assert len(fake.calls_to(LOAD)) == 2  # ours got "already loaded" (400) and went on


def test_an_adapter_the_backend_cannot_load_is_a_502(fake: FakeVLLM, tmp_path: Path) -> None:
    missing = AdapterRef("adp-missing", str(tmp_path / "nowhere"))

    async def scenario(backend: ServingBackend) -> AdapterLoadError:
        with pytest.raises(AdapterLoadError) as info:
            await backend.chat_completions(chat_body(), missing)
        return info.value

    error = run(scenario, fake)
    assert error.status == 502 and "No adapter found" in error.message
    assert fake.calls_to(CHAT) == []


def test_base_model_name_comes_from_the_backend_model_list(fake: FakeVLLM) -> None:
    async def scenario(backend: ServingBackend) -> str:
        return await backend.base_model()

    assert run(scenario, fake) == "fake-base"


def test_the_gateway_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = ("import sys, api.gateway; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'peft')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
