"""Batch mode for triage: send the uncached verdict requests through the OpenAI Batch API (half price, slow).

The judges' `run_batch` keeps a state file per request set; we name that file after the set of cache keys, so a
restarted run with the same uncached requests polls the batch it already submitted instead of paying again, and a
later run (after some items failed) submits a new batch for just those items.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from trace_engine.data.pairs import sha256_text
from trace_engine.judge.base import Judge, JudgeOutcome
from trace_engine.judge.batch import BatchClientConfig, judge_request, run_batch
from trace_engine.judge.openai_judge import OpenAIJudge
from trace_engine.policy import Policy
from trace_engine.triage.runner import BatchSend, Request

BATCH_DIR = "batch"


def batch_state_path(state_dir: Path, requests: list[Request]) -> Path:
    """One state file per set of requests (order-independent)."""
    digest = sha256_text("triage-batch", *sorted(r.parts.key for r in requests))[:16]
    return state_dir / f"batch-{digest}.json"


def openai_batch_sender(
    judge: Judge,
    policy: Policy,
    state_dir: Path,
    *,
    api_key_env: str | None = "OPENAI_API_KEY",
    poll_interval: float = 30.0,
    on_status: Callable[[list[dict[str, Any]]], None] | None = None,
) -> BatchSend:
    """A `BatchSend` for an `openai:` judge: same model, server, messages and settings as its online calls."""
    if not isinstance(judge, OpenAIJudge):
        raise ValueError(f"--mode batch needs an openai:MODEL judge, not {judge.judge_id}")
    config = BatchClientConfig(base_url=judge.base_url, api_key_env=api_key_env)

    async def send(requests: list[Request]) -> dict[str, JudgeOutcome]:
        lines = [
            judge_request(
                judge.model,
                r.parts.key,
                policy,
                r.prompt,
                r.response,
                structured=judge.structured_output,
                max_tokens=judge.max_tokens,
            )
            for r in requests
        ]
        path = batch_state_path(state_dir, requests)
        return await run_batch(config, lines, path, poll_interval=poll_interval, on_status=on_status)

    return send
