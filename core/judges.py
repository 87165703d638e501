"""Judge profiles: the operator's named judge endpoints (`Settings.judge_profiles`), and how a request's
`judge` resolves to one.

A request never gives a URL or the name of an environment variable: it names a profile, and the profile says
where the judge is and which secret (by NAME, set by the operator) authenticates it. So a tenant cannot point the
worker at its own server (SSRF) nor make it send the operator's key, or any other environment variable, anywhere.
The API checks the profile at submission (`api.judges.check_judge_profile`: 422 listing the known names, or
saying the profile's key is not set on the server); the worker resolves it again when it builds the judge (the
configuration may have changed since).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from core.jobspec import JudgeIn
from core.settings import JudgeProfile, Settings


class JudgeProfileError(ValueError):
    """The request's judge names no configured profile, or a model the profile does not allow."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field  # "profile" or "model"


@dataclass(frozen=True)
class ResolvedJudge:
    profile_name: str
    profile: JudgeProfile
    model: str


def resolve_judge_profile(settings: Settings, judge: JudgeIn) -> ResolvedJudge:
    """The profile and model an `openai` judge request gets; `JudgeProfileError` when there is none."""
    if judge.provider != "openai":
        raise ValueError(f"provider {judge.provider!r} uses no judge profile")
    name = str(judge.profile)
    profile = settings.judge_profiles.get(name)
    if profile is None:
        known = ", ".join(sorted(settings.judge_profiles)) or "none (the operator has configured no judge profiles)"
        raise JudgeProfileError(f"unknown judge profile {name!r}; known profiles: {known}", field="profile")
    try:
        model = profile.model_for(judge.model)
    except ValueError as exc:
        raise JudgeProfileError(str(exc), field="model") from None
    return ResolvedJudge(name, profile, model)


def missing_judge_key(profile: JudgeProfile) -> str | None:
    """The NAME of the environment variable the profile's key should be in, when it is not set here; None when the
    profile needs no key or has one."""
    name = profile.api_key_env
    return name if name and not os.environ.get(name) else None
