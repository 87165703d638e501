"""The local serving backend for real: a tiny model with peft LoRA adapters behind the vLLM HTTP endpoints."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from tests.trace_engine.serving.tiny_adapters import CHAT_PROMPTS, TinyWorld, tiny_world
from trace_engine.serving.engine import AdapterEngine
from trace_engine.serving.local_server import LocalServer, create_app
from trace_engine.serving.uvicorn_thread import serve_in_thread


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> TinyWorld:
    return tiny_world(tmp_path_factory.mktemp("serving"))


@pytest.fixture(scope="module")
def server(world: TinyWorld) -> Iterator[tuple[str, LocalServer]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the server runs on a shared CPU (--num-threads 1); restored below
    try:
        yield from _serve(world)
    finally:
        torch.set_num_threads(threads)


def _serve(world: TinyWorld) -> Iterator[tuple[str, LocalServer]]:
    engine = AdapterEngine.from_pretrained(str(world.base), served_model_name="tiny-base", max_loras=3)
    local = LocalServer(engine, max_batch_size=16, max_wait_s=0.02)
    with serve_in_thread(create_app(local)) as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            client.post("/v1/load_lora_adapter", json={"lora_name": "a", "lora_path": str(world.adapter_a)})
            client.post("/v1/load_lora_adapter", json={"lora_name": "b", "lora_path": str(world.adapter_b)})
        yield url, local


@pytest.fixture
def client(server: tuple[str, LocalServer]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server[0], timeout=60) as c:
        yield c


def chat(client: httpx.Client, model: str, prompt: str = CHAT_PROMPTS[0], **extra: Any) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 12, "temperature": 0,
            **extra}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def text_of(data: dict[str, Any]) -> str:
    return data["choices"][0]["message"]["content"]


def test_two_adapters_on_one_base_answer_differently_from_each_other_and_the_base(client: httpx.Client) -> None:
    answers = {m: text_of(chat(client, m)) for m in ("tiny-base", "a", "b")}
    assert len(set(answers.values())) == 3, answers
    assert text_of(chat(client, "a")) == answers["a"]  # greedy is deterministic


def test_chat_response_shape_and_usage(client: httpx.Client) -> None:
    data = chat(client, "a", max_tokens=5)
    assert data["object"] == "chat.completion" and data["model"] == "a"
    assert data["choices"][0]["finish_reason"] in ("length", "stop")
    usage = data["usage"]
    assert usage["completion_tokens"] <= 5 and usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_completions_take_one_or_several_prompts(client: httpx.Client) -> None:
    body = {"model": "b", "prompt": ["Two plus two", "The capital of"], "max_tokens": 6, "temperature": 0}
    data = client.post("/v1/completions", json=body).json()
    single = client.post("/v1/completions", json={**body, "prompt": "The capital of"}).json()
    assert data["object"] == "text_completion" and [c["index"] for c in data["choices"]] == [0, 1]
    assert data["choices"][1]["text"] == single["choices"][0]["text"]


def test_streaming_yields_the_same_text_as_a_plain_request(client: httpx.Client) -> None:
    body = {"model": "a", "messages": [{"role": "user", "content": CHAT_PROMPTS[1]}], "max_tokens": 12,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read()
    events = [e.removeprefix(b"data: ") for e in raw.split(b"\n\n") if e]
    assert events[-1] == b"[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    deltas = [c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]]
    assert len([d for d in deltas if d]) > 1  # token by token, not one blob
    plain = chat(client, "a", CHAT_PROMPTS[1])
    assert "".join(deltas) == text_of(plain)
    assert chunks[-2]["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
    assert chunks[-1]["usage"] == plain["usage"]


def test_batched_generation_equals_one_at_a_time(server: tuple[str, LocalServer], client: httpx.Client) -> None:
    url, local = server
    one_by_one = [text_of(chat(client, "a", p, max_tokens=10)) for p in CHAT_PROMPTS]
    before = local.batcher.stats.batches

    async def concurrently() -> list[str]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as ac:
            responses = await asyncio.gather(*(ac.post("/v1/chat/completions", json={
                "model": "a", "messages": [{"role": "user", "content": p}], "max_tokens": 10, "temperature": 0})
                for p in CHAT_PROMPTS))
        return [text_of(r.json()) for r in responses]

    assert asyncio.run(concurrently()) == one_by_one
    sizes = local.batcher.stats.batch_sizes[before - local.batcher.stats.batches:]
    assert max(sizes) > 1, sizes  # they really shared a generate call
    assert len(sizes) < len(CHAT_PROMPTS)


def test_stop_sequence_cuts_the_answer_before_it(client: httpx.Client) -> None:
    full = text_of(chat(client, "b", max_tokens=12))
    stop = full[len(full) // 2 :][:2]
    cut = chat(client, "b", max_tokens=12, stop=[stop])
    assert text_of(cut) == full[: full.index(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop"


def test_seeded_sampling_is_reproducible(client: httpx.Client) -> None:
    first = text_of(chat(client, "a", temperature=1.0, top_p=0.9, seed=7, max_tokens=10))
    again = text_of(chat(client, "a", temperature=1.0, top_p=0.9, seed=7, max_tokens=10))
    assert first == again


def test_load_and_unload_follow_vllm(client: httpx.Client, world: TinyWorld) -> None:
    load = {"lora_name": "zero", "lora_path": str(world.adapter_zero)}
    assert client.post("/v1/load_lora_adapter", json=load).text == "Success: LoRA adapter 'zero' added successfully."
    again = client.post("/v1/load_lora_adapter", json=load)
    assert again.status_code == 400 and "already been loaded" in again.json()["error"]["message"]
    models = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert models == ["tiny-base", "a", "b", "zero"]
    full = client.post("/v1/load_lora_adapter", json={"lora_name": "fourth", "lora_path": str(world.adapter_a)})
    assert full.status_code == 400 and full.json()["error"]["code"] == "too_many_adapters"
    assert client.post("/v1/unload_lora_adapter", json={"lora_name": "zero"}).status_code == 200
    gone = client.post("/v1/unload_lora_adapter", json={"lora_name": "zero"})
    assert gone.status_code == 404
    missing = client.post("/v1/chat/completions", json={"model": "zero", "messages": [{"role": "user",
                                                                                        "content": "x"}]})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_pickle_adapters_and_bad_requests_are_refused(client: httpx.Client, tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4}')
    (tmp_path / "adapter_model.bin").write_bytes(b"not loaded")
    pickle = client.post("/v1/load_lora_adapter", json={"lora_name": "p", "lora_path": str(tmp_path)})
    assert pickle.status_code == 400 and "pickle" in pickle.json()["error"]["message"]
    hot = client.post("/v1/chat/completions", json={"model": "a", "temperature": 5,
                                                     "messages": [{"role": "user", "content": "x"}]})
    assert hot.status_code == 400 and hot.json()["error"]["param"] == "temperature"
    long = client.post("/v1/completions", json={"model": "a", "prompt": "x", "max_tokens": 10_000})
    assert long.status_code == 400 and long.json()["error"]["param"] == "max_tokens"


def test_streamed_text_never_leaks_a_stop_sequence(client: httpx.Client) -> None:
    full = text_of(chat(client, "b", max_tokens=12))
    stop = full[len(full) // 2 :][:2]
    body = {"model": "b", "messages": [{"role": "user", "content": CHAT_PROMPTS[0]}], "max_tokens": 12,
            "temperature": 0, "stop": [stop], "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        events = [e.removeprefix(b"data: ") for e in response.read().split(b"\n\n") if e]
    chunks = [json.loads(e) for e in events[:-1]]
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert streamed == full[: full.index(stop)]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_a_request_without_max_tokens_gets_what_fits_after_its_prompt(world: TinyWorld) -> None:
    """vLLM's default: no max_tokens = the context left after the prompt. (It used to be the whole context, so
    every such request was a 400 telling the client to lower a max_tokens it never sent.)"""
    from fastapi.testclient import TestClient

    engine = AdapterEngine.from_pretrained(str(world.base), served_model_name="tiny-base", max_model_len=40)
    with TestClient(create_app(LocalServer(engine, max_wait_s=0.0))) as client:
        messages = [{"role": "user", "content": CHAT_PROMPTS[0]}]
        fits = client.post("/v1/chat/completions", json={"model": "tiny-base", "messages": messages,
                                                          "temperature": 0})
        assert fits.status_code == 200, fits.text
        usage = fits.json()["usage"]
        assert usage["completion_tokens"] > 0 and usage["total_tokens"] <= 40
        room = 40 - usage["prompt_tokens"]
        sent = client.post("/v1/chat/completions", json={"model": "tiny-base", "messages": messages,
                                                         "max_tokens": room + 1})
        error = sent.json()["error"]
        assert sent.status_code == 400 and error["param"] == "max_tokens"
        assert f"max_tokens={room + 1}" in error["message"] and f"at most {room}" in error["message"]
        long = client.post("/v1/completions", json={"model": "tiny-base", "prompt": " ".join(CHAT_PROMPTS * 3)})
        error = long.json()["error"]
        assert long.status_code == 400 and error["param"] == "prompt" and "max_tokens" not in error["message"]


def test_tokenize_gives_the_ids_chat_generates_from_and_detokenize_inverts(client: httpx.Client,
                                                                          server: tuple[str, LocalServer]) -> None:
    messages = [{"role": "user", "content": CHAT_PROMPTS[1]}]
    tokens = client.post("/tokenize", json={"model": "a", "messages": messages, "add_generation_prompt": True}).json()
    assert tokens["count"] == len(tokens["tokens"]) == chat(client, "tiny-base", CHAT_PROMPTS[1])["usage"][
        "prompt_tokens"]
    assert tokens["tokens"] == server[1].engine.tokenize_chat(messages)
    text = client.post("/tokenize", json={"prompt": "reset the password", "add_special_tokens": False}).json()
    assert client.post("/detokenize", json={"tokens": text["tokens"]}).json() == {"prompt": "reset the password"}
    assert client.post("/tokenize", json={"model": "nope", "prompt": "x"}).status_code == 404
    refused = client.post("/tokenize", json={"messages": messages, "add_generation_prompt": False})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "add_generation_prompt"


def test_prompt_logprobs_equal_a_plain_forward_pass_per_adapter_also_when_batched(
        server: tuple[str, LocalServer], world: TinyWorld) -> None:
    """The fast path (rows of different lengths right-padded into one forward pass, adapter selected as for
    generation) against the obvious computation: one unpadded row through plain peft."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from trace_engine.logprobs import token_logps

    engine = server[1].engine
    rows = [engine.tokenize_chat([{"role": "user", "content": p}]) for p in CHAT_PROMPTS[:4]]

    async def score(model: str) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=server[0], timeout=60) as c:
            replies = await asyncio.gather(*(c.post("/v1/completions", json={
                "model": model, "prompt": ids, "max_tokens": 1, "temperature": 0, "prompt_logprobs": 2})
                for ids in rows))
        return [r.json()["choices"][0]["prompt_logprobs"] for r in replies]

    base = AutoModelForCausalLM.from_pretrained(world.base, dtype=torch.float32).eval()
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(world.base, dtype=torch.float32),
                                      world.adapter_a).eval()
    for model, reference in (("tiny-base", base), ("a", tuned)):
        for ids, got in zip(rows, asyncio.run(score(model)), strict=True):
            with torch.no_grad():
                want = token_logps(reference(torch.tensor([ids])).logits, torch.tensor([ids]))[0]
            assert got[0] is None and len(got) == len(ids)
            for t in range(1, len(ids)):
                entry = got[t][str(ids[t])]
                assert entry["logprob"] == pytest.approx(float(want[t]), abs=1e-5)
                assert entry["rank"] >= 1 and len(got[t]) <= 3  # the token itself and the top 2
                assert min(v["rank"] for v in got[t].values()) == 1
