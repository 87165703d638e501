"""Judge profiles: the operator's named judge endpoints (`Settings.judge_profiles`), and how a request's
`judge` resolves to one.

A request never gives a URL or the name of an environment variable: it names a profile, and the profile says
where the judge is and which secret (by NAME, set by the operator) authenticates it. So a tenant cannot point the
worker at its own server (SSRF) nor make it send the operator's key, or any other environment variable, anywhere.
The API checks the profile at submission (422 listing the known names); the worker resolves it again when it
builds the judge (the configuration may have changed since).
"""

from __future__ import annotations

from dataclasses import dataclass

from api.errors import ProblemError
from api.schemas import JudgeIn
from api.settings import JudgeProfile, Settings


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


def check_judge_profile(settings: Settings, judge: JudgeIn) -> None:
    """Submission-time check (no network): an `openai` judge names a configured profile and an allowed model;
    a 422 problem otherwise, listing what is allowed."""
    if judge.provider != "openai":
        return
    try:
        resolve_judge_profile(settings, judge)
    except JudgeProfileError as exc:
        loc: list[str | int] = ["body", "judge", exc.field]
        field = f"judge.{exc.field}"
        raise ProblemError(422, f"invalid {field}: {exc}", slug="validation-error", title="Request validation failed",
                           errors=[{"loc": loc, "field": field, "kind": "unknown_judge_profile"
                                    if exc.field == "profile" else "model_not_allowed", "message": str(exc)}]) from None
