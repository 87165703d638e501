"""Evaluations people can read (issue 17): the evaluating stage's progress moves per prompt generated and
judged, every report shows before and after answers to the same prompts side by side, and a judge that matches
fixed phrases (rules, synthetic) grading a real model's free text is flagged in the report, the metrics and the
job's events."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from core import registry
from core.jobspec import RealignRequest
from core.settings import Settings
from tests.trace_engine.serving.tiny_adapters import TinyWorld, tiny_world
from trace_engine.evaluation.report import SAMPLE_CHARS, side_by_side
from worker import gpu_stages, inputs, judge_stages, judging
from worker.context import StageContext

from .conftest import synthetic_body

JOB_ID = "job_00aa11bb22cc33dd44ee"
RULES = {"version": 1, "clauses": [{"id": "P1", "description": "No insults", "violating_if_response": ["idiot"]}]}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyWorld:
    return tiny_world(tmp_path_factory.mktemp("readable-tiny"))


def context(settings: Settings, body: dict[str, Any], ticks: list[tuple[int, int | None]],
            warnings: list[str]) -> StageContext:
    return StageContext(job_id=JOB_ID, tenant_id="t", request=RealignRequest.model_validate(body),
                               settings=settings, tick=lambda done, total: ticks.append((done, total)),
                               warn=warnings.append)


def own_data_job(tmp_path: Path, tiny: TinyWorld, judge: dict[str, Any], ticks: list, warnings: list
                 ) -> StageContext:
    settings = Settings(data_dir=tmp_path / "state", eval_size=4, train_device="cpu")
    shutil.copytree(tiny.base, settings.models_root / "tiny")
    settings.datasets_root.mkdir(parents=True)
    rows = [{"id": f"pair-{i}", "prompt": f"How do I reset password number {i}?", "chosen": "Open settings.",
             "rejected": "I cannot help."} for i in range(20)]
    (settings.datasets_root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (settings.datasets_root / "rules.json").write_text(json.dumps(RULES))
    body = synthetic_body(dataset={"type": "path", "path": "pairs.jsonl"}, base_model={"name_or_path": "tiny"},
                          eval={"suites": ["tpa"]}, method={"variant": "no_impact"}, judge=judge)
    ctx = context(settings, body, ticks, warnings)
    judge_stages.run_validate(ctx)
    shutil.copytree(tiny.adapter_a, ctx.dir / "train" / "adapter")  # what the train stage leaves
    ticks.clear()
    return ctx


def evaluating_values(ticks: list[tuple[int, int | None]]) -> set[int]:
    totals = {total for _, total in ticks}
    assert len(totals) == 1, f"one total for the whole stage, got {totals}"
    assert ticks[-1][0] == ticks[-1][1]  # ends at done == total
    assert [done for done, _ in ticks] == sorted(done for done, _ in ticks)  # never backwards
    return {done for done, _ in ticks}


def test_own_data_evaluation_ticks_per_prompt_shows_samples_and_flags_a_rules_judge(tmp_path: Path,
                                                                                      tiny: TinyWorld) -> None:
    ticks: list[tuple[int, int | None]] = []
    warnings: list[str] = []
    ctx = own_data_job(tmp_path, tiny, {"provider": "rules", "rules_path": "rules.json"}, ticks, warnings)
    result = gpu_stages.run_evaluate(ctx)

    # 4 held-out prompts x (generated + judged) x (before + after): 16 units, ticked as they finish
    values = evaluating_values(ticks)
    assert ticks[-1] == (16, 16) and len(values) > 2, ticks
    summary = result.metrics["eval"]
    samples = summary["samples"]
    held = [json.loads(line)["id"] for line in (ctx.dir / registry.EVAL_PROMPTS_FILE).read_text().splitlines()]
    assert [s["id"] for s in samples] == held  # the same prompts, before and after, side by side
    for sample in samples:
        assert sample["prompt"].startswith("How do I reset password")
        assert set(sample["answers"]) == set(sample["verdicts"]) == {"before", "after"}
        assert all(v in ("compliant", "violating", "unjudged") for v in sample["verdicts"].values())
        assert all(len(text) <= SAMPLE_CHARS for text in sample["answers"].values())
    assert "'rules'" in summary["judge_warning"] and "'tiny'" in summary["judge_warning"]
    report = json.loads((ctx.dir / "eval" / "report.json").read_text())
    assert report["judge_warning"] == summary["judge_warning"] and report["summary"]["samples"] == samples
    assert summary["judge_warning"] in warnings  # and a job event


def test_synthetic_judge_on_a_real_model_is_flagged_too(tmp_path: Path, tiny: TinyWorld) -> None:
    warnings: list[str] = []
    ctx = own_data_job(tmp_path, tiny, {"provider": "synthetic"}, [], warnings)
    summary = gpu_stages.run_evaluate(ctx).metrics["eval"]
    assert "'synthetic'" in summary["judge_warning"] and summary["judge_warning"] in warnings


def test_synthetic_world_evaluation_ticks_per_prompt_shows_samples_and_no_judge_warning(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "state", eval_size=10, train_device="cpu")
    ticks: list[tuple[int, int | None]] = []
    warnings: list[str] = []
    body = synthetic_body(eval={"suites": ["tpa"]}, method={"variant": "no_impact"})
    ctx = context(settings, body, ticks, warnings)
    judge_stages.run_validate(ctx)
    base = inputs.resolve_base_model(ctx.request, settings)
    (ctx.dir / "train").mkdir(parents=True)
    # an untrained LoRA is enough here: what is checked is the report's shape and the progress
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base.name_or_path),
                           LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
    model.save_pretrained(ctx.dir / "train" / "adapter")
    del model
    ticks.clear()

    result = gpu_stages.run_evaluate(ctx)
    assert len(evaluating_values(ticks)) > 2, ticks
    summary = result.metrics["eval"]
    assert "judge_warning" not in summary and not any("cannot judge" in w for w in warnings)
    assert summary["samples"] and all(set(s["answers"]) == {"before", "after"} for s in summary["samples"])


def test_judge_warning_names_what_was_used_only_where_it_misleads() -> None:
    assert judging.judge_warning("synthetic", ["synthetic-tiny"]) is None
    assert judging.judge_warning("rules", ["synthetic"]) is None
    assert judging.judge_warning("openai", ["HuggingFaceTB/SmolLM2-135M-Instruct"]) is None
    warning = judging.judge_warning("rules", ["synthetic-tiny", "smollm2"])
    assert warning is not None and "'rules'" in warning and "'smollm2'" in warning and "synthetic-tiny" not in warning


def test_side_by_side_pairs_answers_by_prompt_and_cuts_long_texts() -> None:
    long = "x" * (SAMPLE_CHARS + 50)
    before = [{"id": "a", "prompt": "p1", "response": long, "violating": True},
              {"id": "b", "prompt": "p2", "response": "no", "violating": None}]
    after = [{"id": "b", "prompt": "p2", "response": "yes", "violating": False},
             {"id": "a", "prompt": "p1", "response": "fine", "violating": False}]
    samples = side_by_side({"before": before, "after": after}, n=8)
    assert [s["id"] for s in samples] == ["a", "b"]
    assert len(samples[0]["answers"]["before"]) == SAMPLE_CHARS and samples[0]["answers"]["after"] == "fine"
    assert samples[0]["verdicts"] == {"before": "violating", "after": "compliant"}
    assert samples[1]["verdicts"] == {"before": "unjudged", "after": "compliant"}
    assert len(side_by_side({"before": before, "after": after}, n=1)) == 1
