"""The triage stage as one engine call: run triage on loaded pairs, write `triaged.jsonl` and `summary.json`.

The CLI and the future service worker both call `run_triage_stage`; it owns the store's lifetime and the output
files. Outputs are written atomically at the end; the SQLite store is what survives a crash.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trace_engine.categories import CATEGORY_ORDER, Category
from trace_engine.data.io import write_json, write_jsonl
from trace_engine.data.pairs import PreferencePair
from trace_engine.judge.base import Judge
from trace_engine.policy import Policy
from trace_engine.triage.cache import VerdictStore
from trace_engine.triage.runner import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_CONSECUTIVE_FAILURES,
    BatchSend,
    ProgressCallback,
    TriageResult,
    template_version_of,
    triage,
)

TRIAGED_FILE = "triaged.jsonl"
SUMMARY_FILE = "summary.json"
CACHE_FILE = "verdicts.sqlite"

STATUS_COMPLETE = "complete"
STATUS_WITH_ERRORS = "complete_with_errors"
STATUS_ABORTED = "aborted"


@dataclass
class StageOutcome:
    summary: dict[str, Any]
    result: TriageResult

    @property
    def status(self) -> str:
        return str(self.summary["status"])


def run_triage_stage(
    pairs: Sequence[PreferencePair],
    policy: Policy,
    judge: Judge,
    out_dir: str | Path,
    *,
    cache_path: str | Path | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    max_consecutive_failures: int = DEFAULT_MAX_CONSECUTIVE_FAILURES,
    oracle: bool = False,
    progress: ProgressCallback | None = None,
    batch: BatchSend | None = None,
    extra_summary: dict[str, Any] | None = None,
) -> StageOutcome:
    """Triage and write outputs. An aborted run writes only `summary.json` (status "aborted") and removes any stale
    `triaged.jsonl`: re-run to resume."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store_path = Path(cache_path) if cache_path else out / CACHE_FILE
    with VerdictStore(store_path) as store:

        async def go() -> TriageResult:
            try:
                return await triage(
                    pairs,
                    policy,
                    judge,
                    store,
                    concurrency=concurrency,
                    max_consecutive_failures=max_consecutive_failures,
                    oracle=oracle,
                    progress=progress,
                    batch=batch,
                )
            finally:
                await judge.aclose()

        result = asyncio.run(go())
    summary = build_summary(
        result,
        judge_id=judge.judge_id,
        policy=policy,
        template_version=template_version_of(judge),
        cache_path=store_path,
        concurrency=concurrency,
        oracle=oracle,
    )
    summary.update(extra_summary or {})
    if result.aborted:
        # A triaged.jsonl from an earlier run would no longer match this summary: never leave it to be read.
        (out / TRIAGED_FILE).unlink(missing_ok=True)
    else:
        write_jsonl(out / TRIAGED_FILE, result.rows)
    write_json(out / SUMMARY_FILE, summary)
    return StageOutcome(summary, result)


def build_summary(
    result: TriageResult,
    *,
    judge_id: str,
    policy: Policy,
    template_version: str,
    cache_path: Path,
    concurrency: int,
    oracle: bool,
) -> dict[str, Any]:
    """Everything a reader needs to trust and cost the run (`summary.json`)."""
    usage = result.usage
    pairs = len(result.rows)
    wall = max(result.wall_s, 1e-9)
    if result.aborted:
        status, message = STATUS_ABORTED, result.abort_reason
    elif result.errors:
        status = STATUS_WITH_ERRORS
        message = (
            f"{result.counts.get(Category.ERROR, 0)} pairs have no category and {_oracle_failures(result)} oracle "
            "rewrites failed (judge errors); re-run to retry only those"
        )
    else:
        status, message = STATUS_COMPLETE, None
    return {
        "status": status,
        "message": message,
        "pairs": pairs,
        "counts": dict(result.counts),
        "unique_responses": result.verdicts.requests,
        "cache_hits": result.verdicts.cache_hits,
        "requests_sent": result.verdicts.sent + result.rewrites.sent,
        "judge_calls": usage.calls,
        "retries": usage.retries,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "verdicts": result.verdicts.to_dict(),
        "rewrites": result.rewrites.to_dict() if oracle else None,
        "errors": result.errors,
        "wall_s": round(result.wall_s, 3),
        "throughput": {
            "pairs_per_s": round(pairs / wall, 2),
            "requests_per_s": round((result.verdicts.sent + result.rewrites.sent) / wall, 2),
            "calls_per_s": round(usage.calls / wall, 2),
        },
        "judge_id": judge_id,
        "policy_name": policy.name,
        "policy_sha256": policy.sha256,
        "template_version": template_version,
        "cache_path": str(cache_path),
        "concurrency": concurrency,
        "oracle": oracle,
    }


def format_category_table(counts: dict[str, int]) -> str:
    """A plain-text table of pairs per category (ERROR only when present)."""
    total = sum(counts.values())
    lines = [f"{'category':<10}{'pairs':>8}{'share':>9}"]
    for category in CATEGORY_ORDER:
        n = counts.get(category.value, 0)
        if category is Category.ERROR and n == 0:
            continue
        share = 100.0 * n / total if total else 0.0
        lines.append(f"{category.value:<10}{n:>8}{share:>8.1f}%")
    lines.append(f"{'total':<10}{total:>8}")
    return "\n".join(lines)


def _oracle_failures(result: TriageResult) -> int:
    return sum(len(e["item_ids"]) for e in result.errors if e["kind"] == "rewrite")
