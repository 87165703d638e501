"""Judge many (prompt, response) items concurrently with a bounded number of requests in flight."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from trace_engine.data.pairs import Prompt
from trace_engine.judge.base import Judge, JudgeError, JudgeOutcome, Usage
from trace_engine.policy import Policy

DEFAULT_JUDGE_CONCURRENCY = 16


@dataclass(frozen=True)
class JudgedItem:
    """One judged response: `violating` is None when the judge failed (then excluded from rates)."""

    violating: bool | None
    clauses: tuple[str, ...] = ()
    rationale: str = ""
    error: str | None = None

    def to_dict(self) -> dict:
        return {
            "violating": self.violating,
            "clauses": list(self.clauses),
            "rationale": self.rationale,
            "error": self.error,
        }


async def judge_items(
    judge: Judge,
    policy: Policy,
    items: Sequence[tuple[Prompt, str]],
    *,
    concurrency: int = DEFAULT_JUDGE_CONCURRENCY,
    usage: Usage | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[JudgedItem]:
    """Judge every (prompt, response); results keep the input order. A judge error never aborts the batch.
    `progress(1)` after each item is judged."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    gate = asyncio.Semaphore(concurrency)

    async def one(prompt: Prompt, response: str) -> JudgedItem:
        async with gate:
            try:
                outcome = await judge.judge(policy, prompt, response)
            except JudgeError as exc:
                if progress is not None:
                    progress(1)
                return JudgedItem(None, error=f"{type(exc).__name__}: {exc}")
        if usage is not None:
            usage.add(outcome.usage)
        if progress is not None:
            progress(1)
        return _to_item(outcome)

    return list(await asyncio.gather(*(one(p, r) for p, r in items)))


def _to_item(outcome: JudgeOutcome) -> JudgedItem:
    if outcome.error is not None or outcome.verdict is None:
        return JudgedItem(None, error=outcome.error or "judge returned no verdict")
    v = outcome.verdict
    return JudgedItem(v.violating, v.clauses, v.rationale)
