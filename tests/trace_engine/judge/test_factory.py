"""make_judge spec parsing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from trace_engine.judge.factory import make_judge
from trace_engine.judge.openai_judge import OpenAIJudge
from trace_engine.judge.rules import RulesJudge


def test_rules_spec(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"version": 1, "clauses": [{"id": "C1", "violating_if_response": "x"}]}))
    judge = make_judge(f"rules:{path}", timeout=5)
    assert isinstance(judge, RulesJudge)
    with pytest.raises(ValueError, match="no base_url"):
        make_judge(f"rules:{path}", base_url="http://x/v1")


def test_openai_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEY", "k")
    judge = make_judge("openai:gpt-4o-mini", base_url="http://127.0.0.1:9/v1", api_key_env="MY_KEY", max_retries=1)
    assert isinstance(judge, OpenAIJudge)
    assert judge.judge_id.startswith("openai:gpt-4o-mini@") and judge.backoff.max_retries == 1
    asyncio.run(judge.aclose())


@pytest.mark.parametrize("spec", ["gpt-4o", "openai:", "anthropic:claude", "rules"])
def test_bad_specs(spec: str) -> None:
    with pytest.raises(ValueError):
        make_judge(spec)
