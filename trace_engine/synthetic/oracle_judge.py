"""The synthetic world's judge: NEW-policy rules verdicts, oracle rewrites. Used by the offline run and by the
service when a job names the synthetic judge."""

from __future__ import annotations

from trace_engine.data.pairs import Prompt
from trace_engine.judge.base import JudgeOutcome, Usage
from trace_engine.judge.rules import RulesJudge
from trace_engine.policy import Policy
from trace_engine.synthetic.world import World, oracle_response


class SyntheticOracleJudge:
    """The NEW-policy rules judge for verdicts; rewrites (y_c for PUNISH) come from the world's oracle."""

    def __init__(self, world: World) -> None:
        self.rules_judge = RulesJudge(world.rules("new"), "<synthetic rules_new>")
        self.judge_id = f"{self.rules_judge.judge_id}+synthetic-oracle"
        self.template_version = self.rules_judge.template_version
        self.rewrite_template_version = "synthetic-oracle-v1"

    async def judge(self, policy: Policy, prompt: Prompt, response: str) -> JudgeOutcome:
        return await self.rules_judge.judge(policy, prompt, response)

    async def rewrite(self, policy: Policy, prompt: Prompt, violating_response: str) -> JudgeOutcome:
        return JudgeOutcome(text=oracle_response(prompt), usage=Usage())

    async def aclose(self) -> None:
        return None
