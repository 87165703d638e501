"""Triage orchestration: dedupe responses, serve what the cache has, judge the rest with bounded concurrency.

Each unique (prompt, response) is judged once per (judge_id, template version, policy); every answer is committed to
the `VerdictStore` as it arrives, so a killed run loses at most the requests that were in flight. Retries and
backoff live in the judge; here a failed request is recorded for its items and the run goes on, until
`max_consecutive_failures` failures in a row say the endpoint is down: then no new request starts, the in-flight ones
finish, and the result says `aborted` (re-running resumes from the store).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from trace_engine.categories import CATEGORY_ORDER, Category
from trace_engine.data.pairs import PreferencePair, Prompt
from trace_engine.judge.base import Judge, JudgeOutcome, Usage, Verdict
from trace_engine.policy import Policy
from trace_engine.triage.cache import (
    KIND_REWRITE,
    KIND_VERDICT,
    CacheKeyParts,
    VerdictStore,
    cache_key_parts,
)
from trace_engine.triage.categorize import categorize, triaged_row

DEFAULT_CONCURRENCY = 64
DEFAULT_MAX_CONSECUTIVE_FAILURES = 20


@dataclass(frozen=True)
class Progress:
    """A progress report: `done` counts cached and freshly judged requests of this phase."""

    phase: str  # "verdict" or "rewrite"
    done: int
    total: int
    elapsed_s: float
    rate: float  # fresh requests per second in this phase
    eta_s: float | None


ProgressCallback = Callable[[Progress], None]


@dataclass
class Request:
    """One unique judge request and the pairs that need its answer."""

    parts: CacheKeyParts
    prompt: Prompt
    response: str
    item_ids: list[str] = field(default_factory=list)


# Batch sender: answers for many requests at once, keyed by `request.parts.key` (see `trace_engine.triage.batch`).
BatchSend = Callable[[list["Request"]], Awaitable[dict[str, JudgeOutcome]]]


@dataclass
class Answer:
    verdict: Verdict | None = None
    text: str | None = None  # oracle rewrite
    error: str | None = None
    cached: bool = False
    usage: Usage = field(default_factory=Usage)
    raw: str | None = None  # the judge's raw output, kept for audit when it provides one
    warnings: tuple[str, ...] = ()


@dataclass
class PhaseStats:
    requests: int = 0  # unique requests needed
    cache_hits: int = 0
    sent: int = 0  # requests started this run
    succeeded: int = 0
    failed: int = 0
    usage: Usage = field(default_factory=Usage)
    warnings: Counter[str] = field(default_factory=Counter)  # judge warnings (unknown clause ids, fallbacks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "cache_hits": self.cache_hits,
            "sent": self.sent,
            "succeeded": self.succeeded,
            "failed": self.failed,
            **self.usage.to_dict(),
            "warnings": dict(self.warnings.most_common(20)),
        }


@dataclass
class TriageResult:
    rows: list[dict[str, Any]]
    counts: dict[str, int]
    verdicts: PhaseStats
    rewrites: PhaseStats
    errors: list[dict[str, Any]]
    wall_s: float
    aborted: bool = False
    abort_reason: str | None = None

    @property
    def usage(self) -> Usage:
        total = Usage()
        total.add(self.verdicts.usage)
        total.add(self.rewrites.usage)
        return total


class _FailureBreaker:
    """Trips after `limit` consecutive failures (counted in completion order, reset by any success)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.consecutive = 0
        self.tripped = False

    def record(self, ok: bool) -> None:
        self.consecutive = 0 if ok else self.consecutive + 1
        if self.limit > 0 and self.consecutive >= self.limit:
            self.tripped = True


def template_version_of(judge: Judge, kind: str = KIND_VERDICT) -> str:
    """The prompt-template version behind a judge's verdicts (or rewrites); part of every cache key.

    A judge may declare `template_version` / `rewrite_template_version` (the rules judge has no template);
    otherwise the shared prompt constants apply.
    """
    attribute = "rewrite_template_version" if kind == KIND_REWRITE else "template_version"
    version = getattr(judge, attribute, None)
    if version:
        return str(version)
    from trace_engine.judge import prompt

    return str(prompt.REWRITE_TEMPLATE_VERSION if kind == KIND_REWRITE else prompt.TEMPLATE_VERSION)


def verdict_requests(
    pairs: Sequence[PreferencePair], judge_id: str, template_version: str, policy_sha256: str
) -> tuple[dict[str, Request], list[tuple[str, str]]]:
    """Unique verdict requests, and per pair the (chosen key, rejected key)."""
    requests: dict[str, Request] = {}
    pair_keys: list[tuple[str, str]] = []
    for pair in pairs:
        keys = []
        for response in (pair.chosen, pair.rejected):
            parts = cache_key_parts(
                KIND_VERDICT, judge_id, template_version, policy_sha256, pair.prompt, response
            )
            request = requests.setdefault(parts.key, Request(parts, pair.prompt, response))
            if not request.item_ids or request.item_ids[-1] != pair.id:
                request.item_ids.append(pair.id)
            keys.append(parts.key)
        pair_keys.append((keys[0], keys[1]))
    return requests, pair_keys


async def run_requests(
    requests: Sequence[Request],
    call: Callable[[Request], Awaitable[JudgeOutcome]],
    store: VerdictStore,
    *,
    phase: str,
    concurrency: int,
    breaker: _FailureBreaker,
    stats: PhaseStats,
    answers: dict[str, Answer],
    progress: ProgressCallback | None = None,
    done_before: int = 0,
    total: int | None = None,
) -> None:
    """Send `requests` with at most `concurrency` in flight; store each answer the moment it arrives."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    pending: Iterator[Request] = iter(requests)
    total = len(requests) + done_before if total is None else total
    started = time.monotonic()
    fresh_done = 0

    def report() -> None:
        if progress is None:
            return
        elapsed = time.monotonic() - started
        rate = fresh_done / elapsed if elapsed > 0 else 0.0
        remaining = total - done_before - fresh_done
        eta = remaining / rate if rate > 0 else None
        progress(Progress(phase, done_before + fresh_done, total, elapsed, rate, eta))

    async def worker() -> None:
        nonlocal fresh_done
        while not breaker.tripped:
            request = next(pending, None)
            if request is None:
                return
            stats.sent += 1
            answer = await _ask(call, request, phase)
            _persist(store, request, answer, phase, stats)
            answers[request.parts.key] = answer
            breaker.record(answer.error is None)
            fresh_done += 1
            report()

    report()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(requests)))))


async def _ask(call: Callable[[Request], Awaitable[JudgeOutcome]], request: Request, phase: str) -> Answer:
    try:
        outcome = await call(request)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a judge should return errors, but a raised one must not kill the run
        outcome = JudgeOutcome(error=f"{type(exc).__name__}: {exc}")
    return answer_from_outcome(outcome, phase)


def answer_from_outcome(outcome: JudgeOutcome, phase: str) -> Answer:
    """Normalise a judge outcome: a verdict request needs a verdict, a rewrite a non-empty text."""
    raw = getattr(outcome, "raw", None)
    answer = Answer(
        verdict=outcome.verdict,
        text=outcome.text,
        error=outcome.error,
        usage=outcome.usage,
        raw=raw if raw is None or isinstance(raw, str) else str(raw),
        warnings=tuple(getattr(outcome, "warnings", ()) or ()),
    )
    if answer.error is None and phase == KIND_VERDICT and answer.verdict is None:
        answer.error = "judge returned no verdict"
    if answer.error is None and phase == KIND_REWRITE and not (answer.text or "").strip():
        answer.error = "judge returned an empty rewrite"  # never stored as a compliant answer
    if phase != KIND_REWRITE or answer.error is not None:
        answer.text = None
    return answer


def _persist(store: VerdictStore, request: Request, answer: Answer, phase: str, stats: PhaseStats) -> None:
    stats.usage.add(answer.usage)
    stats.warnings.update(answer.warnings)
    if answer.error is not None:
        stats.failed += 1
        store.put_error(request.parts, answer.error, answer.usage)
        return
    stats.succeeded += 1
    store.put(request.parts, verdict=answer.verdict, text=answer.text, usage=answer.usage, raw=answer.raw)


async def _send_batch(
    requests: list[Request],
    batch: BatchSend,
    store: VerdictStore,
    stats: PhaseStats,
    answers: dict[str, Answer],
    progress: ProgressCallback | None,
    total: int,
) -> None:
    """Send `requests` as one batch job and persist every outcome (a missing one is an error)."""
    started = time.monotonic()
    stats.sent += len(requests)
    outcomes = await batch(requests)
    for request in requests:
        outcome = outcomes.get(request.parts.key) or JudgeOutcome(error="missing from the batch results")
        answer = answer_from_outcome(outcome, KIND_VERDICT)
        _persist(store, request, answer, KIND_VERDICT, stats)
        answers[request.parts.key] = answer
    if progress is not None:
        elapsed = time.monotonic() - started
        progress(Progress(KIND_VERDICT, total, total, elapsed, len(requests) / max(elapsed, 1e-9), 0.0))


def serve_cached(
    requests: dict[str, Request], store: VerdictStore, answers: dict[str, Answer], stats: PhaseStats
) -> list[Request]:
    """Fill `answers` from the store; return the requests still to send (in first-seen order)."""
    cached = store.get_many(requests)
    for key, entry in cached.items():
        answers[key] = Answer(verdict=entry.verdict, text=entry.text, cached=True)
    stats.requests = len(requests)
    stats.cache_hits = len(cached)
    return [r for k, r in requests.items() if k not in cached]


async def triage(
    pairs: Sequence[PreferencePair],
    policy: Policy,
    judge: Judge,
    store: VerdictStore,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    max_consecutive_failures: int = DEFAULT_MAX_CONSECUTIVE_FAILURES,
    oracle: bool = False,
    progress: ProgressCallback | None = None,
    batch: BatchSend | None = None,
) -> TriageResult:
    """Triage `pairs` under `policy`; see the module docstring.

    With `batch`, uncached verdict requests go through it (the Batch API) instead of online calls; its failures
    are recorded like online ones (a re-run retries them). Oracle rewrites are always sent online.
    """
    started = time.monotonic()
    template_version = template_version_of(judge)
    policy_sha = policy.sha256
    breaker = _FailureBreaker(max_consecutive_failures)
    verdict_stats, rewrite_stats = PhaseStats(), PhaseStats()
    answers: dict[str, Answer] = {}

    requests, pair_keys = verdict_requests(pairs, judge.judge_id, template_version, policy_sha)
    to_send = serve_cached(requests, store, answers, verdict_stats)

    async def ask_verdict(r: Request) -> JudgeOutcome:
        return await judge.judge(policy, r.prompt, r.response)

    if batch is not None and to_send:
        await _send_batch(to_send, batch, store, verdict_stats, answers, progress, len(requests))
        to_send = []
    await run_requests(
        to_send,
        ask_verdict,
        store,
        phase=KIND_VERDICT,
        concurrency=concurrency,
        breaker=breaker,
        stats=verdict_stats,
        answers=answers,
        progress=progress,
        done_before=len(requests) - len(to_send),
        total=len(requests),
    )

    rewrite_answers: dict[str, Answer] = {}
    rewrite_requests: dict[str, Request] = {}
    rewrite_keys: dict[int, str] = {}
    if oracle and not breaker.tripped:
        rewrite_version = template_version_of(judge, KIND_REWRITE)
        rewrite_requests, rewrite_keys = punish_rewrite_requests(
            pairs, pair_keys, answers, judge.judge_id, rewrite_version, policy_sha
        )
        rewrite_to_send = serve_cached(rewrite_requests, store, rewrite_answers, rewrite_stats)

        async def ask_rewrite(r: Request) -> JudgeOutcome:
            return await judge.rewrite(policy, r.prompt, r.response)

        await run_requests(
            rewrite_to_send,
            ask_rewrite,
            store,
            phase=KIND_REWRITE,
            concurrency=concurrency,
            breaker=breaker,
            stats=rewrite_stats,
            answers=rewrite_answers,
            progress=progress,
            done_before=len(rewrite_requests) - len(rewrite_to_send),
            total=len(rewrite_requests),
        )

    rows = [
        _row_for(
            pair,
            answers.get(pair_keys[index][0]),
            answers.get(pair_keys[index][1]),
            rewrite_answers.get(rewrite_keys[index]) if index in rewrite_keys else None,
            oracle_requested=index in rewrite_keys,
            judge_id=judge.judge_id,
            policy_sha256=policy_sha,
            template_version=template_version,
        )
        for index, pair in enumerate(pairs)
    ]
    counts = {c.value: 0 for c in CATEGORY_ORDER}
    for row in rows:
        counts[row["category"]] += 1
    errors = _request_errors(requests, answers) + _request_errors(rewrite_requests, rewrite_answers)
    not_sent = sum(1 for k in requests if k not in answers)
    aborted = breaker.tripped
    reason = None
    if aborted:
        reason = (
            f"stopped after {breaker.consecutive} consecutive judge failures; {not_sent} requests not sent. "
            "Every verdict so far is stored: re-run the same command to resume."
        )
    return TriageResult(
        rows=rows,
        counts=counts,
        verdicts=verdict_stats,
        rewrites=rewrite_stats,
        errors=errors,
        wall_s=time.monotonic() - started,
        aborted=aborted,
        abort_reason=reason,
    )


def punish_rewrite_requests(
    pairs: Sequence[PreferencePair],
    pair_keys: list[tuple[str, str]],
    answers: dict[str, Answer],
    judge_id: str,
    template_version: str,
    policy_sha256: str,
) -> tuple[dict[str, Request], dict[int, str]]:
    """Oracle requests for the PUNISH pairs (a rewrite of the original chosen response), and each pair's request key."""
    requests: dict[str, Request] = {}
    keys: dict[int, str] = {}
    for index, pair in enumerate(pairs):
        chosen, rejected = (answers.get(k) for k in pair_keys[index])
        if categorize(_verdict(chosen), _verdict(rejected)) is not Category.PUNISH:
            continue
        parts = cache_key_parts(
            KIND_REWRITE, judge_id, template_version, policy_sha256, pair.prompt, pair.chosen
        )
        requests.setdefault(parts.key, Request(parts, pair.prompt, pair.chosen)).item_ids.append(pair.id)
        keys[index] = parts.key
    return requests, keys


def _row_for(
    pair: PreferencePair,
    chosen: Answer | None,
    rejected: Answer | None,
    oracle_answer: Answer | None,
    *,
    oracle_requested: bool,
    judge_id: str,
    policy_sha256: str,
    template_version: str,
) -> dict[str, Any]:
    oracle_error = None
    if oracle_requested:
        oracle_error = oracle_answer.error if oracle_answer else "not attempted: run stopped"
    return triaged_row(
        pair,
        _verdict(chosen),
        _verdict(rejected),
        judge_id=judge_id,
        policy_sha256=policy_sha256,
        template_version=template_version,
        error=_pair_error(chosen, rejected),
        oracle_response=oracle_answer.text if oracle_answer and oracle_answer.error is None else None,
        oracle_error=oracle_error,
    )


def _verdict(answer: Answer | None) -> Verdict | None:
    return answer.verdict if answer is not None and answer.error is None else None


def _pair_error(chosen: Answer | None, rejected: Answer | None) -> str | None:
    """Why a pair has no category: the judge errors of its two responses, or 'not judged' if never sent."""
    reasons = []
    for side, answer in (("chosen", chosen), ("rejected", rejected)):
        if answer is None:
            reasons.append(f"{side}: not judged (run stopped)")
        elif answer.error is not None:
            reasons.append(f"{side}: {answer.error}")
    return "; ".join(reasons) or None


def _request_errors(requests: dict[str, Request], answers: dict[str, Answer]) -> list[dict[str, Any]]:
    return [
        {"kind": request.parts.kind, "item_ids": request.item_ids, "error": answer.error}
        for key, request in requests.items()
        if (answer := answers.get(key)) is not None and answer.error is not None
    ]
