"""The slice of the OpenAI / vLLM HTTP protocol that the serving layer speaks, with no torch and no web framework.

Request bodies are parsed by hand (not pydantic) so every rejection leaves as an OpenAI-style error
`{"error": {"message", "type", "param", "code"}}` with a message that says what to fix.

Two vLLM extensions are spoken, for teacher-forced scoring (the deploy gate, api/gateway/deploy_gate.py): a
completions `prompt` may be token ids (one list of ints, or a list of them), and `prompt_logprobs: N` returns, per
prompt token, its log-prob given the tokens before it (plus the top N), in vLLM's shape: `choices[i].prompt_logprobs`
(completions; top-level `prompt_logprobs` in chat) = `[None, {"<token id>": {"logprob", "rank", "decoded_token"}},
...]`, the first token having no context.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from trace_engine.data.pairs import Prompt

RequestKind = Literal["chat", "completion"]
MAX_STOP_SEQUENCES = 4
MAX_PROMPT_LOGPROBS = 20  # vLLM's default --max-logprobs
CHAT_ROLES = frozenset({"system", "user", "assistant"})
SSE_DONE = b"data: [DONE]\n\n"


class ServingError(Exception):
    """Answer with an OpenAI-style error document and this HTTP status."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, code=self.code, param=self.param)


def error_body(message: str, *, type: str = "invalid_request_error", code: str | None = None,
               param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str | None = "invalid_value") -> ServingError:
    return ServingError(400, message, param=param, code=code)


def model_not_found(model: str) -> ServingError:
    return ServingError(404, f"The model `{model}` does not exist.", type="NotFoundError", code="model_not_found",
                        param="model")


@dataclass(frozen=True)
class SamplingParams:
    """Per-request generation settings. temperature 0 means greedy; a seed makes sampling reproducible.
    `max_tokens` None: the client did not send one, so the engine generates as many as fit in the context after
    the prompt (vLLM's default), see `AdapterEngine.fit_rows`."""

    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    prompt_logprobs: int | None = None  # vLLM extension: per prompt token, its log-prob and the top N

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def batch_key(self) -> tuple[Any, ...]:
        """Requests batch together only when one `generate` call can honour all of them (max_tokens and stop are
        applied per row, so they may differ)."""
        if self.greedy:
            return ("greedy",)
        return ("sample", self.temperature, self.top_p, self.seed)


@dataclass(frozen=True)
class GenerationRequest:
    """A parsed chat or completions request: one or more prompts generated with the same settings."""

    kind: RequestKind
    model: str
    prompts: tuple[Prompt, ...]
    params: SamplingParams
    stream: bool = False
    include_usage: bool = False
    token_prompts: tuple[tuple[int, ...], ...] = ()  # completions prompts sent as token ids (then `prompts` is ())


def parse_request(body: Any, kind: RequestKind, *, max_tokens_limit: int) -> GenerationRequest:
    """Validate a /v1/chat/completions or /v1/completions body; raises ServingError(400) naming the bad field.
    `max_tokens` (or `max_completion_tokens`) left out stays None: what fits is known only once the prompt is
    tokenized."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("`model` is required: the name of a loaded adapter or of the base model", "model",
                          "missing_required_parameter")
    token_prompts: tuple[tuple[int, ...], ...] = ()
    if kind == "chat":
        prompts: tuple[Prompt, ...] = (_parse_messages(body.get("messages")),)
    else:
        prompts, token_prompts = _parse_completion_prompt(body.get("prompt"))
    n = body.get("n", 1)
    if n != 1:
        raise bad_request("only n=1 is supported; send several requests (they are batched together)", "n")
    stream = _optional_bool(body, "stream", False)
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise bad_request("`stream_options` must be an object", "stream_options")
    params = SamplingParams(
        max_tokens=_max_tokens(body, max_tokens_limit),
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, open_low=True),
        stop=_stop(body.get("stop")),
        seed=_seed(body.get("seed")),
        prompt_logprobs=_prompt_logprobs(body.get("prompt_logprobs")),
    )
    if stream and params.prompt_logprobs is not None:
        raise bad_request("`prompt_logprobs` is not supported with `stream`: send it without streaming",
                          "prompt_logprobs")
    return GenerationRequest(kind, model, prompts, params, stream, bool(stream_options.get("include_usage", False)),
                             token_prompts)


@dataclass(frozen=True)
class TokenizeRequest:
    """vLLM's `POST /tokenize`: chat `messages` (rendered by the chat template, with the generation prompt) or a
    text `prompt`."""

    model: str | None
    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    add_special_tokens: bool = True


def parse_tokenize_request(body: Any) -> TokenizeRequest:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise bad_request("`model` must be a model name", "model")
    if "messages" in body:
        if not _optional_bool(body, "add_generation_prompt", True) or _optional_bool(body, "continue_final_message",
                                                                                     False):
            raise bad_request("this server renders chat prompts with the generation prompt only "
                              "(add_generation_prompt=true, continue_final_message=false)", "add_generation_prompt")
        return TokenizeRequest(model, messages=_parse_messages(body["messages"]),
                               add_special_tokens=_optional_bool(body, "add_special_tokens", False))
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise bad_request("`prompt` (a string) or `messages` is required", "prompt", "missing_required_parameter")
    return TokenizeRequest(model, prompt=prompt, add_special_tokens=_optional_bool(body, "add_special_tokens", True))


def _parse_messages(messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise bad_request("`messages` must be a non-empty list of {role, content} objects", "messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in CHAT_ROLES:
            raise bad_request(f"messages[{i}] needs a role among {sorted(CHAT_ROLES)}", "messages")
        out.append({"role": m["role"], "content": _message_text(m.get("content"), i)})
    return out


def _message_text(content: Any, index: int) -> str:
    """A string, or a list of {"type": "text", "text": ...} parts joined (other part types are refused)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad_request(f"messages[{index}].content: only text parts are supported", "messages")
            texts.append(part["text"])
        return "".join(texts)
    raise bad_request(f"messages[{index}].content must be a string or a list of text parts", "messages")


def _parse_completion_prompt(prompt: Any) -> tuple[tuple[str, ...], tuple[tuple[int, ...], ...]]:
    """(text prompts, token-id prompts): one of them is empty."""
    if isinstance(prompt, str):
        return (prompt,), ()
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return tuple(prompt), ()
    if _token_ids(prompt):
        return (), (tuple(prompt),)
    if isinstance(prompt, list) and prompt and all(_token_ids(p) for p in prompt):
        return (), tuple(tuple(p) for p in prompt)
    raise bad_request("`prompt` must be a string, a non-empty list of strings, a non-empty list of token ids, or a "
                      "list of such lists", "prompt")


def _token_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value)


def _prompt_logprobs(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_PROMPT_LOGPROBS:
        raise bad_request(f"`prompt_logprobs` must be an integer in [0, {MAX_PROMPT_LOGPROBS}] (the top N per prompt "
                          f"token besides the token itself), got {value!r}", "prompt_logprobs")
    return value


def _optional_bool(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad_request(f"`{key}` must be true or false", key)
    return value


def _max_tokens(body: dict[str, Any], limit: int) -> int | None:
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        got = f", got {value}" if isinstance(value, int) and not isinstance(value, bool) else ""
        raise bad_request(f"`{key}` must be a positive integer{got}", key)
    if value > limit:
        raise bad_request(f"`{key}` is {value}, but this model's context is {limit} tokens in all (prompt "
                          f"included); lower `{key}` or leave it out to get as many tokens as fit", key)
    return value


def _number(body: dict[str, Any], key: str, default: float, low: float, high: float, open_low: bool = False) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise bad_request(f"`{key}` must be a number", key)
    if value > high or value < low or (open_low and value == low):
        interval = f"({low}, {high}]" if open_low else f"[{low}, {high}]"
        raise bad_request(f"`{key}` must be in {interval}, got {value}", key)
    return float(value)


def _stop(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise bad_request("`stop` must be a non-empty string or a list of non-empty strings", "stop")
    if len(stop) > MAX_STOP_SEQUENCES:
        raise bad_request(f"at most {MAX_STOP_SEQUENCES} stop sequences", "stop")
    return tuple(stop)


def _seed(seed: Any) -> int | None:
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise bad_request("`seed` must be an integer", "seed")
    return seed


# ---------------------------------------------------------------- responses


PromptLogprobs = list[dict[str, dict[str, Any]] | None]
"""Per prompt token: None for the first, else {"<token id>": {"logprob", "rank", "decoded_token"}} (the token
itself and the top N), as vLLM returns them."""


@dataclass(frozen=True)
class Choice:
    text: str
    finish_reason: str  # "stop" (EOS or a stop sequence) or "length"
    completion_tokens: int
    prompt_tokens: int
    prompt_logprobs: PromptLogprobs | None = None


def new_response_id(kind: RequestKind) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex


def usage(choices: list[Choice]) -> dict[str, int]:
    prompt = sum(c.prompt_tokens for c in choices)
    completion = sum(c.completion_tokens for c in choices)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion_body(kind: RequestKind, response_id: str, model: str, choices: list[Choice]) -> dict[str, Any]:
    """The non-streaming response (`chat.completion` or `text_completion`)."""
    rows: list[dict[str, Any]] = []
    for i, c in enumerate(choices):
        if kind == "chat":
            rows.append({"index": i, "message": {"role": "assistant", "content": c.text},
                         "finish_reason": c.finish_reason, "logprobs": None})
        else:
            row = {"index": i, "text": c.text, "finish_reason": c.finish_reason, "logprobs": None}
            if c.prompt_logprobs is not None:
                row["prompt_logprobs"] = c.prompt_logprobs
            rows.append(row)
    body = {
        "id": response_id,
        "object": "chat.completion" if kind == "chat" else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": rows,
        "usage": usage(choices),
    }
    if kind == "chat" and choices and choices[0].prompt_logprobs is not None:
        body["prompt_logprobs"] = choices[0].prompt_logprobs  # vLLM puts chat's at the top level
    return body


def chunk_body(kind: RequestKind, response_id: str, model: str, index: int, *, text: str | None = None,
               role: bool = False, finish_reason: str | None = None) -> dict[str, Any]:
    """One streaming chunk: a text delta, the opening role delta (chat), or the closing finish_reason."""
    if kind == "chat":
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
        if text is not None:
            delta["content"] = text
        choice: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": index, "text": text or "", "finish_reason": finish_reason, "logprobs": None}
        obj = "text_completion"
    return {"id": response_id, "object": obj, "created": int(time.time()), "model": model, "choices": [choice]}


def usage_chunk(kind: RequestKind, response_id: str, model: str, choices: list[Choice]) -> dict[str, Any]:
    """The last chunk when `stream_options.include_usage` is set: no choices, only usage."""
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
    return {"id": response_id, "object": obj, "created": int(time.time()), "model": model, "choices": [],
            "usage": usage(choices)}


def sse(payload: dict[str, Any]) -> bytes:
    """One server-sent event carrying a JSON payload."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def iter_sse_data(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Split complete events off `buffer`; returns their `data:` payloads and the incomplete rest."""
    events: list[bytes] = []
    normalized = buffer.replace(b"\r\n", b"\n")
    *complete, rest = normalized.split(b"\n\n")
    for event in complete:
        data = [line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
        if data:
            events.append(b"\n".join(data))
    return events, rest
