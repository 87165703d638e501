"""The offline synthetic policy-shift world (issue 4): prompts, old/new policies and rules, old-labelled pairs,
evaluation sets, an oracle, and a tiny base model that follows the old policy."""

from trace_engine.synthetic.world import (
    EvalPrompt,
    RetentionProbe,
    TestPrompt,
    World,
    make_world,
    oracle_response,
    write_synthetic_dataset,
)

__all__ = [
    "EvalPrompt", "RetentionProbe", "TestPrompt", "World", "make_world", "oracle_response", "write_synthetic_dataset",
]
