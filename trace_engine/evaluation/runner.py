"""`run_eval`: run the requested suites against one backend and collect an `EvalReport`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from trace_engine.evaluation.asr import resolve_templates, run_asr
from trace_engine.evaluation.capability import (
    DEFAULT_GSM8K_TOKENS,
    DEFAULT_LETTER_TOKENS,
    CapabilitySet,
    MCMode,
    run_capability,
)
from trace_engine.evaluation.generation import DEFAULT_MAX_NEW_TOKENS, GenerationBackend, Progress
from trace_engine.evaluation.judging import DEFAULT_JUDGE_CONCURRENCY
from trace_engine.evaluation.over_refusal import run_over_refusal
from trace_engine.evaluation.prompts import EvalPrompt
from trace_engine.evaluation.report import EvalReport, SuiteResult
from trace_engine.evaluation.stats import DEFAULT_RESAMPLES
from trace_engine.evaluation.tpa import run_tpa
from trace_engine.judge.base import Judge, Usage
from trace_engine.policy import Policy

SUITES = ("tpa", "asr", "over_refusal", "capability")
JUDGED_SUITES = ("tpa", "asr")


@dataclass
class EvalData:
    """Inputs per suite: held-out prompts (TPA), harmful prompts (ASR), benign (over-refusal), benchmarks."""

    tpa_prompts: list[EvalPrompt] = field(default_factory=list)
    harmful_prompts: list[EvalPrompt] = field(default_factory=list)
    benign_prompts: list[EvalPrompt] = field(default_factory=list)
    capability: list[CapabilitySet] = field(default_factory=list)


@dataclass
class EvalSettings:
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    judge_concurrency: int = DEFAULT_JUDGE_CONCURRENCY
    seed: int = 0
    resamples: int = DEFAULT_RESAMPLES
    asr_templates: tuple[str, ...] = ()  # empty: all templates
    mc_mode: MCMode = "loglik"
    letter_tokens: int = DEFAULT_LETTER_TOKENS
    numeric_tokens: int = DEFAULT_GSM8K_TOKENS
    judge_over_refusal: bool = False  # also grade benign responses with the judge

    def to_dict(self) -> dict:
        d = asdict(self)
        d["asr_templates"] = list(self.asr_templates)
        return d


def check_suites(suites: Sequence[str], data: EvalData, judge: Judge | None, policy: Policy | None) -> None:
    """Fail before any generation if a suite lacks its inputs (never lose an hour of generation to a typo)."""
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        raise ValueError(f"unknown suites {unknown}; known: {', '.join(SUITES)}")
    if not suites:
        raise ValueError("no suites requested")
    needs = {
        "tpa": data.tpa_prompts,
        "asr": data.harmful_prompts,
        "over_refusal": data.benign_prompts,
        "capability": data.capability,
    }
    missing = [s for s in suites if not needs[s]]
    if missing:
        raise ValueError(f"no data for suites {missing}")
    if any(s in JUDGED_SUITES for s in suites) and (judge is None or policy is None):
        raise ValueError(
            f"suites {[s for s in suites if s in JUDGED_SUITES]} need an evaluation judge and a policy"
        )


def eval_units(suites: Sequence[str], data: EvalData, settings: EvalSettings | None = None,
               judge: Judge | None = None) -> int:
    """How many `progress` units `run_eval` reports: one per prompt generated and one per response judged
    (capability reports none)."""
    settings = settings or EvalSettings()
    units = 0
    for suite in dict.fromkeys(suites):
        if suite == "tpa":
            units += 2 * len(data.tpa_prompts)
        elif suite == "asr":
            units += 2 * len(data.harmful_prompts) * len(resolve_templates(settings.asr_templates or None))
        elif suite == "over_refusal":
            judged = settings.judge_over_refusal and judge is not None
            units += len(data.benign_prompts) * (2 if judged else 1)
    return units


async def arun_eval(
    backend: GenerationBackend,
    suites: Sequence[str],
    judge: Judge | None,
    data: EvalData,
    *,
    policy: Policy | None = None,
    settings: EvalSettings | None = None,
    triage_judge_id: str | None = None,
    on_suite_done: Callable[[SuiteResult], None] | None = None,
    progress: Progress | None = None,
) -> EvalReport:
    """`progress(n)`: n more prompts generated or responses judged (totals: `eval_units`)."""
    settings = settings or EvalSettings()
    check_suites(suites, data, judge, policy)
    usage = Usage()
    common = dict(seed=settings.seed, resamples=settings.resamples)
    gen = dict(
        max_new_tokens=settings.max_new_tokens, concurrency=settings.judge_concurrency, usage=usage, **common
    )
    if progress is not None:
        gen["progress"] = progress
    results: dict[str, SuiteResult] = {}
    for suite in dict.fromkeys(suites):
        if suite == "tpa":
            result = await run_tpa(backend, judge, policy, data.tpa_prompts, **gen)  # type: ignore[arg-type]
        elif suite == "asr":
            result = await run_asr(
                backend,
                judge,
                policy,
                data.harmful_prompts,  # type: ignore[arg-type]
                templates=settings.asr_templates or None,
                **gen,
            )
        elif suite == "over_refusal":
            use_judge = settings.judge_over_refusal and judge is not None
            result = await run_over_refusal(
                backend, data.benign_prompts, judge=judge if use_judge else None, policy=policy, **gen
            )
        else:
            result = run_capability(
                backend,
                data.capability,
                mc_mode=settings.mc_mode,
                letter_tokens=settings.letter_tokens,
                numeric_tokens=settings.numeric_tokens,
                **common,
            )
        results[suite] = result
        if on_suite_done is not None:
            on_suite_done(result)
    return EvalReport(
        model=backend.describe(),
        eval_judge_id=judge.judge_id if judge is not None else None,
        triage_judge_id=triage_judge_id,
        policy={"name": policy.name, "sha256": policy.sha256} if policy is not None else None,
        settings=settings.to_dict(),
        suites=results,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        judge_usage=usage.to_dict(),
    )


def run_eval(
    backend: GenerationBackend,
    suites: Sequence[str],
    judge: Judge | None,
    data: EvalData,
    **kwargs,
) -> EvalReport:
    """Synchronous entry point (CLI, worker): see `arun_eval`."""
    return asyncio.run(arun_eval(backend, suites, judge, data, **kwargs))
