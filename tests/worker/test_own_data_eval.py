"""A job on the user's own data (not the synthetic world) that asks for TPA: prompts are held out of training at
validation, and the evaluation reports TPA before (base model) and after (adapter) on those same prompts, saying
which they were (ids in the report, the prompts in eval/prompts.jsonl)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from core import registry
from core.jobspec import RealignRequest
from core.settings import Settings
from tests.trace_engine.serving.tiny_adapters import TinyWorld, tiny_world
from trace_engine.data.pairs import prompt_key
from worker import context, gpu_stages, inputs, judge_stages

from .conftest import synthetic_body

JOB_ID = "job_00112233445566778899"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyWorld:
    return tiny_world(tmp_path_factory.mktemp("own-data-tiny"))


def own_data_job(tmp_path: Path, tiny: TinyWorld, pairs: int) -> context.StageContext:
    settings = Settings(data_dir=tmp_path / "state", eval_size=3)
    shutil.copytree(tiny.base, settings.models_root / "tiny")
    settings.datasets_root.mkdir(parents=True)
    rows = [{"id": f"pair-{i}", "prompt": f"How do I reset password number {i}?", "chosen": "Open settings.",
             "rejected": "I cannot help."} for i in range(pairs)]
    (settings.datasets_root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    body = synthetic_body(dataset={"type": "path", "path": "pairs.jsonl"}, base_model={"name_or_path": "tiny"},
                          eval={"suites": ["tpa"]}, method={"variant": "no_impact"})
    request = RealignRequest.model_validate(body)
    return context.StageContext(job_id=JOB_ID, tenant_id="t", request=request, settings=settings,
                               tick=lambda done, total: None)


def test_tpa_before_and_after_on_the_same_held_out_prompts(tmp_path: Path, tiny: TinyWorld) -> None:
    ctx = own_data_job(tmp_path, tiny, pairs=20)
    validated = judge_stages.run_validate(ctx)
    assert validated.summary["held_out_prompts"] == 3  # eval_size, and at most 1 in 5 of the 20 prompts
    held = [json.loads(line) for line in (ctx.dir / registry.HELD_OUT_FILE).read_text().splitlines()]
    held_keys = {prompt_key(h["prompt"]) for h in held}
    train_rows = inputs.training_rows(ctx)
    assert len(train_rows) == 17 and not {prompt_key(r["prompt"]) for r in train_rows} & held_keys
    shutil.copytree(tiny.adapter_a, ctx.dir / "train" / "adapter")  # what the train stage leaves

    result = gpu_stages.run_evaluate(ctx)
    summary = result.metrics["eval"]
    for side in ("before", "after"):
        assert 0 <= summary[f"tpa_{side}"] <= 1
        low, high = summary[f"tpa_{side}_ci"]
        assert low <= summary[f"tpa_{side}"] <= high
    used = summary["eval_prompts"]
    assert used["source"] == "held_out" and used["n"] == 3 and used["ids"] == [h["id"] for h in held]
    assert result.artifacts["eval_prompts"] == registry.EVAL_PROMPTS_FILE
    listed = [json.loads(line) for line in (ctx.dir / registry.EVAL_PROMPTS_FILE).read_text().splitlines()]
    assert [(p["id"], p["prompt"]) for p in listed] == [(h["id"], h["prompt"]) for h in held]
    report = json.loads((ctx.dir / "eval" / "report.json").read_text())
    assert report["tpa_before"]["n"] == report["tpa"]["n"] == 3


def test_too_few_prompts_to_hold_out_fall_back_to_training_prompts_and_say_so(tmp_path: Path,
                                                                               tiny: TinyWorld) -> None:
    ctx = own_data_job(tmp_path, tiny, pairs=4)
    warnings: list[str] = []
    ctx.warn = warnings.append
    assert "held_out_prompts" not in judge_stages.run_validate(ctx).summary
    assert len(inputs.training_rows(ctx)) == 4
    shutil.copytree(tiny.adapter_a, ctx.dir / "train" / "adapter")
    summary = gpu_stages.run_evaluate(ctx).metrics["eval"]
    assert summary["eval_prompts"]["source"] == "training_data" and summary["eval_prompts"]["n"] == 3
    assert "tpa_before" in summary and "tpa_after" in summary
    assert any("trained on" in w for w in warnings)
