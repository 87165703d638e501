"""A fake vLLM OpenAI-compatible server on loopback (real HTTP, uvicorn in a thread) for the gateway's tests.

Endpoints as vLLM serves them with `--enable-lora` and runtime adapter loading: POST /v1/load_lora_adapter
(400 if the name is already loaded, 404 if the path is not a directory), POST /v1/unload_lora_adapter (404 if not
loaded), GET /v1/models (base + loaded adapters with `parent`), POST /v1/chat/completions and /v1/completions
(404 for an unknown model; SSE streaming with `data: [DONE]`). Answers are deterministic and name the model that
produced them, so a test sees which adapter was applied: "<model> answers: <prompt words>", one word per token.

    with FakeVLLM(latency=0.05) as fake:
        backend = ServingBackend(fake.base_url)
        fake.fail_next("500"); fake.restart(); fake.calls; fake.loaded
Failure kinds: "500", "503", "break_stream" (a streaming answer that stops after its first chunk).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from trace_engine.serving.uvicorn_thread import serve_in_thread

FAILURE_KINDS = ("500", "503", "break_stream")


def _error(status: int, message: str, type_: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": None, "code": status}},
                        status_code=status)


class FakeVLLM:
    def __init__(self, base_model: str = "fake-base", *, latency: float = 0.0, load_latency: float = 0.0,
                 require_api_key: str | None = None) -> None:
        self.base_model = base_model
        self.latency, self.load_latency = latency, load_latency
        self.require_api_key = require_api_key
        self.loaded: dict[str, str] = {}
        self.calls: list[tuple[str, str, Any]] = []  # (method, path, json body or None)
        self.in_flight = 0
        self.max_in_flight = 0
        self._failures: list[str] = []
        self._lock = threading.Lock()
        self._stack = ExitStack()
        self.base_url = ""
        self.app = self._build_app()

    # ------------------------------------------------------------ control

    def __enter__(self) -> FakeVLLM:
        self.base_url = self._stack.enter_context(serve_in_thread(self.app))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def fail_next(self, kind: str, count: int = 1) -> None:
        if kind not in FAILURE_KINDS:
            raise ValueError(f"unknown failure {kind!r}: one of {FAILURE_KINDS}")
        with self._lock:
            self._failures.extend([kind] * count)

    def restart(self) -> None:
        """Forget every adapter, as a restarted vLLM does."""
        with self._lock:
            self.loaded.clear()

    def calls_to(self, path: str) -> list[Any]:
        return [body for _, p, body in self.calls if p == path]

    def _take_failure(self) -> str | None:
        with self._lock:
            return self._failures.pop(0) if self._failures else None

    # ------------------------------------------------------------ answers

    @staticmethod
    def answer_words(model: str, prompt: str) -> list[str]:
        return [model, "answers:", *prompt.split()]

    def _prompt_text(self, body: dict[str, Any], chat: bool) -> str:
        if chat:
            return " ".join(str(m.get("content", "")) for m in body.get("messages", []))
        prompt = body.get("prompt", "")
        return prompt if isinstance(prompt, str) else " ".join(prompt)

    # ------------------------------------------------------------ app

    def _build_app(self) -> FastAPI:
        app = FastAPI()
        fake = self

        @app.middleware("http")
        async def record(request: Request, call_next: Any) -> Response:
            raw = await request.body()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            fake.calls.append((request.method, request.url.path, body))
            if fake.require_api_key and request.headers.get("authorization") != f"Bearer {fake.require_api_key}":
                return _error(401, "Unauthorized", "Unauthorized")
            return await call_next(request)

        @app.get("/v1/models")
        async def models() -> dict[str, Any]:
            now = int(time.time())
            cards = [{"id": fake.base_model, "object": "model", "created": now, "owned_by": "vllm",
                      "root": fake.base_model, "parent": None}]
            cards += [{"id": n, "object": "model", "created": now, "owned_by": "vllm", "root": p,
                       "parent": fake.base_model} for n, p in fake.loaded.items()]
            return {"object": "list", "data": cards}

        @app.post("/v1/load_lora_adapter")
        async def load(request: Request) -> Response:
            body = await request.json()
            name, path = body.get("lora_name"), body.get("lora_path")
            if not name or not path:
                return _error(400, "Both 'lora_name' and 'lora_path' must be provided.", "BadRequestError")
            if name in fake.loaded:
                return _error(400, f"The lora adapter '{name}' has already been loaded.", "BadRequestError")
            await asyncio.sleep(fake.load_latency)
            if not Path(path).is_dir():
                return _error(404, f"No adapter found for {path}", "NotFoundError")
            fake.loaded[name] = path
            return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

        @app.post("/v1/unload_lora_adapter")
        async def unload(request: Request) -> Response:
            name = (await request.json()).get("lora_name")
            if name not in fake.loaded:
                return _error(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
            del fake.loaded[name]
            return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")

        async def generate(request: Request, chat: bool) -> Response:
            body = await request.json()
            model = body.get("model")
            if model != fake.base_model and model not in fake.loaded:
                return _error(404, f"The model `{model}` does not exist.", "NotFoundError")
            failure = fake._take_failure()
            if failure in ("500", "503"):
                return _error(int(failure), "engine error", "InternalServerError")
            fake.in_flight += 1
            fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
            try:
                await asyncio.sleep(fake.latency)
            finally:
                fake.in_flight -= 1
            words = fake.answer_words(model, fake._prompt_text(body, chat))
            limit = int(body.get("max_tokens") or 64)
            finish = "length" if len(words) > limit else "stop"
            words = words[:limit]
            if body.get("stream"):
                return StreamingResponse(fake._stream(model, words, finish, chat, failure == "break_stream"),
                                         media_type="text/event-stream")
            text = " ".join(words)
            choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
            if chat:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            return JSONResponse({
                "id": "cmpl-fake", "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()), "model": model, "choices": [choice],
                "usage": {"prompt_tokens": 3, "completion_tokens": len(words), "total_tokens": 3 + len(words)}})

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            return await generate(request, True)

        @app.post("/v1/completions")
        async def completions(request: Request) -> Response:
            return await generate(request, False)

        return app

    async def _stream(self, model: str, words: list[str], finish: str, chat: bool, broken: bool
                      ) -> AsyncIterator[bytes]:
        for i, word in enumerate(words):
            piece = word if i == 0 else " " + word
            choice: dict[str, Any] = {"index": 0, "finish_reason": None}
            if chat:
                choice["delta"] = {"content": piece}
            else:
                choice["text"] = piece
            yield b"data: " + json.dumps({"id": "cmpl-fake", "model": model, "choices": [choice]}).encode() + b"\n\n"
            if broken:
                raise RuntimeError("fake engine died mid-stream")
            await asyncio.sleep(0)
        last: dict[str, Any] = {"index": 0, "finish_reason": finish}
        last["delta" if chat else "text"] = {} if chat else ""
        yield b"data: " + json.dumps({"id": "cmpl-fake", "model": model, "choices": [last]}).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"


def running_fake(**kwargs: Any) -> Iterator[FakeVLLM]:
    """A pytest fixture body: `yield from running_fake(latency=0.01)`."""
    with FakeVLLM(**kwargs) as fake:
        yield fake
