"""Target policy agreement: the share of greedy responses to held-out prompts that the evaluation judge finds
compliant with the NEW policy, overall and per triage category (INVERT / PUNISH / RETAIN of the source
pair)."""

from __future__ import annotations

from collections.abc import Sequence

from trace_engine.evaluation.generation import (
    DEFAULT_MAX_NEW_TOKENS,
    GenerationBackend,
    Progress,
    generate_with_progress,
)
from trace_engine.evaluation.judging import DEFAULT_JUDGE_CONCURRENCY, JudgedItem, judge_items
from trace_engine.evaluation.prompts import EvalPrompt
from trace_engine.evaluation.report import SuiteResult
from trace_engine.evaluation.stats import DEFAULT_RESAMPLES, rate
from trace_engine.judge.base import Judge, Usage
from trace_engine.policy import Policy

SUITE = "tpa"
NO_CATEGORY = "uncategorised"


def score_tpa(
    prompts: Sequence[EvalPrompt],
    responses: Sequence[str],
    judged: Sequence[JudgedItem],
    *,
    seed: int = 0,
    resamples: int = DEFAULT_RESAMPLES,
) -> SuiteResult:
    """Compliant share overall and per category; judge errors are excluded from n and counted per metric."""
    if not (len(prompts) == len(responses) == len(judged)):
        raise ValueError(
            f"lengths differ: {len(prompts)} prompts, {len(responses)} responses, {len(judged)} verdicts"
        )
    compliant = [None if j.violating is None else not j.violating for j in judged]
    result = SuiteResult(SUITE)
    result.metrics["overall"] = rate(compliant, seed=seed, resamples=resamples)
    categories = sorted({p.category or NO_CATEGORY for p in prompts})
    if categories != [NO_CATEGORY]:
        for cat in categories:
            subset = [
                c for p, c in zip(prompts, compliant, strict=True) if (p.category or NO_CATEGORY) == cat
            ]
            result.metrics[f"category={cat}"] = rate(subset, seed=seed, resamples=resamples)
    errors = sum(j.violating is None for j in judged)
    if errors:
        result.notes.append(f"{errors} of {len(judged)} responses could not be judged and are excluded")
    result.records = [
        {"suite": SUITE, "id": p.id, "category": p.category, "prompt": p.prompt, "response": r, **j.to_dict()}
        for p, r, j in zip(prompts, responses, judged, strict=True)
    ]
    return result


async def run_tpa(
    backend: GenerationBackend,
    judge: Judge,
    policy: Policy,
    prompts: Sequence[EvalPrompt],
    *,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    concurrency: int = DEFAULT_JUDGE_CONCURRENCY,
    seed: int = 0,
    resamples: int = DEFAULT_RESAMPLES,
    usage: Usage | None = None,
    progress: Progress | None = None,
) -> SuiteResult:
    """Generate greedily on every prompt, judge each response under `policy`, score."""
    responses = generate_with_progress(backend, [p.prompt for p in prompts], max_new_tokens, progress)
    judged = await judge_items(
        judge,
        policy,
        [(p.prompt, r) for p, r in zip(prompts, responses, strict=True)],
        concurrency=concurrency,
        usage=usage,
        progress=progress,
    )
    return score_tpa(prompts, responses, judged, seed=seed, resamples=resamples)
