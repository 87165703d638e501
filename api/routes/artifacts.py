"""A job's outputs over HTTP, tenant-scoped: the artifact list and downloads (triaged pairs, impact scores, the
training metrics history, the evaluation report and its prompts, the adapter), the per-step metrics history as
JSON, and the impact score of each pair.

A name is looked up in the job's own artifact list (`core.registry.JOB_ARTIFACTS` plus the registered adapter);
the file it names is resolved under the job's folder with `resolve_under_root`, so no request string ever becomes
a path. Another tenant's job is a 404.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import FileResponse, StreamingResponse
from sqlalchemy.orm import Session

from api.deps import PaginationDep, PrincipalDep, SessionDep, SettingsDep
from api.errors import ProblemError
from api.routes import problems
from api.routes.adapters import adapter_archive
from api.schemas import ArtifactList, ArtifactOut, MetricsHistory, ScoreList, ScoreOut
from core.db.access.adapters import adapter_of_job
from core.db.access.common import BadCursor
from core.db.access.jobs import get_job
from core.db.models import Job
from core.paths import PathEscapesRoot, resolve_under_root
from core.registry import JOB_ARTIFACTS, job_folder, weights_file
from core.settings import Settings
from trace_engine.data.io import iter_jsonl_objects

router = APIRouter(prefix="/v1", tags=["jobs"])
HASH_LIMIT_BYTES = 16 * 1024 * 1024  # sha256 in the listing for files up to this size (larger: None)
METRICS_PAGE, METRICS_PAGE_MAX = 1000, 10_000
ADAPTER = "adapter"
SANITISED = frozenset({"triaged"})  # served row by row with judge error texts sanitised (so: no sha256 listed)


def _file(settings: Settings, job: Job, relative: str) -> Path | None:
    """The artifact file inside the job's folder, or None when it is not there (yet)."""
    try:
        path = resolve_under_root(job_folder(settings, job.id), relative)
    except (PathEscapesRoot, ValueError):
        return None
    return path if path.is_file() else None


def _sha256(path: Path, size: int) -> str | None:
    if size > HASH_LIMIT_BYTES:
        return None
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sanitised_rows(path: Path, settings: Settings) -> Iterator[bytes]:
    """Triaged rows as tenants may see them: a judge failure's text is the short sanitised excerpt the job's
    triage items carry (no remote body, no endpoint, no secret), as in GET /v1/jobs/{id}/triage."""
    from core.sanitise import JUDGE_ERROR_CHARS, sanitise_error_text

    for row in iter_jsonl_objects(path):
        if isinstance(row.get("error"), str):
            row["error"] = sanitise_error_text(row["error"], settings=settings, max_len=JUDGE_ERROR_CHARS)
        yield (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")


def job_artifacts(session: Session, settings: Settings, job: Job) -> list[ArtifactOut]:
    """The job's artifacts that exist now (the metrics history appears while training runs)."""
    out = []
    for name, (relative, kind, content_type) in JOB_ARTIFACTS.items():
        path = _file(settings, job, relative)
        if path is not None:
            size = path.stat().st_size
            digest = None if name in SANITISED else _sha256(path, size)
            out.append(ArtifactOut(name=name, kind=kind, file=relative, size_bytes=size, sha256=digest,
                                   content_type=content_type, url=f"/v1/jobs/{job.id}/artifacts/{name}"))
    adapter = adapter_of_job(session, tenant_id=job.tenant_id, job_id=job.id)
    if adapter is not None and weights_file(settings, adapter.path).is_file():
        out.append(ArtifactOut(name=ADAPTER, kind="adapter", file=adapter.path.split("/", 2)[2] + "/",
                               size_bytes=adapter.size_bytes, sha256=None, content_type="application/gzip",
                               url=f"/v1/adapters/{adapter.id}/download"))
    return out


@router.get("/jobs/{job_id}/artifacts", response_model=ArtifactList, responses=problems(401, 404),
            summary="A job's downloadable artifacts: name, kind, size, sha256, content type and download URL",
            description="What the job has produced so far (triaged pairs, impact scores, the training metrics "
            "history, the evaluation report and its prompts, the adapter, summaries); each entry's `url` "
            "downloads it. A running job lists the artifacts of the stages it has finished.")
def list_artifacts(job_id: str, session: SessionDep, settings: SettingsDep, principal: PrincipalDep) -> ArtifactList:
    job = get_job(session, tenant_id=principal.tenant_id, job_id=job_id)
    return ArtifactList(data=job_artifacts(session, settings, job))


@router.get("/jobs/{job_id}/artifacts/{name}", responses={
    **problems(401, 404, 410),
    200: {"description": "the artifact's bytes (JSON, JSON lines, or the adapter as tar.gz)",
          "content": {"application/json": {}, "application/x-ndjson": {}, "application/gzip": {}}}},
    summary="Download one of a job's artifacts by its name in GET /v1/jobs/{job_id}/artifacts",
    description="The artifact's bytes with its content type: JSON, JSON lines (the triaged pairs are served with "
    "judge error texts sanitised) or, for `adapter`, the adapter directory as a tar.gz. 404 names the job's "
    "artifacts when `name` is not one of them; 410 when the file is gone from storage.")
def download_artifact(job_id: str, name: str, session: SessionDep, settings: SettingsDep,
                      principal: PrincipalDep) -> Response:
    job = get_job(session, tenant_id=principal.tenant_id, job_id=job_id)
    if name == ADAPTER:
        adapter = adapter_of_job(session, tenant_id=job.tenant_id, job_id=job.id)
        if adapter is not None:
            return adapter_archive(adapter, settings)
    elif name in JOB_ARTIFACTS:
        relative, _, content_type = JOB_ARTIFACTS[name]
        path = _file(settings, job, relative)
        filename = f"{job.id}-{Path(relative).name}"
        if path is not None and name in SANITISED:
            return StreamingResponse(_sanitised_rows(path, settings), media_type=content_type,
                                     headers={"Content-Disposition": f'attachment; filename="{filename}"'})
        if path is not None:
            return FileResponse(path, media_type=content_type, filename=filename)
    known = ", ".join(a.name for a in job_artifacts(session, settings, job)) or "none yet"
    raise ProblemError(404, f"job {job_id} has no artifact {name[:80]!r}; its artifacts: {known}",
                       slug="artifact-not-found")


def _cursor(value: str | None, what: str) -> int:
    """A file-backed list's cursor: the row offset (scores) or the last step sent (metrics); 0 for the first page."""
    if value is None:
        return 0
    if not value.isdigit() or len(value) > 12:
        raise BadCursor(f"bad cursor {value[:40]!r} for {what}")
    return int(value)


@router.get("/jobs/{job_id}/metrics", response_model=MetricsHistory, responses=problems(400, 401, 404, 422),
            summary="The training metrics history: loss components, rewards, margins per optimizer step",
            description="One object per optimizer step, in order, as training appends them (a step is on disk "
            "before the next starts). Follow a running job by passing the last `next_cursor` as `cursor`; an "
            "empty page means no new step yet. A resumed run continues from its checkpoint's step. A page holds "
            f"`limit` steps (default {METRICS_PAGE}, at most {METRICS_PAGE_MAX}).")
def metrics_history(
    job_id: str,
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    paging: PaginationDep,
) -> MetricsHistory:
    """Steps in order, as training appends them (poll with the last next_cursor to follow a running job); an
    empty list before training started. A resumed run continues from its checkpoint's step."""
    job = get_job(session, tenant_id=principal.tenant_id, job_id=job_id)
    after = _cursor(paging.cursor, "the metrics history")
    page = min(paging.limit or METRICS_PAGE, METRICS_PAGE_MAX)
    path = _file(settings, job, JOB_ARTIFACTS["train_metrics"][0])
    rows: list[dict[str, Any]] = []
    if path is not None:
        for row in iter_jsonl_objects(path):
            step = row.get("step")
            if isinstance(step, int) and not isinstance(step, bool) and step > after:
                rows.append(row)
                if len(rows) == page:
                    break
    return MetricsHistory(data=rows, next_cursor=str(rows[-1]["step"]) if rows else paging.cursor)


@router.get("/jobs/{job_id}/scores", response_model=ScoreList, responses=problems(400, 401, 404, 422),
            summary="The impact score of each pair (pair id -> score), in dataset order, paginated",
            description="Each pair's triage category and its impact weight (normalised, and raw) from the score "
            "stage: how much training on it helps the gold batch; RETAIN pairs have none. `summary` is the "
            "stage's summary (counts, share clamped to zero). 404 until the score stage has run.")
def impact_scores(
    job_id: str,
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    paging: PaginationDep,
) -> ScoreList:
    """404 until the score stage has written the scores (and for variants that do not score)."""
    job = get_job(session, tenant_id=principal.tenant_id, job_id=job_id)
    start = _cursor(paging.cursor, "the scores")
    page = paging.size(settings)
    path = _file(settings, job, JOB_ARTIFACTS["scored"][0])
    if path is None:
        raise ProblemError(404, f"job {job_id} has no impact scores (yet): they exist once its score stage has run, "
                           "for variants that weight pairs by impact", slug="scores-not-found")
    rows: list[ScoreOut] = []
    more = False
    for index, row in enumerate(iter_jsonl_objects(path)):
        if index < start:
            continue
        if len(rows) == page:
            more = True
            break
        rows.append(ScoreOut(pair_id=str(row.get("id")), category=row.get("category"),
                             impact_score=_number(row.get("impact_score")), impact_raw=_number(row.get("impact_raw")),
                             impact_kind=row.get("impact_kind")))
    summary_path = _file(settings, job, JOB_ARTIFACTS["score_summary"][0])
    summary: dict[str, Any] = {}
    if summary_path is not None and start == 0:
        try:
            loaded = json.loads(summary_path.read_text(encoding="utf-8"))
            summary = {k: v for k, v in loaded.items() if k != "top"} if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            summary = {}
    return ScoreList(data=rows, next_cursor=str(start + len(rows)) if more else None, summary=summary)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
