"""The `local` serving backend: transformers + peft behind the same HTTP endpoints as a vLLM OpenAI server.

    python -m trace_engine.serving.local_server --model PATH [--revision SHA] --host 127.0.0.1 --port 8001 \
        --max-loras 8 [--max-batch-size 16 --max-wait-ms 5 --num-threads 1]

Endpoints (vLLM-compatible): POST /v1/load_lora_adapter {lora_name, lora_path}, POST /v1/unload_lora_adapter
{lora_name}, GET /v1/models, POST /v1/chat/completions, POST /v1/completions (both with SSE streaming; completions
also take token-id prompts, and both `prompt_logprobs: N`, vLLM's extension for teacher-forced scoring), POST
/tokenize ({messages} rendered as chat generation would, or {prompt}) and POST /detokenize {tokens};
plus GET /health and GET /stats (micro-batcher counters). With --port 0 the server picks a free port and prints
one JSON line `{"base_url": ...}` on stdout once it accepts connections.

Concurrent requests for the same adapter (and the same temperature/top_p) that arrive within --max-wait-ms are
generated in one `generate` call; rows keep their own max_tokens and stop sequences. A request that sends no
max_tokens gets as many tokens as fit in the context after its prompt, as vLLM does (`--default-max-tokens` caps
that).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket
import sys
import time
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from trace_engine.serving.batching import MicroBatcher
from trace_engine.serving.engine import AdapterEngine, RowJob
from trace_engine.serving.protocol import (
    SSE_DONE,
    Choice,
    GenerationRequest,
    RequestKind,
    ServingError,
    bad_request,
    chunk_body,
    completion_body,
    error_body,
    model_not_found,
    new_response_id,
    parse_request,
    parse_tokenize_request,
    sse,
    usage_chunk,
)

log = logging.getLogger("realign.serving")
_END = object()


class _Solo:
    """A batch key equal only to itself, so its request runs alone (still naming the adapter)."""

    def __init__(self, adapter: str | None) -> None:
        self.adapter = adapter


class LocalServer:
    """Request handling on top of an engine and a micro-batcher (separate from the web app for testing)."""

    def __init__(self, engine: AdapterEngine, *, max_batch_size: int = 16, max_wait_s: float = 0.005,
                 default_max_tokens: int | None = None) -> None:
        self.engine = engine
        self.batcher: MicroBatcher[RowJob] = MicroBatcher(self._run_batch, max_batch_size=max_batch_size,
                                                          max_wait_s=max_wait_s)
        self.default_max_tokens = default_max_tokens
        self.created = int(time.time())

    def _run_batch(self, key: Hashable, rows: list[RowJob]) -> None:
        adapter = key.adapter if isinstance(key, _Solo) else key[0]  # type: ignore[index]
        self.engine.generate_batch(adapter, rows)

    # ------------------------------------------------------------ adapters and models

    async def load_adapter(self, body: Any) -> str:
        name, path = _field(body, "lora_name"), _field(body, "lora_path")
        await self.batcher.run_exclusive(self.engine.load_adapter, name, path)
        log.info("loaded adapter %s from %s", name, path)
        return f"Success: LoRA adapter '{name}' added successfully."

    async def unload_adapter(self, body: Any) -> str:
        name = _field(body, "lora_name")
        await self.batcher.run_exclusive(self.engine.unload_adapter, name)
        log.info("unloaded adapter %s", name)
        return f"Success: LoRA adapter '{name}' removed successfully."

    def models(self) -> dict[str, Any]:
        base = self.engine.model_name
        cards = [self._card(base, root=base, parent=None)]
        adapters = list(self.engine.adapters.values())  # one atomic copy: loads happen on the generation thread
        cards += [self._card(a.name, root=a.path, parent=base) for a in adapters]
        return {"object": "list", "data": cards}

    def _card(self, model_id: str, *, root: str, parent: str | None) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": self.created, "owned_by": "realign", "root": root,
                "parent": parent, "max_model_len": self.engine.max_model_len}

    # ------------------------------------------------------------ generation

    def parse(self, body: Any, kind: RequestKind) -> tuple[GenerationRequest, str | None, list[RowJob]]:
        request = parse_request(body, kind, max_tokens_limit=self.engine.max_model_len)
        if not self.engine.has_model(request.model):
            raise model_not_found(request.model)
        adapter = None if request.model == self.engine.model_name else request.model
        rows = self.engine.fit_rows(request, default_max_tokens=self.default_max_tokens)
        return request, adapter, rows

    def tokenize(self, body: Any) -> dict[str, Any]:
        """vLLM's `POST /tokenize`: chat messages become exactly the ids a chat request generates from."""
        request = parse_tokenize_request(body)
        if request.model is not None and not self.engine.has_model(request.model):
            raise model_not_found(request.model)
        if request.messages is not None:
            ids = self.engine.tokenize_chat(request.messages)
        else:
            ids = self.engine.tokenize_text(request.prompt or "", add_special_tokens=request.add_special_tokens)
        out: dict[str, Any] = {"count": len(ids), "max_model_len": self.engine.max_model_len, "tokens": ids}
        if isinstance(body, dict) and body.get("return_token_strs"):
            out["token_strs"] = self.engine.tokenizer.convert_ids_to_tokens(ids)
        return out

    def detokenize(self, body: Any) -> dict[str, Any]:
        tokens = body.get("tokens") if isinstance(body, dict) else None
        if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
            raise bad_request("`tokens` must be a list of token ids", "tokens")
        model = body.get("model")
        if model is not None and not self.engine.has_model(model):
            raise model_not_found(str(model))
        return {"prompt": self.engine.detokenize(tokens)}

    def _key(self, adapter: str | None, request: GenerationRequest) -> Hashable:
        if request.params.seed is not None and not request.params.greedy:
            return _Solo(adapter)  # a seeded sample runs alone: its random draws must not depend on batch-mates
        return (adapter, *request.params.batch_key())

    async def _generate(self, adapter: str | None, request: GenerationRequest, rows: list[RowJob]) -> None:
        key = self._key(adapter, request)
        await asyncio.gather(*(self.batcher.submit(key, row) for row in rows))

    async def complete(self, body: Any, kind: RequestKind) -> dict[str, Any]:
        request, adapter, rows = self.parse(body, kind)
        await self._generate(adapter, request, rows)
        return completion_body(kind, new_response_id(kind), request.model, _choices(rows))

    def stream(self, body: Any, kind: RequestKind) -> AsyncIterator[bytes]:
        """Validate now (errors become a normal error response), then stream SSE chunks as tokens are decided."""
        request, adapter, rows = self.parse(body, kind)
        return self._stream(request, adapter, rows, kind)

    async def _stream(self, request: GenerationRequest, adapter: str | None, rows: list[RowJob],
                      kind: RequestKind) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        for index, row in enumerate(rows):
            row.on_delta = lambda text, i=index: loop.call_soon_threadsafe(queue.put_nowait, (i, text))
        response_id, model = new_response_id(kind), request.model
        task = asyncio.ensure_future(self._generate(adapter, request, rows))
        task.add_done_callback(lambda _: queue.put_nowait(_END))
        try:
            if kind == "chat":
                for index in range(len(rows)):
                    yield sse(chunk_body(kind, response_id, model, index, role=True))
            while (item := await queue.get()) is not _END:
                index, text = item
                yield sse(chunk_body(kind, response_id, model, index, text=text))
            if task.exception() is not None:
                yield sse(_error_of(task.exception()))
            else:
                for index, row in enumerate(rows):
                    yield sse(chunk_body(kind, response_id, model, index, finish_reason=row.finish_reason))
                if request.include_usage:
                    yield sse(usage_chunk(kind, response_id, model, _choices(rows)))
            yield SSE_DONE
        finally:
            for row in rows:  # the client may have gone away: stop generating for it
                row.cancel()
            if not task.done():
                task.cancel()


def _choices(rows: list[RowJob]) -> list[Choice]:
    return [Choice(r.text, r.finish_reason or "length", r.completion_tokens, len(r.prompt_ids), r.prompt_logprobs)
            for r in rows]


def _field(body: Any, name: str) -> str:
    if not isinstance(body, dict) or not isinstance(body.get(name), str) or not body[name]:
        raise bad_request(f"`{name}` is required (a non-empty string)", name, "missing_required_parameter")
    return body[name]


def _error_of(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, ServingError):
        return exc.body()
    return error_body(f"generation failed: {type(exc).__name__}: {exc}", type="InternalServerError",
                      code="generation_failed")


async def _json_body(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except ValueError as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}") from exc


def create_app(server: LocalServer) -> FastAPI:
    """The HTTP surface of `server`; errors are OpenAI-style documents."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await server.batcher.aclose()

    app = FastAPI(title="realign local serving backend", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(ServingError)
    async def serving_error(_: Request, exc: ServingError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in the local serving backend")
        return JSONResponse(_error_of(exc), status_code=500)

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        return {"batcher": server.batcher.stats.to_dict(), "adapters": sorted(server.engine.adapters)}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return server.models()

    @app.post("/v1/load_lora_adapter")
    async def load(request: Request) -> PlainTextResponse:
        return PlainTextResponse(await server.load_adapter(await _json_body(request)))

    @app.post("/v1/unload_lora_adapter")
    async def unload(request: Request) -> PlainTextResponse:
        return PlainTextResponse(await server.unload_adapter(await _json_body(request)))

    async def generate(request: Request, kind: RequestKind) -> Response:
        body = await _json_body(request)
        if isinstance(body, dict) and body.get("stream") is True:
            return StreamingResponse(server.stream(body, kind), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return JSONResponse(await server.complete(body, kind))

    @app.post("/tokenize")
    async def tokenize(request: Request) -> dict[str, Any]:
        return server.tokenize(await _json_body(request))

    @app.post("/detokenize")
    async def detokenize(request: Request) -> dict[str, Any]:
        return server.detokenize(await _json_body(request))

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await generate(request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await generate(request, "completion")

    return app


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trace_engine.serving.local_server", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="local model directory or Hub id (with --revision)")
    p.add_argument("--revision", default=None, help="40-character commit for a Hub id")
    p.add_argument("--served-model-name", default=None, help="the base model's name in requests (default --model)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001, help="0 picks a free port (printed on stdout)")
    p.add_argument("--max-loras", type=int, default=8, help="adapters loaded at once")
    p.add_argument("--max-lora-rank", type=int, default=64)
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--default-max-tokens", type=int, default=None,
                   help="completion tokens for a request that sends no max_tokens (default: as many as fit in the "
                        "context after the prompt, as vLLM does)")
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a request waits for batch-mates")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None, choices=["bf16", "fp16", "fp32"])
    p.add_argument("--num-threads", type=int, default=None,
                   help="torch intra-op CPU threads (default: torch's choice). On a shared or small CPU box use 1: "
                        "idle-spinning threads that compete with other processes made generation ~8x slower "
                        "(docs/benchmarks.md)")
    return p


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.num_threads is not None:
        import torch

        if args.num_threads < 1:
            raise SystemExit("--num-threads must be >= 1")
        torch.set_num_threads(args.num_threads)
    engine = AdapterEngine.from_pretrained(
        args.model, revision=args.revision, served_model_name=args.served_model_name, device=args.device,
        dtype=args.dtype, max_loras=args.max_loras, max_lora_rank=args.max_lora_rank,
        max_model_len=args.max_model_len)
    if args.default_max_tokens is not None and args.default_max_tokens < 1:
        raise SystemExit("--default-max-tokens must be >= 1")
    server = LocalServer(engine, max_batch_size=args.max_batch_size, max_wait_s=args.max_wait_ms / 1000,
                         default_max_tokens=args.default_max_tokens)
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(create_app(server), log_level="warning", access_log=False)
    uv = uvicorn.Server(config)

    async def serve() -> None:
        task = asyncio.create_task(uv.serve(sockets=[sock]))
        while not uv.started and not task.done():
            await asyncio.sleep(0.01)
        if uv.started:
            print(json.dumps({"base_url": f"http://{host}:{port}", "model": engine.model_name}), flush=True)
        await task

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
