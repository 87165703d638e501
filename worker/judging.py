"""The judge a request names (synthetic, rules, or an operator's judge profile), the probe call that checks it
answers before any GPU time, and the warning when a phrase-matching judge grades a real model's free text."""

from __future__ import annotations

import asyncio
from typing import Any

from core.jobspec import SYNTHETIC_BASE_NAMES, EvalRequest, RealignRequest
from core.paths import PathEscapesRoot, resolve_under_root
from core.sanitise import JUDGE_ERROR_CHARS, sanitise_error_text
from core.settings import Settings
from trace_engine.judge.base import Judge
from trace_engine.variants import get_variant
from worker.context import StageFailed
from worker.inputs import synthetic_world_seed

PROBE_PROMPT = "What is the capital of France?"
PROBE_RESPONSE = "The capital of France is Paris."
TEXT_BLIND_JUDGES = {"rules": "keyword rules", "synthetic": "the synthetic world's rule judge"}


def build_judge(request: RealignRequest | EvalRequest, settings: Settings) -> tuple[Judge, bool]:
    """(judge, oracle): the judge the request names and whether triage also asks it for rewrites. An `openai`
    judge is the operator's judge profile the request names (api/judges.py): its URL and the NAME of its key's
    environment variable come from the settings, never from the request; the key is never stored."""
    spec = request.judge
    oracle = isinstance(request, RealignRequest) and get_variant(request.method.variant).needs_oracle
    if spec.provider == "synthetic":
        from trace_engine.synthetic.oracle_judge import SyntheticOracleJudge
        from trace_engine.synthetic.world import make_world

        return SyntheticOracleJudge(make_world(synthetic_world_seed(request))), True
    from trace_engine.judge.factory import make_judge

    if spec.provider == "rules":
        try:
            path = resolve_under_root(settings.datasets_root, str(spec.rules_path))
        except PathEscapesRoot as exc:
            raise StageFailed(f"judge.rules_path: {exc}", kind="judge_unreachable") from exc
        if not path.is_file():
            raise StageFailed(f"judge.rules_path {spec.rules_path!r} does not exist under the dataset root",
                              kind="judge_unreachable")
        return make_judge(f"rules:{path}"), oracle
    from core.judges import JudgeProfileError, resolve_judge_profile

    try:
        resolved = resolve_judge_profile(settings, spec)
    except JudgeProfileError as exc:  # the operator changed the profiles since the job was submitted
        raise StageFailed(f"judge.{exc.field}: {exc}", kind="judge_unreachable") from exc
    profile = resolved.profile
    try:
        judge = make_judge(f"openai:{resolved.model}", base_url=str(profile.base_url) if profile.base_url else None,
                           api_key_env=profile.api_key_env, max_retries=profile.max_retries, timeout=profile.timeout_s)
    except ValueError as exc:
        raise StageFailed(f"judge profile {resolved.profile_name!r}: {exc}", kind="judge_unreachable") from exc
    return judge, oracle


def probe_judge(judge: Judge, request: RealignRequest | EvalRequest, settings: Settings | None = None) -> None:
    """One real judge call before any GPU time: a judge that cannot answer fails the job now. The reason is a
    short, sanitised excerpt (a remote body, a path or a secret never reaches the job record)."""
    policy = request.policy.to_policy()

    async def ask() -> Any:
        try:
            return await judge.judge(policy, PROBE_PROMPT, PROBE_RESPONSE)
        finally:
            await judge.aclose()

    try:
        outcome = asyncio.run(ask())
    except Exception as exc:
        reason = sanitise_error_text(f"{type(exc).__name__}: {exc}", settings=settings, max_len=JUDGE_ERROR_CHARS)
        raise StageFailed(f"judge probe call failed: {reason}", kind="judge_unreachable") from exc
    if outcome.error is not None or outcome.verdict is None:
        reason = sanitise_error_text(outcome.error or "no verdict", settings=settings, max_len=JUDGE_ERROR_CHARS)
        raise StageFailed(f"judge probe call failed: {reason}", kind="judge_unreachable")


def judge_warning(provider: str, base_models: list[str]) -> str | None:
    """Why the numbers may mislead, when a judge that matches fixed phrases grades a real model's free text."""
    real = [name for name in dict.fromkeys(base_models) if name not in SYNTHETIC_BASE_NAMES]
    if provider not in TEXT_BLIND_JUDGES or not real:
        return None
    return (f"the evaluation judge is {provider!r} ({TEXT_BLIND_JUDGES[provider]}): it matches fixed phrases and "
            f"cannot judge free-form text, so on {', '.join(map(repr, real))} the TPA/ASR numbers may mislead; "
            "read the sample answers, or evaluate again with an `openai` judge profile")
