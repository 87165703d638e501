"""The judge protocol shared by every provider (openai-compatible HTTP, offline rules)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from trace_engine.data.pairs import Prompt
from trace_engine.policy import Policy

VerdictLabel = Literal["compliant", "violating"]
ErrorKind = Literal["transient", "permanent"]


@dataclass(frozen=True)
class Verdict:
    """A judge's decision on one response under one policy."""

    verdict: VerdictLabel
    clauses: tuple[str, ...] = ()
    rationale: str = ""

    @property
    def violating(self) -> bool:
        return self.verdict == "violating"

    def to_dict(self) -> dict:
        return {"verdict": self.verdict, "clauses": list(self.clauses), "rationale": self.rationale}

    @classmethod
    def from_dict(cls, d: dict) -> Verdict:
        return cls(verdict=d["verdict"], clauses=tuple(d.get("clauses") or ()), rationale=d.get("rationale") or "")


@dataclass
class Usage:
    """Calls and tokens spent by a judge (summed over retries)."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0

    def add(self, other: Usage) -> None:
        self.calls += other.calls
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.retries += other.retries

    def to_dict(self) -> dict:
        return {
            "calls": self.calls,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "retries": self.retries,
        }


@dataclass
class JudgeOutcome:
    """What one judge request produced: a verdict (or rewrite text), or an error, plus usage."""

    verdict: Verdict | None = None
    text: str | None = None  # oracle rewrite
    error: str | None = None
    usage: Usage = field(default_factory=Usage)
    # "transient": retries on 429/5xx/timeout/connection ran out (worth retrying later; never cache);
    # "permanent": 4xx or an unparseable answer after re-asks. None when there is no error.
    error_kind: ErrorKind | None = None
    raw: str | None = None  # the judge's raw answer (audit trail), when there was one
    warnings: tuple[str, ...] = ()  # e.g. unknown clause ids, a structured-output fallback

    @property
    def transient(self) -> bool:
        return self.error is not None and self.error_kind == "transient"


class JudgeError(Exception):
    """A judge request failed for good (after retries, or a permanent 4xx / unparseable answer)."""


class TransientJudgeError(JudgeError):
    """Retries were exhausted on a transient failure (429, 5xx, timeout, connection)."""


class Judge(Protocol):
    """A provider. `judge_id` enters every cache key, so it must change whenever verdicts could change."""

    judge_id: str

    async def judge(self, policy: Policy, prompt: Prompt, response: str) -> JudgeOutcome: ...

    async def rewrite(self, policy: Policy, prompt: Prompt, violating_response: str) -> JudgeOutcome:
        """Oracle: write a response to `prompt` that complies with `policy`."""
        ...

    async def aclose(self) -> None: ...
