"""The `gpu` queue's stages of a realign job (one job per GPU): score (impact weights and the reference
log-prob cache), train (one LoRA, resumable), evaluate (the requested suites before and after, through the
serving backend when it runs the job's base model, else in this worker)."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from core.jobspec import SYNTHETIC_BASE_NAMES
from core.registry import EVAL_PROMPTS_FILE, HELD_OUT_FILE
from core.sanitise import scrub_server_paths
from trace_engine.data.io import read_jsonl, write_json, write_jsonl
from trace_engine.data.pairs import prompt_key
from trace_engine.reference_cache import REFERENCE_CACHE, load_reference_cache, save_reference_cache
from worker.context import EvalProgress, StageContext, StageFailed, StageResult, job_relative
from worker.inputs import (
    HELD_OUT_MAX_SHARE,
    hyper_to_train_config,
    is_synthetic_base,
    resolve_base_model,
    snapshot_pairs,
    synthetic_world_seed,
    training_rows,
)
from worker.judging import build_judge, judge_warning

MAX_LISTED_PROMPT_IDS = 200  # the report lists at most this many prompt ids (all are in eval/prompts.jsonl)


def run_score(ctx: StageContext) -> StageResult:
    """Impact weights of the conflicting rows and the reference log-prob cache training reuses."""
    from trace_engine.scoring import WeightShaping, score

    rows = training_rows(ctx)
    source = resolve_base_model(ctx.request, ctx.settings, check_hub=False)
    config = hyper_to_train_config(ctx.request, ctx.settings)
    ctx.tick(0, 1)  # then (batches scored, batches) while scoring
    hyper = ctx.request.method.hyperparameters
    gold = hyper.gold_size or max(3, min(48, len(rows) // 4))
    scored = score(Path(source.name_or_path), rows, ctx.request.method.variant, config,
                   normalise=hyper.normalise, gold_size=gold, seed=config.seed, gold_from=hyper.gold_from,
                   shaping=WeightShaping(cap=hyper.weight_cap, uniform_mix=hyper.uniform_mix,
                                         gate=hyper.gate_weights, check_anchors=hyper.check_anchors),
                   device=ctx.settings.train_device, progress=ctx.tick)  # tick raises on cancel
    save_reference_cache(ctx.dir / "score" / REFERENCE_CACHE, scored.reference_logps,
                         {"base_model": source.name_or_path, "max_prompt_len": config.max_prompt_len,
                          "max_len": config.max_len})
    write_json(ctx.dir / "score" / "summary.json", scored.summary)
    write_jsonl(ctx.dir / "score" / "scored.jsonl", scored.rows)  # last: its presence means "scored"
    return StageResult(summary={"rows": len(scored.rows)}, metrics={"score": _jsonable({k: v for k, v in scored.summary.items() if k != "top"})},
                       artifacts={"scored": "score/scored.jsonl"})


def run_train(ctx: StageContext) -> StageResult:
    """One LoRA with the request's variant; resumes from the last checkpoint in `train/`."""
    from trace_engine.train import train

    rows = training_rows(ctx)
    source = resolve_base_model(ctx.request, ctx.settings, check_hub=False)
    config = hyper_to_train_config(ctx.request, ctx.settings)
    ref_path = ctx.dir / "score" / REFERENCE_CACHE
    reference = load_reference_cache(ref_path)[0] if ref_path.is_file() else None

    def on_step(step: int, total: int, metrics: dict[str, float]) -> None:
        ctx.tick(step, total)

    result = train(rows, config, base=source, output_dir=ctx.dir / "train", reference_logps=reference,
                   progress=on_step, resume=True, device=ctx.settings.train_device)
    return StageResult(summary={"steps": result.steps}, metrics={"train": _jsonable(result.final_metrics),
                                                                   "train_steps": result.steps},
                       artifacts={"adapter": job_relative(ctx, result.output_dir),
                                  "train_metrics": job_relative(ctx, result.metrics_path)})


def run_evaluate(ctx: StageContext) -> StageResult:
    """The requested suites on the trained adapter. The synthetic world brings its own held-out sets (and the
    base model is evaluated too, for before/after); other datasets get TPA on their prompts only."""
    adapter = ctx.dir / "train" / "adapter"
    if not adapter.is_dir():
        raise StageFailed("no trained adapter found (did training run?)", kind="missing_input")
    source = resolve_base_model(ctx.request, ctx.settings, check_hub=False)
    if ctx.request.judge.provider == "synthetic" and is_synthetic_base(ctx.request):
        report = _evaluate_synthetic(ctx, Path(source.name_or_path), adapter)
    else:
        report = _evaluate_generic(ctx, source, adapter)
    warning = judge_warning(ctx.request.judge.provider, [ctx.request.base_model.name_or_path])
    if warning is not None and report.get("summary"):
        ctx.warn(warning)
        report["summary"]["judge_warning"] = report["judge_warning"] = warning
    report = scrub_server_paths(report, ctx.settings)  # tenants read it (GET /v1/evals, the adapter's report)
    write_json(ctx.dir / "eval" / "report.json", report)
    artifacts = {"eval_report": "eval/report.json"}
    if (ctx.dir / EVAL_PROMPTS_FILE).is_file():
        artifacts["eval_prompts"] = EVAL_PROMPTS_FILE
    return StageResult(summary={"suites": list(ctx.request.eval.suites)}, metrics={"eval": report.get("summary",
                                                                                                     report)},
                       artifacts=artifacts)


def held_out_synthetic_rows(world: Any, train_rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """`n` prompts of the world's training distribution that the job did NOT train on (prompt-disjoint), each
    labelled with its expected category under the new policy: the service's analogue of the demo's test split."""
    seen = {prompt_key(r["prompt"]) for r in train_rows}
    held: list[dict[str, Any]] = []
    for pair in world.train_pairs(len(train_rows) + 8 * n):
        key = prompt_key(pair.prompt)
        if key in seen:
            continue
        seen.add(key)
        held.append({"id": pair.id, "prompt": pair.prompt, "category": pair.extra["expected_category"]})
        if len(held) == n:
            break
    return held


def _evaluate_synthetic(ctx: StageContext, base_path: Path, adapter: Path) -> dict[str, Any]:
    from trace_engine.evaluation.report import side_by_side
    from trace_engine.synthetic.evaluation import (
        SyntheticEvalConfig,
        eval_sets,
        evaluate_backend_units,
        evaluate_model_dir,
        summary_json,
    )
    from trace_engine.synthetic.world import make_world

    world = make_world(synthetic_world_seed(ctx.request))
    cfg = SyntheticEvalConfig(n_test=ctx.settings.eval_size, n_retention=max(10, ctx.settings.eval_size // 2),
                         n_asr=max(2, ctx.settings.eval_size // 10), n_over_refusal=max(5, ctx.settings.eval_size // 4),
                         resamples=1000, max_new_tokens=48)
    held_out = held_out_synthetic_rows(world, training_rows(ctx), cfg.n_test)
    write_jsonl(ctx.dir / EVAL_PROMPTS_FILE, [{**row, "source": "synthetic_held_out"} for row in held_out])
    sets = eval_sets(world, cfg, held_out)  # TPA on held_out; "OOD" = the world's unseen templates
    progress = EvalProgress(ctx, 2 * evaluate_backend_units(sets))
    if serves_job_base(ctx, str(base_path)):  # generation through the serving backend, as eval jobs and clients do
        before = _evaluate_served(ctx, None, world, sets, cfg, progress)
        after = _evaluate_served(ctx, adapter, world, sets, cfg, progress)
    else:
        device = ctx.settings.train_device
        before = evaluate_model_dir(base_path, None, world, sets, cfg, device, progress=progress)
        after = evaluate_model_dir(base_path, adapter, world, sets, cfg, device, progress=progress)
    progress.finish()
    summary = summary_json(before, after, wall_s=0.0, variant=ctx.request.method.variant, eval_on="test")
    summary.pop("wall_s", None)
    summary["samples"] = side_by_side({"before": before["examples"], "after": after["examples"]})
    return {"summary": summary, "before": before, "after": after}


def serves_job_base(ctx: StageContext, base_dir: str) -> bool:
    """Whether the configured serving backend runs this job's base model (then evaluation generates there, as
    clients do). Embedded mode's backend serves the synthetic base; a job on another model is evaluated in-process
    instead of on the wrong model."""
    settings = ctx.settings
    if not settings.serving_api_url:
        return False
    requested, served = ctx.request.base_model.name_or_path, settings.serving_base_model
    if requested == served or (requested in SYNTHETIC_BASE_NAMES and served in SYNTHETIC_BASE_NAMES):
        return True
    folder = settings.serving_base_model_path or settings.models_root / served
    try:
        same = Path(base_dir).resolve() == Path(folder).resolve()
    except (OSError, TypeError):
        same = False
    if not same:
        ctx.warn(f"evaluated in this worker: the serving backend runs {served!r}, not this job's base model")
    return same


def _served_backend(ctx: StageContext, adapter: Path | None) -> Any:
    """The serving backend (vLLM in production, the local backend in embedded mode) for the base model or the
    job's adapter, loaded there under a job-scoped name and unloaded afterwards; the name carries the weights'
    hash, so a retried job's new weights never reuse a name (vLLM keys its caches by name)."""
    from core.registry import adapter_weights_sha256, serving_adapter_dir
    from worker.http_generation import serving_backend

    loaded = None
    if adapter is not None:
        relative = adapter.relative_to(ctx.settings.data_dir).as_posix()
        loaded = (f"eval-{ctx.job_id}-{adapter_weights_sha256(adapter)[:12]}",
                  serving_adapter_dir(ctx.settings, relative))
    return serving_backend(ctx.settings, loaded)


def _evaluate_served(ctx: StageContext, adapter: Path | None, world: Any, sets: Any, cfg: Any,
                     progress: EvalProgress | None = None) -> dict[str, Any]:
    """The synthetic suites with generation by the serving backend."""
    from trace_engine.synthetic.evaluation import evaluate_backend

    with _served_backend(ctx, adapter) as backend:
        return evaluate_backend(backend, world, sets, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,  # type: ignore[arg-type]
                                resamples=cfg.resamples, progress=progress)


def own_eval_prompts(ctx: StageContext) -> tuple[list[Any], str]:
    """(prompts, source): the prompts held out of training at validation ("held_out"), or, for a job without
    any (too few distinct prompts, or validated before held-out sets existed), the dataset's first distinct
    prompts ("training_data")."""
    from trace_engine.evaluation.prompts import EvalPrompt

    held = ctx.dir / HELD_OUT_FILE
    rows = list(read_jsonl(held)) if held.is_file() else []
    if rows:
        return [EvalPrompt(str(r["id"]), r["prompt"], "all") for r in rows], "held_out"
    seen: set[str] = set()
    prompts = []
    for pair in snapshot_pairs(ctx):
        key = prompt_key(pair.prompt)
        if key not in seen and len(prompts) < ctx.settings.eval_size:
            seen.add(key)
            prompts.append(EvalPrompt(pair.id, pair.prompt, "all"))
    return prompts, "training_data"


def _evaluate_generic(ctx: StageContext, source: Any, adapter: Path) -> dict[str, Any]:
    """TPA of the base model (before) and of the adapter (after) on the same prompts of the job's own data:
    the prompts held out of training when there are any. The prompts used are in eval/prompts.jsonl and their
    ids in the report."""
    from trace_engine.evaluation.generation import LocalBackend
    from trace_engine.evaluation.report import side_by_side
    from trace_engine.evaluation.runner import EvalData, EvalSettings, eval_units, run_eval

    suites = [s for s in ctx.request.eval.suites if s == "tpa"]
    for skipped in sorted(set(ctx.request.eval.suites) - set(suites)):
        ctx.warn(f"eval suite {skipped!r} needs its own data set, which this job does not have; skipped")
    if not suites:
        return {"summary": {}, "skipped": list(ctx.request.eval.suites)}
    prompts, origin = own_eval_prompts(ctx)
    if origin == "training_data":
        ctx.warn("TPA was measured on prompts the adapter was trained on (the dataset has too few distinct "
                 f"prompts to hold {HELD_OUT_MAX_SHARE}:1 out); before and after use the same prompts")
    write_jsonl(ctx.dir / EVAL_PROMPTS_FILE, [{"id": p.id, "prompt": p.prompt, "source": origin} for p in prompts])
    judge, _ = build_judge(ctx.request, ctx.settings)
    results: dict[str, dict[str, Any]] = {}
    records: dict[str, list[dict[str, Any]]] = {}
    data, settings = EvalData(tpa_prompts=prompts), EvalSettings(resamples=1000)
    progress = EvalProgress(ctx, 2 * eval_units(suites, data, settings))
    served = serves_job_base(ctx, source.name_or_path)  # then generate there, as eval jobs and clients do
    for label, adapter_dir in (("before", None), ("after", adapter)):
        backend = _served_backend(ctx, adapter_dir) if served else nullcontext(LocalBackend.from_pretrained(
            source.name_or_path, revision=source.revision, adapter_dir=adapter_dir, device=ctx.settings.train_device))
        with backend as generator:
            report = run_eval(generator, tuple(suites), judge, data, policy=ctx.request.policy.to_policy(),
                              settings=settings, progress=progress)
        del backend, generator  # the local model is released before the next one loads
        results[label] = report.suites["tpa"].metrics["overall"].to_dict()
        records[label] = report.suites["tpa"].records
    progress.finish()
    before, after = results["before"], results["after"]
    ids = [p.id for p in prompts]
    used = {"source": origin, "n": len(prompts), "ids": ids[:MAX_LISTED_PROMPT_IDS],
            "ids_truncated": len(ids) > MAX_LISTED_PROMPT_IDS, "artifact": "eval_prompts"}
    summary = {"tpa_before": before["value"], "tpa_before_ci": [before["ci_low"], before["ci_high"]],
               "tpa_after": after["value"], "tpa_after_ci": [after["ci_low"], after["ci_high"]],
               "tpa_delta": None if before["value"] is None or after["value"] is None
               else after["value"] - before["value"],
               "eval_prompts": used, "samples": side_by_side(records)}
    return {"summary": summary, "tpa_before": before, "tpa": after, "eval_prompts": used}


def _jsonable(value: Any) -> Any:
    """Round-trip through JSON (drops numpy/tensor types by stringifying them) for the JSON columns."""
    return json.loads(json.dumps(value, default=str))
