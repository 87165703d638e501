"""The service's gateway over the adapter registry, in front of the fake vLLM server (real loopback HTTP, the
OpenAI SDK as the client): adapters resolve per tenant, the deploy gate runs once and is cached, a tampered
weights file is refused before anything is loaded, and a deleted adapter is unloaded."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from openai import NotFoundError, OpenAI, UnprocessableEntityError

from api.app import create_app
from core.db.access.tenants import create_api_key
from core.db.engine import session_scope
from core.registry import local_adapter_dir
from core.settings import Settings
from tests.api.support import register_adapter, tenant_of
from tests.support.fake_vllm import FakeVLLM, write_base_config
from trace_engine.serving.uvicorn_thread import serve_in_thread


@dataclass
class Service:
    url: str
    app: object
    settings: Settings
    fake: FakeVLLM
    keys: dict[str, str]  # tenant label -> API key

    def sdk(self, tenant: str = "acme") -> OpenAI:
        return OpenAI(base_url=self.url + "/v1", api_key=self.keys[tenant], max_retries=0, timeout=10)

    def register(self, tenant: str = "acme", weights: bytes = b"w", **overrides: object) -> str:
        sessions = self.app.state.sessions  # type: ignore[attr-defined]
        tenant_id = tenant_of(sessions, {"Authorization": f"Bearer {self.keys[tenant]}"})
        return register_adapter(sessions, self.settings, tenant_id, weights=weights, **overrides)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    with FakeVLLM() as fake:
        settings = Settings(data_dir=tmp_path / "state", serving_url=fake.base_url + "/v1",
                            serving_base_model="fake-base")
        write_base_config(settings.models_root / "fake-base")  # isolation (the null adapter) is shaped from it
        app = create_app(settings, lambda job_id, stage: None)
        keys = {}
        with session_scope(app.state.sessions) as session:
            for tenant in ("acme", "other"):
                keys[tenant] = create_api_key(session, tenant_name=f"{tenant}-{secrets.token_hex(3)}")
        with serve_in_thread(app) as url:
            yield Service(url, app, settings, fake, keys)
        app.state.engine.dispose()


def ask(client: OpenAI, model: str, text: str = "hi there") -> str:
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}], max_tokens=8)
    return str(reply.choices[0].message.content)


def test_an_adapter_is_served_by_name_or_id_after_passing_the_deploy_gate(service: Service) -> None:
    adapter_id = service.register(adapter_name="kind-v2")
    client = service.sdk()
    assert ask(client, "kind-v2") == f"{adapter_id} answers: hi there"
    assert ask(client, adapter_id) == f"{adapter_id} answers: hi there"
    assert ask(client, "fake-base") == "fake-base answers: hi there"
    gate = httpx.get(f"{service.url}/v1/adapters/{adapter_id}",
                     headers={"Authorization": f"Bearer {service.keys['acme']}"}).json()["deploy_gate"]
    assert gate["passed"] and {c["name"] for c in gate["checks"]} == {"weights_sha256", "changes_outputs"}
    probes = len(service.fake.calls_to("/v1/chat/completions"))
    ask(client, "kind-v2")  # the gate result is cached: one more generation, no new probes
    assert len(service.fake.calls_to("/v1/chat/completions")) == probes + 1
    assert [m.id for m in client.models.list().data] == ["fake-base", "kind-v2"]


def test_another_tenants_adapter_does_not_exist_for_you(service: Service) -> None:
    adapter_id = service.register(adapter_name="kind-v2")
    other = service.sdk("other")
    for model in ("kind-v2", adapter_id):
        with pytest.raises(NotFoundError) as caught:
            ask(other, model)
        assert caught.value.body["code"] == "model_not_found"  # type: ignore[index]
    assert [m.id for m in other.models.list().data] == ["fake-base"]
    assert service.fake.calls_to("/v1/load_lora_adapter") == []


def test_a_tampered_adapter_fails_the_gate_and_is_never_loaded(service: Service) -> None:
    adapter_id = service.register(weights=b"original")
    job_id = httpx.get(f"{service.url}/v1/adapters/{adapter_id}",
                       headers={"Authorization": f"Bearer {service.keys['acme']}"}).json()["job_id"]
    weights = local_adapter_dir(service.settings, f"jobs/{job_id}/train/adapter") / "adapter_model.safetensors"
    weights.write_bytes(b"swapped")
    with pytest.raises(UnprocessableEntityError) as caught:
        ask(service.sdk(), adapter_id)
    error = caught.value.body
    assert error["code"] == "deploy_gate_failed" and "hash mismatch" in error["message"]  # type: ignore[index]
    assert service.fake.calls_to("/v1/load_lora_adapter") == []
    gate = httpx.get(f"{service.url}/v1/adapters/{adapter_id}",
                     headers={"Authorization": f"Bearer {service.keys['acme']}"}).json()["deploy_gate"]
    assert gate["passed"] is False


def test_deleting_a_served_adapter_unloads_it(service: Service) -> None:
    adapter_id = service.register()
    client = service.sdk()
    ask(client, adapter_id)
    assert adapter_id in service.fake.loaded
    headers = {"Authorization": f"Bearer {service.keys['acme']}"}
    assert httpx.delete(f"{service.url}/v1/adapters/{adapter_id}", headers=headers).status_code == 204
    assert adapter_id not in service.fake.loaded
    with pytest.raises(NotFoundError):
        ask(client, adapter_id)
