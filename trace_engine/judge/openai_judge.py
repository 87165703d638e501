"""A judge on any OpenAI-compatible chat-completions endpoint (OpenAI, Azure, vLLM, SGLang).

Temperature 0 and a strict JSON-schema `response_format`; if the server rejects `response_format`, the judge falls
back to plain prompting plus the lenient parser and remembers that for the rest of the run. The SDK's own retries
are off: transient failures (429, 5xx, timeouts, connection errors) are retried here with capped exponential
backoff and full jitter, honouring Retry-After. No failure raises out of `judge`/`rewrite`: it becomes
`JudgeOutcome(error=..., error_kind="transient" | "permanent")`. Concurrency is the caller's business (any number
of `judge` calls may run at once on one instance).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import openai
from openai import AsyncOpenAI

from trace_engine.data.pairs import Prompt, sha256_text
from trace_engine.judge.base import ErrorKind, JudgeOutcome, Usage
from trace_engine.judge.parse import VerdictParseError, parse_verdict
from trace_engine.judge.prompt import (
    RESPONSE_FORMAT,
    REWRITE_TEMPLATE_VERSION,
    TEMPLATE_VERSION,
    judge_messages,
    rewrite_messages,
)
from trace_engine.judge.retry import Backoff, is_transient_status, redact, retry_after_seconds
from trace_engine.policy import Policy

DEFAULT_BASE_URL = "https://api.openai.com/v1"
_REASK = (
    "Your previous answer was not a valid verdict. Reply with only the JSON object "
    '{"verdict": "compliant" or "violating", "clauses": [...], "rationale": "..."}.'
)


def resolve_base_url(base_url: str | None) -> str:
    """The URL the SDK will use: explicit, else $OPENAI_BASE_URL, else OpenAI's; without a trailing slash."""
    return (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")


def make_judge_id(model: str, base_url: str | None) -> str:
    """'openai:<model>@<8 hex of the base URL>': one model name on two servers never shares cache entries."""
    return f"openai:{model}@{sha256_text('base_url', resolve_base_url(base_url))[:8]}"


def resolve_api_key(api_key: str | None, api_key_env: str | None, base_url: str) -> str:
    """Explicit key, else the named env var; a self-hosted server without auth gets a placeholder."""
    key = api_key or (os.environ.get(api_key_env) if api_key_env else None)
    if key:
        return key
    if base_url == DEFAULT_BASE_URL:
        raise ValueError(f"no API key for {base_url}: set ${api_key_env or 'OPENAI_API_KEY'} or pass api_key")
    return "no-key"


@dataclass
class _Failure(Exception):
    message: str
    kind: ErrorKind


@dataclass
class _Answer:
    content: str
    finish_reason: str | None


def _mentions_response_format(err: openai.APIStatusError) -> bool:
    text = f"{err.message} {err.body}".lower()
    return any(w in text for w in ("response_format", "json_schema", "structured output", "guided_json"))


class OpenAIJudge:
    """`Judge` over an OpenAI-compatible endpoint; see the module docstring for the failure contract."""

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout: float = 60.0,
        max_retries: int = 6,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        max_retry_after: float = 120.0,
        max_parse_attempts: int = 2,
        max_tokens: int = 512,
        rewrite_max_tokens: int = 1024,
        structured_output: bool = True,
        rewrite_shows_violating: bool = False,
        extra_body: dict[str, Any] | None = None,
        jitter_seed: int | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        client_pools: int = 4,
    ) -> None:
        if max_parse_attempts < 1:
            raise ValueError("max_parse_attempts must be >= 1")
        self.model = model
        self.base_url = resolve_base_url(base_url)
        self.judge_id = make_judge_id(model, base_url)
        self._api_key = resolve_api_key(api_key, api_key_env, self.base_url)
        self.backoff = Backoff(max_retries, backoff_base, backoff_max, max_retry_after)
        self.max_parse_attempts = max_parse_attempts
        self.max_tokens = max_tokens
        self.rewrite_max_tokens = rewrite_max_tokens
        self.rewrite_shows_violating = rewrite_shows_violating
        # cache-key parts: which prompt templates produce this judge's answers
        self.template_version = TEMPLATE_VERSION
        self.rewrite_template_version = REWRITE_TEMPLATE_VERSION + ("+violating" if rewrite_shows_violating else "")
        self.extra_body = extra_body
        self.structured_output = structured_output  # flips to False for the run if the server rejects it
        self.usage = Usage()  # running total over every call of this instance
        self._rng = random.Random(jitter_seed)  # backoff jitter only
        self._sleep = sleep
        # Several small connection pools instead of one big one: the HTTP client's pool bookkeeping costs
        # O(connections x waiting requests) per request, which made one pool the CPU bottleneck at 64+ in flight.
        if client_pools < 1:
            raise ValueError("client_pools must be >= 1")
        self._clients = [
            AsyncOpenAI(api_key=self._api_key, base_url=self.base_url, timeout=timeout, max_retries=0)
            for _ in range(client_pools)
        ]
        self._next_client = itertools.cycle(self._clients)

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIJudge(model={self.model!r}, base_url={self.base_url!r})"

    async def judge(self, policy: Policy, prompt: Prompt, response: str) -> JudgeOutcome:
        usage = Usage()
        try:
            return await self._judge(policy, prompt, response, usage)
        finally:
            self.usage.add(usage)

    async def rewrite(self, policy: Policy, prompt: Prompt, violating_response: str) -> JudgeOutcome:
        usage = Usage()
        try:
            return await self._rewrite(policy, prompt, violating_response, usage)
        finally:
            self.usage.add(usage)

    async def aclose(self) -> None:
        for client in self._clients:
            await client.close()

    async def _judge(self, policy: Policy, prompt: Prompt, response: str, usage: Usage) -> JudgeOutcome:
        messages = judge_messages(policy, prompt, response)
        known = [c.id for c in policy.clauses]
        warnings: list[str] = []
        answer: _Answer | None = None
        problem = ""
        for attempt in range(self.max_parse_attempts):
            if attempt:
                usage.retries += 1
                messages = [*messages, {"role": "assistant", "content": answer.content if answer else ""},
                            {"role": "user", "content": _REASK}]
            try:
                answer = await self._complete(messages, usage, self.max_tokens, structured=True, warnings=warnings)
            except _Failure as f:
                return JudgeOutcome(error=f.message, error_kind=f.kind, usage=usage, warnings=tuple(warnings))
            try:
                parsed = parse_verdict(answer.content, known)
            except VerdictParseError as e:
                problem = str(e)
                continue
            return JudgeOutcome(verdict=parsed.verdict, usage=usage, raw=answer.content,
                                warnings=tuple(warnings) + parsed.warnings)
        return JudgeOutcome(
            error=f"unparseable judge answer after {self.max_parse_attempts} attempt(s): {problem}",
            error_kind="permanent", usage=usage, raw=answer.content if answer else None, warnings=tuple(warnings),
        )

    async def _rewrite(self, policy: Policy, prompt: Prompt, violating: str, usage: Usage) -> JudgeOutcome:
        shown = violating if self.rewrite_shows_violating else None
        messages = rewrite_messages(policy, prompt, shown)
        warnings: list[str] = []
        for attempt in range(self.max_parse_attempts):
            if attempt:
                usage.retries += 1
            try:
                answer = await self._complete(messages, usage, self.rewrite_max_tokens, structured=False,
                                              warnings=warnings)
            except _Failure as f:
                return JudgeOutcome(error=f.message, error_kind=f.kind, usage=usage, warnings=tuple(warnings))
            text = answer.content.strip()
            if text:
                if answer.finish_reason == "length":
                    warnings.append("rewrite truncated at the token limit")
                return JudgeOutcome(text=text, usage=usage, raw=answer.content, warnings=tuple(warnings))
        return JudgeOutcome(error=f"empty rewrite after {self.max_parse_attempts} attempt(s)",
                            error_kind="permanent", usage=usage, warnings=tuple(warnings))

    def _request(self, messages: list[dict[str, str]], max_tokens: int, structured: bool) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": 0,
                                  "max_tokens": max_tokens}
        if structured:
            kwargs["response_format"] = RESPONSE_FORMAT
        if self.extra_body:
            kwargs.update(self.extra_body)
        return kwargs

    async def _complete(
        self, messages: list[dict[str, str]], usage: Usage, max_tokens: int, *, structured: bool,
        warnings: list[str],
    ) -> _Answer:
        """One answer, retrying transient failures; raises `_Failure` when it gives up."""
        attempt = 0
        while True:
            use_schema = structured and self.structured_output
            usage.calls += 1
            retry_after: float | None = None
            try:
                # `post` with a plain-JSON body and the raw text back skips the SDK re-walking every message and
                # the schema, and building response models: most of the client's CPU per call at 64 in flight.
                text = await next(self._next_client).post(
                    "/chat/completions", body=self._request(messages, max_tokens, use_schema), cast_to=str
                )
                content, finish_reason, prompt_tokens, completion_tokens = _read_completion(text)
            except openai.APIStatusError as e:
                if use_schema and e.status_code in (400, 422) and _mentions_response_format(e):
                    self.structured_output = False
                    warnings.append("server rejected response_format; fell back to plain prompting")
                    usage.retries += 1
                    continue
                detail = f"HTTP {e.status_code}: {redact(str(e.message), self._api_key)}"
                if not is_transient_status(e.status_code):
                    raise _Failure(detail, "permanent") from None
                retry_after = retry_after_seconds(e.response.headers)
            except openai.APITimeoutError:
                detail = "request timed out"
            except openai.APIConnectionError as e:
                detail = f"connection error: {redact(str(e), self._api_key)}"
            except (ValueError, openai.APIResponseValidationError) as e:  # a cut-off or non-JSON body
                detail = f"unreadable response body: {type(e).__name__}"
            except Exception as e:  # noqa: BLE001 - an item error, never an exception that kills the run
                raise _Failure(f"{type(e).__name__}: {redact(str(e), self._api_key)}", "permanent") from None
            else:
                usage.prompt_tokens += prompt_tokens
                usage.completion_tokens += completion_tokens
                if content is None:
                    raise _Failure("answer without choices", "permanent")
                return _Answer(content, finish_reason)
            attempt += 1
            if attempt > self.backoff.max_retries:
                raise _Failure(f"gave up after {attempt} attempts; last: {detail}", "transient")
            usage.retries += 1
            await self._sleep(self.backoff.delay(attempt, retry_after, self._rng))


def _read_completion(text: str) -> tuple[str | None, str | None, int, int]:
    """(content, finish_reason, prompt_tokens, completion_tokens) of a chat-completions body; content is None
    when there is no choice. Raises ValueError on a body that is not a JSON object."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("chat completion body is not a JSON object")
    usage = data.get("usage") or {}
    choices = data.get("choices") or []
    if not choices:
        return None, None, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    choice = choices[0] or {}
    message = choice.get("message") or {}
    return (
        message.get("content") or "",
        choice.get("finish_reason"),
        int(usage.get("prompt_tokens") or 0),
        int(usage.get("completion_tokens") or 0),
    )
