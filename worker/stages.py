"""Engine glue for the service's stages: each function turns a stored request into ONE engine call.

No Celery and no database here: a stage gets a `StageContext` (ids, the validated request, the job's artifact
folder, a progress callback that raises `Cancelled`) and returns a `StageResult`; `worker.runner` does the
bookkeeping. Every path is derived from ids (`job_dir`); secrets are read from the environment variable whose
NAME the request gives and are never written anywhere.

Layout of `<data_dir>/jobs/<job_id>/`: `data/pairs.jsonl` (the dataset snapshot taken at validation),
`triage/` (triaged.jsonl, summary.json, verdicts.sqlite: the crash-safe verdict store), `score/`
(scored.jsonl, reference_logps.json), `train/` (checkpoints/, adapter/, metrics.jsonl: one line per optimizer
step, appended as it finishes), `eval/report.json`, `eval/prompts.jsonl` (the prompts TPA was measured on). A job
on its own data that asks for TPA also has `data/held_out.jsonl`: prompts chosen at validation that training
never sees, so TPA before and after is measured on prompts the adapter was not trained on.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.db.states import needs_scoring, needs_triage
from core.jobspec import (
    SYNTHETIC_BASE_NAMES,
    EvalRequest,
    FileDataset,
    HfDataset,
    PathDataset,
    RealignRequest,
    SyntheticDataset,
)
from core.paths import PathEscapesRoot, resolve_under_root
from core.review import apply_review, read_review
from core.sanitise import sanitise_error_text, scrub_server_paths
from core.settings import Settings
from trace_engine.data.io import write_json, write_jsonl
from trace_engine.data.pairs import PreferencePair, prompt_key
from trace_engine.judge.base import Judge
from trace_engine.variants import get_variant

_JOB_ID = re.compile(r"^job_[0-9a-f]{12,40}$")
PROBE_PROMPT = "What is the capital of France?"
PROBE_RESPONSE = "The capital of France is Paris."
PROBE_ERROR_CHARS = 300  # at most this much of a judge's failure text reaches the job
HELD_OUT_FILE = "data/held_out.jsonl"
EVAL_PROMPTS_FILE = "eval/prompts.jsonl"
HELD_OUT_MAX_SHARE = 5  # at most 1 in 5 distinct prompts is held out of training for evaluation
MAX_LISTED_PROMPT_IDS = 200  # the report lists at most this many prompt ids (all are in eval/prompts.jsonl)
TEXT_BLIND_JUDGES = {"rules": "keyword rules", "synthetic": "the synthetic world's rule judge"}

ProgressTick = Callable[[int, "int | None"], None]


class Cancelled(Exception):
    """Raised from a progress callback when the job's cancel was requested (or its lease was lost)."""


class StageFailed(Exception):
    """A clear, user-facing reason the stage cannot succeed (bad dataset, unreachable model, judge down)."""

    def __init__(self, message: str, *, kind: str = "stage_failed", details: dict[str, Any] | None = None):
        super().__init__(message)
        self.kind = kind
        self.details = details or {}


@dataclass
class StageContext:
    job_id: str
    tenant_id: str
    request: RealignRequest | EvalRequest  # EvalRequest for `eval` jobs (worker.eval_stages)
    settings: Settings
    tick: ProgressTick  # (done, total): throttled progress; raises Cancelled when cancel was requested
    file_format: str | None = None  # for `file` datasets: the uploaded file's format (from its record)
    warn: Callable[[str], None] = lambda message: None
    # the tenant's adapter (by id or name) as a dict {id, name, path, sha256, provenance}, or None (eval jobs)
    lookup_adapter: Callable[[str], dict[str, Any] | None] | None = None

    @property
    def dir(self) -> Path:
        return job_dir(self.settings, self.job_id)


@dataclass
class StageResult:
    summary: dict[str, Any] = field(default_factory=dict)  # stage_completed event data
    metrics: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)
    category_counts: dict[str, int] | None = None
    triage_items: list[dict[str, Any]] | None = None


class EvalProgress:
    """The evaluating stage's progress in prompts generated plus responses judged, all models together: the
    engine calls it with each finished batch or verdict; `ctx.tick` throttles the writes and raises on cancel."""

    def __init__(self, ctx: StageContext, total: int) -> None:
        self.tick, self.total, self.done = ctx.tick, max(1, total), 0
        self.tick(0, self.total)

    def __call__(self, n: int) -> None:
        self.done = min(self.total, self.done + n)
        self.tick(self.done, self.total)

    def finish(self) -> None:
        self.done = self.total
        self.tick(self.total, self.total)


def judge_warning(provider: str, base_models: list[str]) -> str | None:
    """Why the numbers may mislead, when a judge that matches fixed phrases grades a real model's free text."""
    real = [name for name in dict.fromkeys(base_models) if name not in SYNTHETIC_BASE_NAMES]
    if provider not in TEXT_BLIND_JUDGES or not real:
        return None
    return (f"the evaluation judge is {provider!r} ({TEXT_BLIND_JUDGES[provider]}): it matches fixed phrases and "
            f"cannot judge free-form text, so on {', '.join(map(repr, real))} the TPA/ASR numbers may mislead; "
            "read the sample answers, or evaluate again with an `openai` judge profile")


def job_relative(ctx: StageContext, path: Any) -> str:
    """An artifact's name as jobs show it: relative to the job's folder (`train/adapter`), never a server path;
    the worker finds the file again from the job id (`job_dir`)."""
    return Path(path).resolve().relative_to(ctx.dir.resolve()).as_posix()


def _item_error(error: Any, settings: Settings) -> Any:
    """A triage item's judge error as tenants see it: a short sanitised excerpt (no remote body, no secret)."""
    return sanitise_error_text(error, settings=settings, max_len=PROBE_ERROR_CHARS) if isinstance(error, str) \
        else error


def job_dir(settings: Settings, job_id: str) -> Path:
    """`<data_dir>/jobs/<job_id>`: only a well-formed job id ever becomes a path."""
    if not _JOB_ID.match(job_id):
        raise ValueError(f"not a job id: {job_id!r}")
    return settings.data_dir / "jobs" / job_id


# ---------------------------------------------------------------- building blocks


def is_synthetic_base(request: RealignRequest) -> bool:
    return request.base_model.name_or_path in SYNTHETIC_BASE_NAMES


def synthetic_world_seed(request: RealignRequest | EvalRequest) -> int:
    return request.dataset.seed if isinstance(request.dataset, SyntheticDataset) else 0


def resolve_base_model(request: RealignRequest, settings: Settings, *, check_hub: bool = True) -> Any:
    """A `ModelSource` for the request's base model: the synthetic world's cached tiny model, a folder under the
    model root, or a Hub id pinned to a commit (checked against the local cache or the Hub, never downloaded)."""
    from trace_engine.modeling import ModelLoadError, ModelSource

    ref = request.base_model
    if ref.name_or_path in SYNTHETIC_BASE_NAMES:
        from trace_engine.synthetic.base_model import ensure_base_model

        return ModelSource(str(ensure_base_model().path))
    try:
        local = resolve_under_root(settings.models_root, ref.name_or_path)
    except PathEscapesRoot as exc:
        raise StageFailed(f"base_model.name_or_path: {exc} (local models live under the model root)",
                          kind="model_unreachable") from exc
    source = ModelSource(str(local)) if local.is_dir() else ModelSource(ref.name_or_path, ref.revision)
    try:
        source.validate()
    except ModelLoadError as exc:
        raise StageFailed(f"base model: {exc}", kind="model_unreachable") from exc
    if not source.is_local and check_hub:
        _check_hub_model(ref.name_or_path, str(ref.revision))
    return source


def _check_hub_model(repo: str, revision: str) -> None:
    """The pinned model is in the local Hub cache, or the Hub answers for it (metadata only)."""
    import os

    from huggingface_hub import HfApi, try_to_load_from_cache

    cached = try_to_load_from_cache(repo, "config.json", revision=revision)
    if isinstance(cached, str):
        return
    if os.environ.get("HF_HUB_OFFLINE"):
        raise StageFailed(f"base model {repo}@{revision} is not in the local Hub cache and HF_HUB_OFFLINE is set",
                          kind="model_unreachable")
    try:
        HfApi().model_info(repo, revision=revision, timeout=10)
    except Exception as exc:  # any Hub error means: we cannot run this job
        raise StageFailed(f"base model {repo}@{revision} is not reachable on the Hub: {type(exc).__name__}: {exc}",
                          kind="model_unreachable") from exc


def build_judge(request: RealignRequest | EvalRequest, settings: Settings) -> tuple[Judge, bool]:
    """(judge, oracle): the judge the request names and whether triage also asks it for rewrites. An `openai`
    judge is the operator's judge profile the request names (api/judges.py): its URL and the NAME of its key's
    environment variable come from the settings, never from the request; the key is never stored."""
    spec = request.judge
    oracle = isinstance(request, RealignRequest) and get_variant(request.method.variant).needs_oracle
    if spec.provider == "synthetic":
        from trace_engine.synthetic.oracle_judge import SyntheticOracleJudge
        from trace_engine.synthetic.world import make_world

        return SyntheticOracleJudge(make_world(synthetic_world_seed(request))), True
    from trace_engine.judge.factory import make_judge

    if spec.provider == "rules":
        try:
            path = resolve_under_root(settings.datasets_root, str(spec.rules_path))
        except PathEscapesRoot as exc:
            raise StageFailed(f"judge.rules_path: {exc}", kind="judge_unreachable") from exc
        if not path.is_file():
            raise StageFailed(f"judge.rules_path {spec.rules_path!r} does not exist under the dataset root",
                              kind="judge_unreachable")
        return make_judge(f"rules:{path}"), oracle
    from core.judges import JudgeProfileError, resolve_judge_profile

    try:
        resolved = resolve_judge_profile(settings, spec)
    except JudgeProfileError as exc:  # the operator changed the profiles since the job was submitted
        raise StageFailed(f"judge.{exc.field}: {exc}", kind="judge_unreachable") from exc
    profile = resolved.profile
    try:
        judge = make_judge(f"openai:{resolved.model}", base_url=str(profile.base_url) if profile.base_url else None,
                           api_key_env=profile.api_key_env, max_retries=profile.max_retries, timeout=profile.timeout_s)
    except ValueError as exc:
        raise StageFailed(f"judge profile {resolved.profile_name!r}: {exc}", kind="judge_unreachable") from exc
    return judge, oracle


def probe_judge(judge: Judge, request: RealignRequest | EvalRequest, settings: Settings | None = None) -> None:
    """One real judge call before any GPU time: a judge that cannot answer fails the job now. The reason is a
    short, sanitised excerpt (a remote body, a path or a secret never reaches the job record)."""
    policy = request.policy.to_policy()

    async def ask() -> Any:
        try:
            return await judge.judge(policy, PROBE_PROMPT, PROBE_RESPONSE)
        finally:
            await judge.aclose()

    try:
        outcome = asyncio.run(ask())
    except Exception as exc:
        reason = sanitise_error_text(f"{type(exc).__name__}: {exc}", settings=settings, max_len=PROBE_ERROR_CHARS)
        raise StageFailed(f"judge probe call failed: {reason}", kind="judge_unreachable") from exc
    if outcome.error is not None or outcome.verdict is None:
        reason = sanitise_error_text(outcome.error or "no verdict", settings=settings, max_len=PROBE_ERROR_CHARS)
        raise StageFailed(f"judge probe call failed: {reason}", kind="judge_unreachable")


def load_dataset(ctx: StageContext) -> tuple[list[PreferencePair], dict[str, Any]]:
    """(pairs, validation report) from the request's typed dataset reference."""
    from trace_engine.data.io import DatasetError
    from trace_engine.data.load import load_pairs

    ref = ctx.request.dataset
    if isinstance(ref, SyntheticDataset):
        from trace_engine.synthetic.world import make_world

        pairs = make_world(ref.seed).train_pairs(ref.n)
        return pairs, {"source": f"synthetic(seed={ref.seed}, n={ref.n})", "pairs_kept": len(pairs)}
    preset = None
    try:
        if isinstance(ref, FileDataset):
            if ctx.file_format is None:
                raise StageFailed(f"file {ref.file_id} not found", kind="dataset_invalid")
            source: Any = ctx.settings.files_dir / f"{ref.file_id}.{ctx.file_format}"
        elif isinstance(ref, PathDataset):
            source = resolve_under_root(ctx.settings.datasets_root, ref.path)
            if not source.exists():
                raise StageFailed(f"dataset path {ref.path!r} does not exist under the dataset root",
                                  kind="dataset_invalid")
        else:
            assert isinstance(ref, HfDataset)
            from trace_engine.data.hub import HubRef

            source, preset = HubRef(repo=ref.repo, revision=ref.revision, split=ref.split), ref.preset
        pairs, report = load_pairs(source, preset=preset)
    except (DatasetError, PathEscapesRoot, OSError, ValueError) as exc:
        raise StageFailed(f"dataset unreadable: {exc}", kind="dataset_invalid") from exc
    summary = report.to_dict()
    if not pairs:
        first = [i.get("message") for i in summary.get("issues", [])[:5]]
        raise StageFailed(f"dataset has no usable preference pairs ({report.rows_read} rows read, "
                          f"{report.rows_skipped} skipped); first problems: {first}", kind="dataset_invalid",
                          details={"report": {k: summary[k] for k in ("rows_read", "rows_skipped", "error_count")
                                              if k in summary}})
    if report.rows_skipped:
        ctx.warn(f"{report.rows_skipped} of {report.rows_read} dataset rows were skipped (see the report)")
    return pairs, summary


def hyper_to_train_config(request: RealignRequest, settings: Settings) -> Any:
    from trace_engine.config import LoraSettings, TrainConfig

    h = request.method.hyperparameters
    targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj") \
        if is_synthetic_base(request) else LoraSettings().target_modules
    return TrainConfig(
        variant=request.method.variant, beta=h.beta, alpha_kl=h.alpha_kl, pref_loss=h.pref_loss, lr=h.lr,
        epochs=h.epochs, max_steps=h.max_steps, batch_size=h.batch_size, grad_accum=h.grad_accum, seed=h.seed,
        max_prompt_len=h.max_prompt_len, max_len=h.max_len,
        lora=LoraSettings(r=h.lora_r, alpha=h.lora_alpha, dropout=h.lora_dropout, target_modules=targets),
        checkpoint_every=settings.checkpoint_every, kl_responses=h.kl_responses, fused_kernels=settings.fused_kernels,
        gradient_checkpointing=h.gradient_checkpointing, group_by_length=h.group_by_length,
    )


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def training_rows(ctx: StageContext) -> list[dict[str, Any]]:
    """The rows the last completed data stage wrote: scored > triaged > the raw snapshot; never a row whose
    prompt was held out for evaluation (`data/held_out.jsonl`)."""
    held = {prompt_key(r["prompt"]) for r in _read_jsonl(ctx.dir / HELD_OUT_FILE)} \
        if (ctx.dir / HELD_OUT_FILE).is_file() else set()
    for relative in ("score/scored.jsonl", "triage/triaged.jsonl", "data/pairs.jsonl"):
        path = ctx.dir / relative
        if path.is_file() and (relative != "score/scored.jsonl" or needs_scoring(ctx.request)):
            rows = _read_jsonl(path)
            if relative == "triage/triaged.jsonl":  # a reviewer's overrides (scored rows already have them)
                rows = apply_review(rows, read_review(ctx.dir))
            return [row for row in rows if prompt_key(row["prompt"]) not in held]
    raise StageFailed("no training data found for this job (did validation run?)", kind="missing_input")


def evaluates_own_data(request: RealignRequest | EvalRequest) -> bool:
    """A realign job measuring TPA on prompts of its own dataset (not the synthetic world's held-out sets)."""
    return isinstance(request, RealignRequest) and "tpa" in request.eval.suites and not (
        request.judge.provider == "synthetic" and is_synthetic_base(request))


def choose_held_out(pairs: list[PreferencePair], limit: int) -> list[dict[str, Any]]:
    """Up to `limit` distinct prompts, and at most one in HELD_OUT_MAX_SHARE of them (the rest train), picked by a
    hash of the prompt: deterministic and independent of row order. Under HELD_OUT_MAX_SHARE distinct prompts:
    none (evaluation then falls back to training prompts, and says so)."""
    first: dict[str, PreferencePair] = {}
    for pair in pairs:
        first.setdefault(prompt_key(pair.prompt), pair)
    count = min(limit, len(first) // HELD_OUT_MAX_SHARE)
    ranked = sorted(first, key=lambda key: hashlib.sha256(key.encode("utf-8")).hexdigest())[:count]
    return [{"id": first[key].id, "prompt": first[key].prompt} for key in ranked]


def snapshot_pairs(ctx: StageContext) -> list[PreferencePair]:
    path = ctx.dir / "data" / "pairs.jsonl"
    if not path.is_file():
        raise StageFailed("the dataset snapshot is missing (did validation run?)", kind="missing_input")
    return [PreferencePair.from_row(row) for row in _read_jsonl(path)]


# ---------------------------------------------------------------- the stages


def run_validate(ctx: StageContext) -> StageResult:
    """Fail fast, before any GPU time: dataset readable, model reachable, judge answering a probe call."""
    pairs, report = load_dataset(ctx)
    ctx.tick(1, 3)
    source = resolve_base_model(ctx.request, ctx.settings)
    ctx.tick(2, 3)
    if needs_triage(ctx.request):
        judge, _ = build_judge(ctx.request, ctx.settings)
        probe_judge(judge, ctx.request, ctx.settings)
    try:
        hyper_to_train_config(ctx.request, ctx.settings).validate()
    except ValueError as exc:  # trace_engine.train.ConfigError
        raise StageFailed(f"method: {exc}", kind="config_invalid") from exc
    held_out = choose_held_out(pairs, ctx.settings.eval_size) if evaluates_own_data(ctx.request) else []
    if held_out:
        write_jsonl(ctx.dir / HELD_OUT_FILE, held_out)  # before the snapshot: a re-run sees the same split
    write_jsonl(ctx.dir / "data" / "pairs.jsonl", [p.to_row() for p in pairs])
    ctx.tick(3, 3)
    base_model = {"name_or_path": ctx.request.base_model.name_or_path, "revision": source.revision,
                  "local": source.is_local}  # the request's name, never the server path it resolved to
    summary = {"pairs": len(pairs), "base_model": base_model}
    if held_out:
        summary["held_out_prompts"] = len(held_out)
    return StageResult(summary=summary,
                       metrics={"pairs": len(pairs)},
                       artifacts={"dataset_snapshot": "data/pairs.jsonl",
                                  "dataset_report": {k: v for k, v in report.items() if k != "issues"}})


def run_triage(ctx: StageContext) -> StageResult:
    """Triage under the request's policy; verdicts persist item by item in the job's store, so a re-run (after a
    crash or a re-queue) only judges what is missing."""
    from trace_engine.triage.stage import STATUS_ABORTED, run_triage_stage

    pairs = snapshot_pairs(ctx)
    judge, oracle = build_judge(ctx.request, ctx.settings)
    policy = ctx.request.policy.to_policy()

    def on_progress(progress: Any) -> None:
        if progress.phase == "verdict":
            ctx.tick(progress.done, progress.total)

    outcome = run_triage_stage(pairs, policy, judge, ctx.dir / "triage", oracle=oracle,
                               concurrency=ctx.settings.judge_concurrency, progress=on_progress)
    if outcome.status == STATUS_ABORTED:
        raise StageFailed(f"triage aborted: {outcome.summary.get('message')}", kind="judge_failed")
    rows = outcome.result.rows
    items = [{"pair_id": row["id"], "position": index, "category": row.get("category", "ERROR"),
              "verdicts": {k: _item_error(row[k], ctx.settings) if k == "error" else row[k]
                           for k in ("swapped", "chosen_verdict", "rejected_verdict", "error", "oracle_response")
                           if k in row}}
             for index, row in enumerate(rows)]
    counts = {k: int(v) for k, v in outcome.summary["counts"].items()}
    summary = {k: outcome.summary[k] for k in ("status", "pairs", "counts", "judge_calls", "cache_hits", "wall_s")}
    return StageResult(summary=summary, metrics={"triage": summary}, category_counts=counts, triage_items=items,
                       artifacts={"triaged": "triage/triaged.jsonl", "triage_summary": "triage/summary.json"})


def run_score(ctx: StageContext) -> StageResult:
    """Impact weights of the conflicting rows and the reference log-prob cache training reuses."""
    from trace_engine.scoring import score

    rows = training_rows(ctx)
    source = resolve_base_model(ctx.request, ctx.settings, check_hub=False)
    config = hyper_to_train_config(ctx.request, ctx.settings)
    ctx.tick(0, 1)  # then (batches scored, batches) while scoring
    hyper = ctx.request.method.hyperparameters
    gold = hyper.gold_size or max(3, min(48, len(rows) // 4))
    scored = score(Path(source.name_or_path), rows, ctx.request.method.variant, config,
                   normalise=hyper.normalise, gold_size=gold, seed=config.seed,
                   device=ctx.settings.train_device, progress=ctx.tick)  # tick raises on cancel
    write_json(ctx.dir / "score" / "reference_logps.json", scored.reference_logps)
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
    ref_path = ctx.dir / "score" / "reference_logps.json"
    reference = json.loads(ref_path.read_text()) if ref_path.is_file() else None

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
    rows = _read_jsonl(held) if held.is_file() else []
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
