"""OpenAI Batch API mode: judge many items at half price with a 24 h completion window.

Flow: build chat-completions request lines (custom_id = the caller's cache key) -> upload the JSONL (purpose
"batch") -> create a batch on /v1/chat/completions -> poll with growing intervals -> download the output and error
files -> parse every line with the same parser as the online judge.

Resumable: every step is recorded in a caller-given JSON state file (written atomically) before the next step, so a
restarted run with the same requests re-uses the uploaded file and polls the existing batch instead of submitting
again. The state file stores ids and statuses only (no dataset text, no key). A state file written for a different
set of requests is refused. Large request sets are split into several batches (OpenAI caps a batch at 50,000 lines
and 200 MB). The one unavoidable gap: a crash between "create batch" returning and the state being written leaves
a batch the state does not know about (it is billed but ignored).

Management calls (upload, create, poll, download) use the SDK's retries; an error that survives them propagates
with the state saved, so the next run resumes. Per-item failures become `JudgeOutcome(error=...)`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from openai import AsyncOpenAI

from trace_engine.data.io import write_json
from trace_engine.data.pairs import Prompt, sha256_text
from trace_engine.judge.base import ErrorKind, JudgeOutcome, Usage
from trace_engine.judge.openai_judge import OpenAIJudge, resolve_api_key, resolve_base_url
from trace_engine.judge.parse import VerdictParseError, parse_verdict
from trace_engine.judge.prompt import RESPONSE_FORMAT, judge_messages, rewrite_messages
from trace_engine.judge.retry import is_transient_status, redact
from trace_engine.policy import Policy

STATE_VERSION = 1
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
_TRANSIENT_ITEM_CODES = frozenset({"server_error", "rate_limit_exceeded", "timeout", "batch_expired",
                                   "batch_cancelled", "internal_error"})


class BatchStateError(RuntimeError):
    """The state file cannot be used for these requests."""


@dataclass(frozen=True)
class BatchRequest:
    """One chat-completions request line; `kind` says how to read its answer."""

    custom_id: str
    body: dict[str, Any]
    kind: Literal["judge", "rewrite"] = "judge"
    known_clauses: tuple[str, ...] | None = None  # for flagging unknown clause ids in verdicts

    @cached_property
    def line(self) -> str:
        """The JSONL line (computed once)."""
        return json.dumps({"custom_id": self.custom_id, "method": "POST", "url": "/v1/chat/completions",
                           "body": self.body}, ensure_ascii=False, sort_keys=True)


@dataclass(frozen=True)
class BatchClientConfig:
    base_url: str | None = None
    api_key: str | None = None
    api_key_env: str | None = "OPENAI_API_KEY"
    timeout: float = 120.0
    max_retries: int = 5  # SDK retries for the management calls
    max_requests_per_batch: int = 50_000
    max_bytes_per_batch: int = 180 * 1024 * 1024


def judge_request(
    model: str, custom_id: str, policy: Policy, prompt: Prompt, response: str, *, structured: bool = True,
    max_tokens: int = 512,
) -> BatchRequest:
    """The batch line for judging one response (same messages and settings as `OpenAIJudge.judge`)."""
    body: dict[str, Any] = {"model": model, "messages": judge_messages(policy, prompt, response), "temperature": 0,
                            "max_tokens": max_tokens}
    if structured:
        body["response_format"] = RESPONSE_FORMAT
    return BatchRequest(custom_id, body, "judge", tuple(c.id for c in policy.clauses))


def rewrite_request(
    model: str, custom_id: str, policy: Policy, prompt: Prompt, violating_response: str | None = None, *,
    max_tokens: int = 1024,
) -> BatchRequest:
    """The batch line for an oracle rewrite (the violating response is shown only if given)."""
    body = {"model": model, "messages": rewrite_messages(policy, prompt, violating_response), "temperature": 0,
            "max_tokens": max_tokens}
    return BatchRequest(custom_id, body, "rewrite")


def build_judge_requests(
    model: str, items: Iterable[tuple[str, Policy, Prompt, str]], *, structured: bool = True, max_tokens: int = 512,
) -> list[BatchRequest]:
    """Judging requests for (custom_id, policy, prompt, response) items."""
    return [judge_request(model, cid, pol, prompt, resp, structured=structured, max_tokens=max_tokens)
            for cid, pol, prompt, resp in items]


async def run_batch(
    cfg: BatchClientConfig,
    requests: list[BatchRequest],
    state_path: str | Path,
    *,
    poll_interval: float = 30.0,
    max_poll_interval: float = 600.0,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    on_status: Callable[[list[dict[str, Any]]], None] | None = None,
) -> dict[str, JudgeOutcome]:
    """Submit (or resume) the batch(es) for `requests`, wait for them, return one outcome per custom_id."""
    _check_unique(requests)
    if not requests:
        return {}
    base_url = resolve_base_url(cfg.base_url)
    api_key = resolve_api_key(cfg.api_key, cfg.api_key_env, base_url)
    client = AsyncOpenAI(api_key=api_key, base_url=base_url, timeout=cfg.timeout, max_retries=cfg.max_retries)
    try:
        chunks = _chunk(requests, cfg.max_requests_per_batch, cfg.max_bytes_per_batch)
        state = _load_or_new_state(Path(state_path), requests, chunks, base_url)
        for entry, chunk in zip(state["chunks"], chunks, strict=True):
            await _submit(client, entry, chunk, state, Path(state_path))
        await _wait(client, state, Path(state_path), poll_interval, max_poll_interval, sleep, on_status)
        outcomes: dict[str, JudgeOutcome] = {}
        by_id = {r.custom_id: r for r in requests}
        for entry in state["chunks"]:
            outcomes.update(await _collect(client, entry, by_id, api_key))
        chunk_of = {r.custom_id: entry for entry, chunk in zip(state["chunks"], chunks, strict=True) for r in chunk}
        for r in requests:
            if r.custom_id not in outcomes:
                entry = chunk_of[r.custom_id]
                kind: ErrorKind = "permanent" if entry["status"] == "failed" else "transient"
                why = f"; batch errors: {entry['errors']}" if entry.get("errors") else ""
                outcomes[r.custom_id] = JudgeOutcome(
                    error=f"missing from batch output (batch {entry['batch_id']} {entry['status']}){why}",
                    error_kind=kind)
        return outcomes
    finally:
        await client.close()


def config_for_judge(judge: OpenAIJudge, **overrides: Any) -> BatchClientConfig:
    """Batch client settings matching an online judge (same server, same key)."""
    return BatchClientConfig(base_url=judge.base_url, api_key=judge._api_key, api_key_env=None, **overrides)


async def run_judge_batch(
    judge: OpenAIJudge,
    policy: Policy,
    items: Sequence[tuple[str, Prompt, str]],
    state_path: str | Path,
    *,
    rewrite: bool = False,
    poll_interval: float = 30.0,
    **run_options: Any,
) -> dict[str, JudgeOutcome]:
    """Judge (or, with `rewrite`, oracle-rewrite) (custom_id, prompt, response) items in batch mode with the same
    model, templates and settings as `judge`; usage is added to `judge.usage`."""
    if rewrite:
        requests = [rewrite_request(judge.model, cid, policy, prompt,
                                    response if judge.rewrite_shows_violating else None,
                                    max_tokens=judge.rewrite_max_tokens) for cid, prompt, response in items]
    else:
        requests = [judge_request(judge.model, cid, policy, prompt, response, structured=judge.structured_output,
                                  max_tokens=judge.max_tokens) for cid, prompt, response in items]
    outcomes = await run_batch(config_for_judge(judge), requests, state_path, poll_interval=poll_interval,
                               **run_options)
    for outcome in outcomes.values():
        judge.usage.add(outcome.usage)
    return outcomes


# ---- state ------------------------------------------------------------------------------------------------------


def _requests_hash(requests: list[BatchRequest]) -> str:
    return sha256_text("batch-requests", *(r.line for r in requests))


def _load_or_new_state(
    path: Path, requests: list[BatchRequest], chunks: list[list[BatchRequest]], base_url: str
) -> dict[str, Any]:
    digest = _requests_hash(requests)
    if path.exists():
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise BatchStateError(f"batch state file {path} is unreadable: {e}") from None
        if state.get("version") != STATE_VERSION:
            raise BatchStateError(f"batch state file {path} has version {state.get('version')!r}")
        if state.get("requests_sha256") != digest or len(state.get("chunks", [])) != len(chunks):
            raise BatchStateError(
                f"batch state file {path} was written for a different set of requests; use another state path "
                "or delete it (its batches stay on the server)")
        if state.get("base_url_sha256") != sha256_text("base_url", base_url):
            raise BatchStateError(f"batch state file {path} belongs to a different server")
        return state
    state = {
        "version": STATE_VERSION,
        "requests_sha256": digest,
        "n_requests": len(requests),
        "base_url_sha256": sha256_text("base_url", base_url),
        "created_at": time.time(),
        "chunks": [{"index": i, "n": len(c), "input_file_id": None, "batch_id": None, "status": "new",
                    "output_file_id": None, "error_file_id": None, "errors": None} for i, c in enumerate(chunks)],
    }
    write_json(path, state)  # atomic: the old or the new state, never half
    return state


# ---- steps ------------------------------------------------------------------------------------------------------


async def _submit(
    client: AsyncOpenAI, entry: dict[str, Any], chunk: list[BatchRequest], state: dict[str, Any], path: Path
) -> None:
    if entry["input_file_id"] is None:
        data = "".join(r.line + "\n" for r in chunk).encode("utf-8")
        uploaded = await client.files.create(file=(f"realign-batch-{entry['index']}.jsonl", data), purpose="batch")
        entry["input_file_id"] = uploaded.id
        write_json(path, state)
    if entry["batch_id"] is None:
        batch = await client.batches.create(
            input_file_id=entry["input_file_id"], endpoint="/v1/chat/completions", completion_window="24h",
            metadata={"source": "realign", "chunk": str(entry["index"])},
        )
        entry["batch_id"] = batch.id
        entry["status"] = batch.status
        write_json(path, state)


async def _wait(
    client: AsyncOpenAI, state: dict[str, Any], path: Path, poll_interval: float, max_poll_interval: float,
    sleep: Callable[[float], Awaitable[None]], on_status: Callable[[list[dict[str, Any]]], None] | None,
) -> None:
    interval = poll_interval
    while True:
        for entry in state["chunks"]:
            if entry["status"] in TERMINAL:
                continue
            batch = await client.batches.retrieve(entry["batch_id"])
            entry.update(status=batch.status, output_file_id=batch.output_file_id, error_file_id=batch.error_file_id)
            if batch.errors is not None and getattr(batch.errors, "data", None):
                entry["errors"] = [getattr(e, "message", str(e)) for e in batch.errors.data or []]
            counts = batch.request_counts
            if counts is not None:
                entry["counts"] = {"total": counts.total, "completed": counts.completed, "failed": counts.failed}
        write_json(path, state)
        if on_status is not None:
            on_status([dict(e) for e in state["chunks"]])
        if all(e["status"] in TERMINAL for e in state["chunks"]):
            return
        await sleep(interval)
        interval = min(interval * 1.5, max_poll_interval)


async def _collect(
    client: AsyncOpenAI, entry: dict[str, Any], by_id: dict[str, BatchRequest], api_key: str
) -> dict[str, JudgeOutcome]:
    outcomes: dict[str, JudgeOutcome] = {}
    for file_id in (entry.get("output_file_id"), entry.get("error_file_id")):
        if not file_id:
            continue
        content = await client.files.content(file_id)
        for raw in content.text.splitlines():
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
            except json.JSONDecodeError:
                continue  # an unreadable line: its item is reported missing
            request = by_id.get(line.get("custom_id")) if isinstance(line, dict) else None
            if request is not None:
                outcomes[request.custom_id] = outcome_from_line(line, request, api_key)
    return outcomes


def outcome_from_line(line: dict[str, Any], request: BatchRequest, api_key: str | None = None) -> JudgeOutcome:
    """Turn one output/error-file line into an outcome (pure)."""
    usage = Usage(calls=1)
    error = line.get("error")
    response = line.get("response") or {}
    if error:
        code = str(error.get("code") or "")
        kind: ErrorKind = "transient" if code in _TRANSIENT_ITEM_CODES else "permanent"
        return JudgeOutcome(error=redact(f"batch item error {code}: {error.get('message')}", api_key),
                            error_kind=kind, usage=usage)
    status = int(response.get("status_code") or 0)
    body = response.get("body") or {}
    if status != 200:
        message = (body.get("error") or {}).get("message") if isinstance(body, dict) else None
        kind = "transient" if is_transient_status(status) else "permanent"
        return JudgeOutcome(error=redact(f"HTTP {status}: {message}", api_key), error_kind=kind, usage=usage)
    tokens = body.get("usage") or {}
    usage.prompt_tokens = int(tokens.get("prompt_tokens") or 0)
    usage.completion_tokens = int(tokens.get("completion_tokens") or 0)
    choices = body.get("choices") or []
    content = ((choices[0].get("message") or {}).get("content") if choices else None) or ""
    if request.kind == "rewrite":
        if not content.strip():
            return JudgeOutcome(error="empty rewrite", error_kind="permanent", usage=usage, raw=content)
        return JudgeOutcome(text=content.strip(), usage=usage, raw=content)
    try:
        parsed = parse_verdict(content, request.known_clauses)
    except VerdictParseError as e:
        return JudgeOutcome(error=f"unparseable judge answer: {e}", error_kind="permanent", usage=usage, raw=content)
    return JudgeOutcome(verdict=parsed.verdict, usage=usage, raw=content, warnings=parsed.warnings)


def _check_unique(requests: list[BatchRequest]) -> None:
    seen: set[str] = set()
    for r in requests:
        if not r.custom_id:
            raise ValueError("batch request with an empty custom_id")
        if r.custom_id in seen:
            raise ValueError(f"duplicate custom_id {r.custom_id!r} in batch requests")
        seen.add(r.custom_id)


def _chunk(requests: list[BatchRequest], max_n: int, max_bytes: int) -> list[list[BatchRequest]]:
    chunks: list[list[BatchRequest]] = [[]]
    size = 0
    for r in requests:
        n = len(r.line.encode("utf-8")) + 1
        if chunks[-1] and (len(chunks[-1]) >= max_n or size + n > max_bytes):
            chunks.append([])
            size = 0
        chunks[-1].append(r)
        size += n
    return chunks
