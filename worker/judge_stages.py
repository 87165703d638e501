"""The `judge` queue's stages of a realign job (I/O bound: run them with many threads): validate (dataset
readable, model reachable, judge answering) and triage (every pair judged under the new policy)."""

from __future__ import annotations

from typing import Any

from core.db.states import needs_triage
from core.registry import HELD_OUT_FILE
from core.sanitise import JUDGE_ERROR_CHARS, sanitise_error_text
from core.settings import Settings
from trace_engine.data.io import write_jsonl
from worker.context import StageContext, StageFailed, StageResult
from worker.inputs import (
    choose_held_out,
    evaluates_own_data,
    hyper_to_train_config,
    load_dataset,
    resolve_base_model,
    snapshot_pairs,
)
from worker.judging import build_judge, probe_judge


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


def _item_error(error: Any, settings: Settings) -> Any:
    """A triage item's judge error as tenants see it: a short sanitised excerpt (no remote body, no secret)."""
    return sanitise_error_text(error, settings=settings, max_len=JUDGE_ERROR_CHARS) if isinstance(error, str) \
        else error
