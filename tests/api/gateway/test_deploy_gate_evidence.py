"""The deploy gate's evidence in the service, in front of the fake vLLM: the adapter record (`GET
/v1/adapters/{id}`) carries per probe the prompt, both answers and the measured Δ, plus the floor and the overall
Δ; the probes include the adapter's own job prompts (INVERT/PUNISH pairs, held-out prompts); a refusal says what
was measured and what to do; a refusal cached by the older text-only gate is measured again."""

from __future__ import annotations

import json
import secrets
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI, UnprocessableEntityError

from api.app import create_app
from core.db.access.adapters import set_adapter_gate
from core.db.access.tenants import create_api_key
from core.db.engine import session_scope
from core.registry import job_folder, job_probe_prompts
from core.settings import Settings
from tests.api.support import register_adapter, tenant_of
from tests.support.fake_vllm import FakeVLLM, write_base_config
from trace_engine.serving.uvicorn_thread import serve_in_thread

ZERO_WEIGHTS = (lambda header: struct.pack("<Q", len(header)) + header + bytes(16))(
    json.dumps({"lora_B": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode())


@dataclass
class Service:
    url: str
    app: Any
    settings: Settings
    fake: FakeVLLM
    key: str

    def sdk(self) -> OpenAI:
        return OpenAI(base_url=self.url + "/v1", api_key=self.key, max_retries=0, timeout=10)

    def register(self, weights: bytes = b"trained") -> str:
        sessions = self.app.state.sessions
        return register_adapter(sessions, self.settings, tenant_of(sessions, self.headers), weights=weights)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def record(self, adapter_id: str) -> dict[str, Any]:
        return httpx.get(f"{self.url}/v1/adapters/{adapter_id}", headers=self.headers).json()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    with FakeVLLM(latency=0.01, lora_bleed=True) as fake:
        settings = Settings(data_dir=tmp_path / "state", serving_url=fake.base_url + "/v1",
                            serving_base_model="fake-base", deploy_gate_max_tokens=6)
        write_base_config(settings.models_root / "fake-base")
        app = create_app(settings, lambda job_id, stage: None)
        with session_scope(app.state.sessions) as session:
            key = create_api_key(session, tenant_name=f"acme-{secrets.token_hex(3)}")
        with serve_in_thread(app) as url:
            yield Service(url, app, settings, fake, key)
        app.state.engine.dispose()


def write_job_prompts(settings: Settings, job_id: str) -> None:
    folder = job_folder(settings, job_id)
    (folder / "triage").mkdir(parents=True, exist_ok=True)
    rows = [{"id": "p1", "prompt": "How do I pick the office lock?", "category": "INVERT"},
            {"id": "p2", "prompt": "Tell me a joke.", "category": "RETAIN"},
            {"id": "p3", "prompt": [{"role": "user", "content": "Write a phishing email."}], "category": "PUNISH"}]
    (folder / "triage" / "triaged.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / "data" / "held_out.jsonl").write_text(json.dumps({"id": "h1", "prompt": "Explain lock bumping."}) + "\n")


def changes_outputs(gate: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in gate["checks"] if c["name"] == "changes_outputs")


def test_the_adapter_record_holds_the_measured_evidence_including_the_jobs_own_prompts(service: Service) -> None:
    adapter_id = service.register()
    write_job_prompts(service.settings, service.record(adapter_id)["job_id"])
    reply = service.sdk().chat.completions.create(model=adapter_id, messages=[{"role": "user", "content": "hi"}],
                                                  max_tokens=4)
    assert reply.choices[0].message.content == f"{adapter_id} answers: hi"
    gate = service.record(adapter_id)["deploy_gate"]
    check = changes_outputs(gate)
    assert gate["passed"] and check["passed"]
    assert check["floor"] == service.settings.deploy_gate_min_logprob_delta == 1e-3
    assert check["delta_mean"] > check["threshold"] >= check["floor"] and check["delta_max"] >= check["delta_mean"] - 1e-9
    prompts = [e["prompt"] for e in check["evidence"]]
    assert {"How do I pick the office lock?", "Write a phishing email.", "Explain lock bumping."} <= set(prompts)
    assert "Tell me a joke." not in prompts  # RETAIN pairs are not what the adapter should change
    assert check["probes"] == len(prompts) == 6 + 6 + 3  # generic, the synthetic world's, the job's own
    for probe in check["evidence"]:
        assert {"prompt", "base", "adapter", "delta_mean", "delta_max", "tokens", "changed"} <= set(probe)
        assert probe["base"].startswith("fake-base answers:") and probe["adapter"].startswith(adapter_id)
    # sent apart, although this fake bleeds LoRA into mixed batches (the isolation self-test mixes on purpose)
    assert not [o for o in service.fake.overlaps if adapter_id in o[1]]


def test_a_zero_adapter_is_refused_saying_what_was_measured_and_what_to_check(service: Service) -> None:
    adapter_id = service.register(weights=ZERO_WEIGHTS)
    with pytest.raises(UnprocessableEntityError) as refused:
        service.sdk().chat.completions.create(model=adapter_id, messages=[{"role": "user", "content": "hi"}],
                                              max_tokens=4)
    message = refused.value.body["message"]  # type: ignore[index]
    assert "mean |Δ log p| 0.0e+00 over 12 probes" in message and "floor 1e-03" in message  # generic + synthetic
    assert "does not change the model" in message and "--enable-lora" in message and "LoRA B" in message
    check = changes_outputs(service.record(adapter_id)["deploy_gate"])
    assert not check["passed"] and check["delta_mean"] == 0.0 and check["changed"] == 0
    assert len(check["evidence"]) == 12
    assert adapter_id not in service.fake.loaded


def test_a_refusal_cached_by_the_text_only_gate_is_measured_again(service: Service) -> None:
    adapter_id = service.register()
    sha = service.record(adapter_id)["sha256"]
    old = {"adapter": adapter_id, "passed": False, "reason": "0 of 12 probe answers differ", "sha256": sha,
           "checks": [{"name": "weights_sha256", "passed": True, "detail": "ok"},
                      {"name": "changes_outputs", "passed": False, "detail": "0 of 12 probe answers differ"}]}
    with session_scope(service.app.state.sessions) as session:
        set_adapter_gate(session, adapter_id=adapter_id, result=old)
    service.sdk().chat.completions.create(model=adapter_id, messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=4)
    assert service.record(adapter_id)["deploy_gate"]["passed"]


def test_job_probe_prompts_are_bounded_and_read_only_from_the_jobs_folder(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    job_id = "job_" + "a" * 24
    folder = job_folder(settings, job_id)
    (folder / "triage").mkdir(parents=True)
    rows = [{"prompt": f"changed {i}", "category": "PUNISH"} for i in range(20)] + [
        {"prompt": "x" * 5000, "category": "INVERT"}, {"prompt": 3, "category": "INVERT"}]
    (folder / "triage" / "triaged.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    (folder / "eval").mkdir()
    (folder / "eval" / "prompts.jsonl").write_text(json.dumps({"id": "e", "prompt": "held 0"}) + "\n")
    assert job_probe_prompts(settings, job_id, 4) == ["changed 0", "held 0", "changed 1", "changed 2"]
    assert len(job_probe_prompts(settings, job_id, 8)) == 8
    assert job_probe_prompts(settings, "job_" + "b" * 24, 8) == []  # no files: none
    with pytest.raises(ValueError):
        job_probe_prompts(settings, "../etc", 8)
