"""Stage glue that needs no model: which stages a variant runs, id-derived paths, secrets by name only."""

from __future__ import annotations

import pytest

from core import registry
from core.db.states import Stage, next_stage
from core.jobspec import RealignRequest
from core.settings import JudgeProfile, Settings
from worker import context, inputs, judging

from .conftest import synthetic_body


def request_for(variant: str, suites: list[str] | None = None) -> RealignRequest:
    return RealignRequest.model_validate(synthetic_body(method={"variant": variant}, eval={"suites": suites or []}))


def chain(request: RealignRequest) -> list[str]:
    out, stage = [Stage.VALIDATE.value], Stage.VALIDATE
    while (stage := next_stage(request, stage)) is not None:  # type: ignore[assignment]
        out.append(stage.value)
    return out


def test_stage_chains_follow_the_variant() -> None:
    assert chain(request_for("trace", ["tpa"])) == ["validate", "triage", "score", "train", "evaluate"]
    assert chain(request_for("no_impact")) == ["validate", "triage", "train"]
    assert chain(request_for("dpo")) == ["validate", "train"]  # original pairs: no triage, no scores
    assert chain(request_for("no_triage", ["tpa"])) == ["validate", "train", "evaluate"]


def test_job_dir_is_derived_from_well_formed_ids_only(tmp_path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert registry.job_folder(settings, "job_0123456789abcdef0123") == tmp_path / "jobs" / "job_0123456789abcdef0123"
    for bad in ("../etc", "job_../../x", "job_ABC", "", "job_0123456789ab/.."):
        with pytest.raises(ValueError):
            registry.job_folder(settings, bad)


def test_openai_judge_key_comes_from_the_profiles_variable(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    body = synthetic_body(judge={"provider": "openai", "profile": "main", "model": "gpt-x"})
    request = RealignRequest.model_validate(body)
    settings = Settings(data_dir=tmp_path, judge_profiles={"main": JudgeProfile(api_key_env="MY_JUDGE_KEY")})
    monkeypatch.delenv("MY_JUDGE_KEY", raising=False)
    with pytest.raises(context.StageFailed, match="MY_JUDGE_KEY"):  # default OpenAI URL needs a key
        judging.build_judge(request, settings)
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-test-123")
    judge, oracle = judging.build_judge(request, settings)
    assert judge.judge_id and oracle is False
    assert "sk-test-123" not in request.model_dump_json()
    with pytest.raises(context.StageFailed, match="unknown judge profile 'main'; known profiles: none"):
        judging.build_judge(request, Settings(data_dir=tmp_path))  # the operator removed the profile since


def test_local_models_must_live_under_the_model_root(tmp_path) -> None:
    request = RealignRequest.model_validate(synthetic_body(base_model={"name_or_path": "/etc"}))
    with pytest.raises(context.StageFailed, match="model root"):
        inputs.resolve_base_model(request, Settings(data_dir=tmp_path))


def test_synthetic_evaluation_holds_out_prompts_the_job_did_not_train_on() -> None:
    from trace_engine.data.pairs import prompt_key
    from trace_engine.synthetic.world import make_world
    from worker.gpu_stages import held_out_synthetic_rows

    world = make_world(0)
    train = [p.to_row() for p in world.train_pairs(200)]
    held = held_out_synthetic_rows(world, train, 30)
    trained = {prompt_key(r["prompt"]) for r in train}
    assert len(held) == 30
    assert not {prompt_key(h["prompt"]) for h in held} & trained
    assert len({prompt_key(h["prompt"]) for h in held}) == 30
    assert {h["category"] for h in held} <= {"INVERT", "PUNISH", "RETAIN"} and len({h["category"] for h in held}) == 3


def test_hyperparameters_reach_the_train_config(tmp_path) -> None:
    body = synthetic_body()
    body["method"] = {"variant": "trace", "hyperparameters": {"kl_responses": "both", "gradient_checkpointing": True,
                                                              "group_by_length": True, "beta": 0.5}}
    config = inputs.hyper_to_train_config(RealignRequest.model_validate(body), Settings(data_dir=tmp_path))
    assert (config.kl_responses, config.gradient_checkpointing, config.group_by_length, config.beta) == (
        "both", True, True, 0.5)
    assert config.fused_kernels == "auto"
    eager = inputs.hyper_to_train_config(RealignRequest.model_validate(body), Settings(data_dir=tmp_path,
                                                                                      fused_kernels="off"))
    assert eager.fused_kernels == "off"
    default = inputs.hyper_to_train_config(RealignRequest.model_validate(synthetic_body()), Settings(data_dir=tmp_path))
    assert (default.kl_responses, default.gradient_checkpointing, default.group_by_length) == ("preferred", False, False)
