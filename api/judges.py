"""The submission-time judge-profile check, as an HTTP problem (profiles and how they resolve: `core.judges`)."""

from __future__ import annotations

import logging

from api.errors import ProblemError
from core.jobspec import JudgeIn
from core.judges import JudgeProfileError, missing_judge_key, resolve_judge_profile
from core.settings import Settings

log = logging.getLogger("realign.api")


def check_judge_profile(settings: Settings, judge: JudgeIn) -> None:
    """Submission-time check (no network): an `openai` judge names a configured profile and an allowed model, and
    the profile's key is set in this server's environment (a job would otherwise fail seconds after a 202); a 422
    problem otherwise, listing what is allowed. The variable's name is logged for the operator, never returned."""
    if judge.provider != "openai":
        return
    try:
        resolved = resolve_judge_profile(settings, judge)
    except JudgeProfileError as exc:
        raise _judge_problem(exc.field, str(exc), "unknown_judge_profile" if exc.field == "profile"
                             else "model_not_allowed") from None
    variable = missing_judge_key(resolved.profile)
    if variable is not None:
        log.warning("refused a job: judge profile %r reads its API key from %s, which is not set in the server's "
                    "environment", resolved.profile_name, variable)
        raise _judge_problem("profile", f"judge profile {resolved.profile_name!r} has no API key on this server "
                             "(the operator has not set the key it needs), so its judge calls would fail; ask the "
                             "operator to set it, or use another profile", "judge_key_missing")


def _judge_problem(name: str, message: str, kind: str) -> ProblemError:
    field = f"judge.{name}"
    return ProblemError(422, f"invalid {field}: {message}", slug="validation-error", title="Request validation failed",
                        errors=[{"loc": ["body", "judge", name], "field": field, "kind": kind, "message": message}])
