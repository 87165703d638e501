"""What every stage gets and returns: no Celery, no database, no engine.

A stage gets a `StageContext` (ids, the validated request, the job's artifact folder, a progress callback that
raises `Cancelled`) and returns a `StageResult`; `worker.runner` does the bookkeeping. Every path is derived from
ids (`core.registry.job_folder`); secrets are read from the environment variable whose NAME the request or the
judge profile gives and are never written anywhere.

Layout of `<data_dir>/jobs/<job_id>/`: `data/pairs.jsonl` (the dataset snapshot taken at validation),
`triage/` (triaged.jsonl, summary.json, verdicts.sqlite: the crash-safe verdict store), `score/`
(scored.jsonl, reference_logps.safetensors), `train/` (checkpoints/, adapter/, metrics.jsonl: one line per optimizer
step, appended as it finishes), `eval/report.json`, `eval/prompts.jsonl` (the prompts TPA was measured on). A job
on its own data that asks for TPA also has `data/held_out.jsonl`: prompts chosen at validation that training
never sees, so TPA before and after is measured on prompts the adapter was not trained on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.jobspec import EvalRequest, RealignRequest
from core.registry import job_folder
from core.settings import Settings

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
        return job_folder(self.settings, self.job_id)


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


def job_relative(ctx: StageContext, path: Any) -> str:
    """An artifact's name as jobs show it: relative to the job's folder (`train/adapter`), never a server path;
    the worker finds the file again from the job id (`core.registry.job_folder`)."""
    return Path(path).resolve().relative_to(ctx.dir.resolve()).as_posix()
