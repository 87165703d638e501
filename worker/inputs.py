"""What a stage reads from its request: the base model, the dataset and its snapshot, the rows to train on,
the training configuration, the prompts held out for evaluation."""

from __future__ import annotations

import hashlib
from typing import Any

from core.db.states import needs_scoring
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
from core.registry import HELD_OUT_FILE
from core.review import apply_review, read_review
from core.settings import Settings
from trace_engine.data.io import read_jsonl
from trace_engine.data.pairs import PreferencePair, prompt_key
from worker.context import StageContext, StageFailed

HELD_OUT_MAX_SHARE = 5  # at most 1 in 5 distinct prompts is held out of training for evaluation


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


def training_rows(ctx: StageContext) -> list[dict[str, Any]]:
    """The rows the last completed data stage wrote: scored > triaged > the raw snapshot; never a row whose
    prompt was held out for evaluation (`data/held_out.jsonl`)."""
    held = {prompt_key(r["prompt"]) for r in read_jsonl(ctx.dir / HELD_OUT_FILE)} \
        if (ctx.dir / HELD_OUT_FILE).is_file() else set()
    for relative in ("score/scored.jsonl", "triage/triaged.jsonl", "data/pairs.jsonl"):
        path = ctx.dir / relative
        if path.is_file() and (relative != "score/scored.jsonl" or needs_scoring(ctx.request)):
            rows = list(read_jsonl(path))
            if relative == "triage/triaged.jsonl":  # a reviewer's overrides (scored rows already have them)
                rows = apply_review(rows, read_review(ctx.dir))
            return [row for row in rows if prompt_key(row["prompt"]) not in held]
    raise StageFailed("no training data found for this job (did validation run?)", kind="missing_input")


def snapshot_pairs(ctx: StageContext) -> list[PreferencePair]:
    path = ctx.dir / "data" / "pairs.jsonl"
    if not path.is_file():
        raise StageFailed("the dataset snapshot is missing (did validation run?)", kind="missing_input")
    return [PreferencePair.from_row(row) for row in read_jsonl(path)]


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
