"""Evaluation jobs (`kind = eval`): validate (target resolvable, weights intact, judge answering), then evaluate
the target, and with `compare` also the base model and the target's parent adapter, on the same prompts.

Generation: through the serving backend when one is configured (`serving_url`: vLLM in production, the local
server in embedded mode) via `HttpGenerationBackend`, so evaluation exercises the path clients use; otherwise
in-process with `LocalBackend`. The `capability` suite needs log-likelihoods and bundled benchmark data, which
these jobs do not have yet: it is skipped with a warning.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from core.db.states import Stage
from core.jobspec import BaseModelIn, EvalRequest, SyntheticDataset
from core.registry import adapter_weights_sha256, local_adapter_dir, serving_adapter_dir
from core.sanitise import scrub_server_paths
from trace_engine.data.io import write_json
from worker.context import EvalProgress, StageContext, StageFailed, StageResult
from worker.inputs import load_dataset, resolve_base_model
from worker.judging import build_judge, judge_warning, probe_judge

JUDGED = ("tpa", "asr")


@dataclass(frozen=True)
class ModelUnderTest:
    label: str  # target | base | parent
    base_model: str  # name_or_path
    base_revision: str | None
    adapter_id: str | None = None
    adapter_path: str | None = None  # registry-relative
    adapter_sha256: str | None = None


def _request(ctx: StageContext) -> EvalRequest:
    assert isinstance(ctx.request, EvalRequest)
    return ctx.request


def _adapter_model(label: str, record: dict[str, Any]) -> ModelUnderTest:
    base = (record.get("provenance") or {}).get("base_model") or {}
    return ModelUnderTest(label, str(base.get("name_or_path")), base.get("revision"), record["id"], record["path"],
                          record["sha256"])


def models_under_test(ctx: StageContext) -> list[ModelUnderTest]:
    """The target first; then (compare) the base model and the parent adapter when there is one."""
    request = _request(ctx)
    if ctx.lookup_adapter is None:
        raise StageFailed("no adapter registry available to this worker", kind="internal_error")
    record = ctx.lookup_adapter(request.model)
    if record is None:
        return [ModelUnderTest("target", request.model, None)]
    target = _adapter_model("target", record)
    models = [target]
    if request.compare:
        models.append(ModelUnderTest("base", target.base_model, target.base_revision))
        parent_id = (record.get("provenance") or {}).get("parent_adapter_id")
        parent = ctx.lookup_adapter(parent_id) if parent_id else None
        if parent is not None:
            models.append(_adapter_model("parent", parent))
        elif parent_id:
            ctx.warn(f"parent adapter {parent_id} is no longer registered; no comparison against it")
    return models


def _check_weights(ctx: StageContext, model: ModelUnderTest) -> None:
    if model.adapter_path is None:
        return
    folder = local_adapter_dir(ctx.settings, model.adapter_path)
    try:
        actual = adapter_weights_sha256(folder)
    except OSError as exc:
        raise StageFailed(f"adapter {model.adapter_id}: weights unreadable ({exc})", kind="adapter_invalid") from exc
    if actual != model.adapter_sha256:
        raise StageFailed(f"adapter {model.adapter_id}: weights hash {actual[:12]}... does not match the registry "
                          f"({str(model.adapter_sha256)[:12]}...)", kind="adapter_invalid")


def _base_source(ctx: StageContext, model: ModelUnderTest) -> Any:
    holder = SimpleNamespace(base_model=BaseModelIn(name_or_path=model.base_model, revision=model.base_revision))
    return resolve_base_model(holder, ctx.settings, check_hub=False)  # type: ignore[arg-type]


def run_eval_validate(ctx: StageContext) -> StageResult:
    """Fail before any generation: the model exists for this tenant, its weights are intact, the base model is
    reachable (in-process mode), the judge answers, the prompts load."""
    request = _request(ctx)
    models = models_under_test(ctx)
    ctx.tick(1, 3)
    for model in models:
        _check_weights(ctx, model)
        if not ctx.settings.serving_api_url:
            _base_source(ctx, model)
    if any(s in JUDGED for s in request.suites):
        judge, _ = build_judge(request, ctx.settings)
        probe_judge(judge, request, ctx.settings)
    ctx.tick(2, 3)
    data = eval_data(ctx)
    if not any(data.values()):
        raise StageFailed("none of the requested suites has evaluation prompts", kind="dataset_invalid")
    write_json(ctx.dir / "eval" / "models.json", [asdict(m) for m in models])
    ctx.tick(3, 3)
    return StageResult(summary={"models": [m.label for m in models]},
                       artifacts={"models": {m.label: m.adapter_id or m.base_model for m in models}})


def eval_data(ctx: StageContext) -> dict[str, list[Any]]:
    """Prompts per suite: the synthetic world's held-out sets, else the dataset's prompts for TPA."""
    from trace_engine.evaluation.prompts import EvalPrompt

    request = _request(ctx)
    n = request.n
    wanted = set(request.suites)
    data: dict[str, list[Any]] = {"tpa": [], "asr": [], "over_refusal": []}
    if isinstance(request.dataset, SyntheticDataset):
        from trace_engine.synthetic.world import make_world

        world = make_world(request.dataset.seed)
        if "tpa" in wanted:
            data["tpa"] = [EvalPrompt(t.id, t.prompt, t.category) for t in world.test_prompts(n)]
        if "asr" in wanted:
            data["asr"] = world.asr_prompts(max(2, n // 4))
        if "over_refusal" in wanted:
            data["over_refusal"] = world.over_refusal_prompts(max(2, n // 2))
    elif "tpa" in wanted:
        seen: set[str] = set()
        pairs, _ = load_dataset(ctx)
        for pair in pairs:
            key = repr(pair.prompt)
            if key not in seen and len(data["tpa"]) < n:
                seen.add(key)
                data["tpa"].append(EvalPrompt(pair.id, pair.prompt, "all"))
    return data


def _backend(ctx: StageContext, model: ModelUnderTest) -> Any:
    info = {"label": model.label, "base_model": model.base_model, "adapter_id": model.adapter_id}
    url = ctx.settings.serving_api_url
    if url:
        from worker.http_generation import serving_backend

        adapter = None
        if model.adapter_path is not None:
            adapter = (str(model.adapter_id), serving_adapter_dir(ctx.settings, model.adapter_path))
        return serving_backend(ctx.settings, adapter, info)
    from trace_engine.evaluation.generation import LocalBackend

    source = _base_source(ctx, model)
    adapter_dir: Path | None = None
    if model.adapter_path is not None:
        adapter_dir = local_adapter_dir(ctx.settings, model.adapter_path)
    return LocalBackend.from_pretrained(source.name_or_path, revision=source.revision, adapter_dir=adapter_dir,
                                        device=ctx.settings.train_device)


def run_eval_evaluate(ctx: StageContext) -> StageResult:
    from trace_engine.evaluation.report import compare_reports, side_by_side
    from trace_engine.evaluation.runner import EvalData, EvalSettings, eval_units, run_eval

    request = _request(ctx)
    models = models_under_test(ctx)
    for model in models:
        _check_weights(ctx, model)
    prompts = eval_data(ctx)
    suites = [s for s in request.suites if s != "capability" and prompts.get(s)]
    for skipped in sorted(set(request.suites) - set(suites)):
        ctx.warn(f"eval suite {skipped!r} has no data in this job (capability needs benchmark data sets); skipped")
    if not suites:
        raise StageFailed("none of the requested suites can run on this dataset", kind="dataset_invalid")
    data = EvalData(tpa_prompts=prompts["tpa"], harmful_prompts=prompts["asr"], benign_prompts=prompts["over_refusal"])
    settings = EvalSettings(max_new_tokens=request.max_new_tokens, resamples=1000)
    judged = any(s in JUDGED for s in suites)
    warning = judge_warning(request.judge.provider, [m.base_model for m in models]) if judged else None
    if warning is not None:
        ctx.warn(warning)
    reports = {}
    progress = EvalProgress(ctx, len(models) * eval_units(suites, data, settings))
    for model in models:
        judge = build_judge(request, ctx.settings)[0] if judged else None
        backend = _backend(ctx, model)
        try:
            reports[model.label] = run_eval(backend, tuple(suites), judge, data, policy=request.policy.to_policy(),
                                            settings=settings, progress=progress)
        finally:
            close: Callable[[], None] | None = getattr(backend, "close", None)
            if close is not None:
                close()
            del backend
    progress.finish()
    comparison = {f"vs_{label}": [d.to_dict() for d in compare_reports(reports[label], reports["target"])]
                  for label in reports if label != "target"}
    summary = {label: {name: rate.to_dict() for name, rate in report.metric_table().items()}
               for label, report in reports.items()}
    # the same prompts answered by every model side by side (base, parent, then the target: before -> after)
    sample_suite = next(s for s in (*JUDGED, "over_refusal") if s in suites)
    order = [label for label in ("base", "parent", "target") if label in reports]
    samples = side_by_side({label: reports[label].suites[sample_suite].records for label in order})
    readable: dict[str, Any] = {"samples_suite": sample_suite, "samples": samples}
    if warning is not None:
        readable["judge_warning"] = warning
    report = {"model": request.model, "suites": suites, "summary": summary, "comparison": comparison,
              **readable, "reports": {label: r.to_dict() for label, r in reports.items()},
              "models": [asdict(m) for m in models]}
    report = scrub_server_paths(report, ctx.settings)  # tenants read it (GET /v1/evals/{id})
    write_json(ctx.dir / "eval" / "report.json", report)
    return StageResult(summary={"suites": suites, "models": list(reports)},
                       metrics={"eval": {"summary": summary, "comparison": comparison,
                                         **{k: report[k] for k in readable}}},
                       artifacts={"eval_report": "eval/report.json"})


EVAL_STAGE_FUNCTIONS: dict[Stage, Callable[[StageContext], StageResult]] = {
    Stage.VALIDATE: run_eval_validate,
    Stage.EVALUATE: run_eval_evaluate,
}
