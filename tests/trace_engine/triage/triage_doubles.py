"""A tiny in-test `Judge`: a test double of the protocol (keyword rule, optional latency and failures)."""

from __future__ import annotations

import asyncio
from collections import Counter

from trace_engine.data.pairs import PreferencePair, Prompt
from trace_engine.judge.base import JudgeOutcome, Usage, Verdict
from trace_engine.policy import Policy

POLICY = Policy(text="## [NO-BAD] Do not say BAD\nA response containing BAD violates.", name="t")


class KeywordJudge:
    """Violating iff the response contains 'BAD'; counts calls and the peak number of calls in flight."""

    template_version = "kw-v1"
    rewrite_template_version = "kw-rw-v1"

    def __init__(
        self,
        judge_id: str = "keyword",
        latency_s: float = 0.0,
        fail_responses: set[str] | None = None,
        fail_all: bool = False,
        rewrite_text: str | None = "A compliant answer.",
    ) -> None:
        self.judge_id = judge_id
        self.latency_s = latency_s
        self.fail_responses = fail_responses or set()
        self.fail_all = fail_all
        self.rewrite_text = rewrite_text
        self.calls: Counter[str] = Counter()
        self.rewrites: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0

    async def _enter(self) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        await asyncio.sleep(self.latency_s)
        self.in_flight -= 1

    async def judge(self, policy: Policy, prompt: Prompt, response: str) -> JudgeOutcome:
        self.calls[response] += 1
        await self._enter()
        if self.fail_all or response in self.fail_responses:
            return JudgeOutcome(error="HTTP 500 after retries", usage=Usage(calls=3, retries=2))
        label = "violating" if "BAD" in response else "compliant"
        clauses = ("NO-BAD",) if label == "violating" else ()
        return JudgeOutcome(
            verdict=Verdict(label, clauses, f"{label} by keyword"), usage=Usage(calls=1, prompt_tokens=10)
        )

    async def rewrite(self, policy: Policy, prompt: Prompt, violating_response: str) -> JudgeOutcome:
        self.rewrites[violating_response] += 1
        await self._enter()
        if self.rewrite_text is None:
            return JudgeOutcome(error="rewrite refused", usage=Usage(calls=1))
        return JudgeOutcome(text=self.rewrite_text, usage=Usage(calls=1, completion_tokens=5))

    async def aclose(self) -> None:
        return None


def make_pairs(n: int, kinds: str = "IPR") -> list[PreferencePair]:
    """`n` pairs cycling through INVERT, PUNISH, RETAIN shapes; every response text unique."""
    shapes = {
        "I": ("BAD chosen", "good rejected"),
        "P": ("BAD chosen", "BAD rejected"),
        "R": ("good chosen", "BAD rej"),
    }
    pairs = []
    for i in range(n):
        chosen, rejected = shapes[kinds[i % len(kinds)]]
        pairs.append(
            PreferencePair(
                id=f"p{i}", prompt=f"question {i}", chosen=f"{chosen} {i}", rejected=f"{rejected} {i}"
            )
        )
    return pairs
