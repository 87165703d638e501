"""Build a judge from a spec string: `rules:PATH` or `openai:MODEL`."""

from __future__ import annotations

from typing import Any

from trace_engine.judge.base import Judge
from trace_engine.judge.openai_judge import OpenAIJudge
from trace_engine.judge.rules import RulesJudge

SPEC_HELP = "judge spec: 'rules:PATH' (offline clause file) or 'openai:MODEL' (any OpenAI-compatible endpoint)"


def make_judge(
    spec: str,
    *,
    base_url: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    **openai_options: Any,
) -> Judge:
    """A judge for `spec`; `openai_options` go to `OpenAIJudge` (timeout, max_retries, ...), ignored for rules."""
    kind, sep, arg = spec.partition(":")
    kind, arg = kind.strip().lower(), arg.strip()
    if not sep or not arg:
        raise ValueError(f"bad {SPEC_HELP}; got {spec!r}")
    if kind == "rules":
        if base_url is not None:
            raise ValueError("the rules judge takes no base_url (it makes no network calls)")
        return RulesJudge.from_file(arg)
    if kind == "openai":
        return OpenAIJudge(arg, base_url=base_url, api_key_env=api_key_env, **openai_options)
    raise ValueError(f"unknown judge kind {kind!r}; {SPEC_HELP}")
