"""Response models of the HTTP API (the OpenAPI schema is generated from these and from `core.jobspec`'s request
models)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

# ---------------------------------------------------------------- responses


_NEXT_CURSOR = "pass it back as `cursor` for the next page; null on the last page"
_OBJECT = "the object's type (OpenAI-style)"
_CREATED = "when it was created (UTC)"
T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """A page of a list, in the order its route states; every paginated list has this shape."""

    object: Literal["list"] = Field(default="list", description=_OBJECT)
    data: list[T] = Field(description="the items on this page")
    next_cursor: str | None = Field(description=_NEXT_CURSOR)


class StageProgressOut(BaseModel):
    """How far one stage of a job has got."""

    stage: str = Field(description="validate, triage, score, train or evaluate")
    done: int = Field(description="items finished (pairs judged, pairs scored, optimizer steps, answers generated)")
    total: int | None = Field(description="items in the stage, when known")
    rate_per_s: float | None = Field(description="items per second since the stage started")
    eta_s: float | None = Field(description="seconds left at the current rate")
    started_at: datetime = Field(description="when the stage started (UTC)")
    updated_at: datetime = Field(description="the last progress write (UTC)")
    completed_at: datetime | None = Field(description="when the stage finished; null while it runs")


class JobOut(BaseModel):
    """A re-alignment or evaluation job."""

    id: str = Field(description="the job's id (`job_...`)")
    object: Literal["job"] = Field(default="job", description=_OBJECT)
    kind: str = Field(default="realign", description="realign | eval")
    state: str = Field(description="queued, validating, triaging, scoring, training, evaluating, succeeded, "
                       "failed, cancelling or cancelled (awaiting_review when the request asked for a review)")
    stage: str | None = Field(description="the stage running or next to run; null once finished")
    cancel_requested: bool = Field(description="a cancel was asked for; the worker stops at its next check")
    progress: list[StageProgressOut] = Field(description="one entry per stage started so far")
    category_counts: dict[str, int] = Field(description="triaged pairs per category (INVERT, PUNISH, RETAIN, "
                                            "and judge errors)")
    metrics: dict[str, Any] = Field(description="stage summaries: triage shares, scoring, training (steps, "
                                    "losses), and `eval` (e.g. tpa_before, tpa_after) once evaluated")
    artifacts: dict[str, Any] = Field(description="what the stages produced (relative files, `adapter_id` once "
                                      "registered); GET /v1/jobs/{job_id}/artifacts lists them for download")
    error: dict[str, Any] | None = Field(description="why a failed job failed (sanitised: no secrets or server "
                                         "paths); null otherwise")
    request: dict[str, Any] = Field(description="the request as stored, defaults filled in")
    created_at: datetime = Field(description=_CREATED)
    updated_at: datetime = Field(description="the last change of state or progress (UTC)")
    finished_at: datetime | None = Field(description="when it reached succeeded, failed or cancelled; null "
                                         "before")


class EvalJobOut(JobOut):
    report: dict[str, Any] | None = Field(default=None, description="the evaluation report once succeeded: per "
                                          "model (target, base, parent) metrics with confidence intervals, and "
                                          "the comparisons")


class AdapterBaseModelOut(BaseModel):
    """The base model an adapter was trained on."""

    name_or_path: str | None = Field(description="the base model as the job's request named it (a Hub id, a name "
                                     "under the model root, or synthetic-tiny)")
    revision: str | None = Field(default=None, description="the Hub revision the request pinned, if any")


class LoraOut(BaseModel):
    """The adapter's LoRA settings, as its adapter_config.json (what peft and vLLM load) has them."""

    r: int | None = Field(default=None, description="rank")
    alpha: float | None = Field(default=None, description="lora_alpha (the update is scaled by alpha / r)")
    dropout: float | None = Field(default=None, description="lora_dropout used in training")
    target_modules: list[str] | str | None = Field(default=None, description="module names (or peft's regex)")
    peft_type: str | None = Field(default=None, description="peft's adapter type (LORA)")


class AdapterOut(BaseModel):
    """A registered LoRA adapter."""

    id: str = Field(description="the adapter's id (`ada_...`); `model` in the gateway takes it or the name")
    object: Literal["adapter"] = Field(default="adapter", description=_OBJECT)
    name: str = Field(description="its unique name in your tenant (the request's adapter_name, or a default)")
    job_id: str | None = Field(description="the job that trained it")
    sha256: str = Field(description="sha256 of adapter_model.safetensors")
    size_bytes: int = Field(description="size of adapter_model.safetensors")
    base_model: AdapterBaseModelOut = Field(description="the model it was trained on (and must be served on)")
    lora: LoraOut | None = Field(description="None when the adapter's adapter_config.json is unreadable")
    provenance: dict[str, Any] = Field(description="what it was made from: job, policy (name, sha256), dataset "
                                       "(reference, sha256), base model, judge, method, metrics, parent adapter")
    eval_report: dict[str, Any] | None = Field(description="the job's evaluation summary; null without one")
    deploy_gate: dict[str, Any] | None = Field(description="the deploy gate's cached result (None: not served yet)")
    created_at: datetime = Field(description=_CREATED)


class ArtifactOut(BaseModel):
    name: str = Field(description="the name to download it by: GET /v1/jobs/{job_id}/artifacts/{name}")
    kind: str = Field(description="triaged_pairs | impact_scores | metrics_history | eval_report | eval_prompts | "
                      "dataset_snapshot | triage_summary | impact_score_summary | adapter")
    file: str = Field(description="its place in the job's folder (relative; for reference only)")
    size_bytes: int = Field(description="of the stored file (the adapter: of its weights)")
    sha256: str | None = Field(description="of the file's bytes; None for large files, the adapter archive and "
                               "the triaged pairs (served with judge error texts sanitised)")
    content_type: str = Field(description="the media type it is downloaded with")
    url: str = Field(description="download path on this service")


class ArtifactList(BaseModel):
    """A job's artifacts."""

    object: Literal["list"] = Field(default="list", description=_OBJECT)
    data: list[ArtifactOut] = Field(description="one entry per artifact the job has so far")


class MetricsHistory(BaseModel):
    """Training metrics per optimizer step, as the trainer appends them to train/metrics.jsonl (a step's line is
    on disk before the next step starts, so the history survives a crash up to the last finished step)."""

    object: Literal["list"] = Field(default="list", description=_OBJECT)
    data: list[dict[str, Any]] = Field(description="one object per step: step, epoch, loss, loss_pref, loss_npo, "
                                       "kl, reward_chosen, reward_rejected, margin, accuracy, npo_reward, lr, "
                                       "grad_norm, tokens, tokens_per_s, seconds, example counts")
    next_cursor: str | None = Field(description="the last step returned (else the cursor sent): pass it as "
                                    "`cursor` for later steps; an empty page means none yet")


class ScoreOut(BaseModel):
    """One pair's impact score."""

    pair_id: str = Field(description="the pair's id (from the dataset, or assigned when it had none)")
    category: str | None = Field(description="the pair's triage category")
    impact_score: float | None = Field(description="normalised impact weight (None: not a conflicting pair)")
    impact_raw: float | None = Field(description="the raw impact score before normalisation")
    impact_kind: str | None = Field(description="how the score was computed (the scorer's kind)")


class ScoreList(Page[ScoreOut]):
    """A page of impact scores, in dataset order."""

    summary: dict[str, Any] = Field(default_factory=dict, description="the scoring summary (score/summary.json)")


class EventOut(BaseModel):
    """One typed event of a job."""

    id: int = Field(description="increasing per service; the SSE frame's `id` (send it back as Last-Event-ID)")
    job_id: str = Field(description="the job it belongs to")
    type: str = Field(description="state_changed, stage_started, progress, stage_completed, warning, error, "
                      "cancel_requested, retried, artifact, ...")
    stage: str | None = Field(description="the stage it concerns, if any")
    data: dict[str, Any] = Field(description="the event's details (e.g. from/to states, counts, a message)")
    created_at: datetime = Field(description=_CREATED)


class TriageItemOut(BaseModel):
    """One triaged pair."""

    pair_id: str = Field(description="the pair's id")
    position: int = Field(description="its row in the dataset (0-based)")
    category: str = Field(description="INVERT, PUNISH or RETAIN (or ERROR when the judge failed on it)")
    verdicts: dict[str, Any] = Field(description="the judge's verdict on each response (chosen, rejected): "
                                     "compliant or violating, the clauses it cites, the rationale")


class TriageList(Page[TriageItemOut]):
    """A page of triaged pairs, in dataset order."""

    category_counts: dict[str, int] = Field(description="pairs per category over the whole job")


class FileOut(BaseModel):
    """An uploaded pair file, validated."""

    id: str = Field(description="the file's id (`file_...`): use it as dataset.file_id")
    object: Literal["file"] = Field(default="file", description=_OBJECT)
    filename: str = Field(description="the uploaded file's name")
    format: str = Field(description="jsonl, json or parquet (from the file name)")
    size_bytes: int = Field(description="size of the stored file")
    sha256: str = Field(description="sha256 of the file's bytes")
    rows: int = Field(description="rows read")
    pairs: int = Field(description="usable preference pairs among them")
    report: dict[str, Any] = Field(description="the validation report: counts, warnings and issues by kind")
    created_at: datetime = Field(description=_CREATED)


class FieldError(BaseModel):
    """One thing wrong with the request: where (loc, or row and field of a data file) and what."""

    loc: list[str | int] | None = Field(default=None, description="path to the bad input, e.g. "
                                        "[\"body\", \"method\", \"variant\"]")
    row: int | None = Field(default=None, description="the data file's row (1-based), for row errors")
    field: str | None = Field(default=None, description="the field, dotted (e.g. `dataset.file_id`)")
    kind: str | None = Field(default=None, description="a machine-readable error kind")
    message: str = Field(description="what is wrong, for people")


class Problem(BaseModel):
    """RFC 9457 problem details (application/problem+json)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(default="about:blank", description="a URI naming the kind of problem")
    title: str = Field(description="a short summary of the kind of problem")
    status: int = Field(description="the HTTP status code")
    detail: str = Field(description="what went wrong with this request")
    instance: str | None = Field(default=None, description="the request path it concerns")
    errors: list[FieldError] | None = Field(default=None, description="field or row errors (422)")


class Health(BaseModel):
    """Liveness / readiness."""

    status: Literal["ok", "unavailable"] = Field(description="ok, or unavailable when a dependency is down")
    checks: dict[str, str] = Field(default_factory=dict, description="each dependency (database, broker) and its "
                                   "state")
    workers: dict[str, int] = Field(default_factory=dict, description="live workers per queue (judge, gpu)")
    serving: dict[str, Any] | None = Field(default=None, description="the gateway's serving backend, when one is "
                                           "configured: `isolation` (mode, the null adapter, whether adapters "
                                           "are served, the self-test's measured differences); does not make "
                                           "the API unready")
