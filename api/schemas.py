"""Request and response models of the HTTP API (the OpenAPI schema is generated from these).

The worker re-reads a job's stored request with `RealignRequest.model_validate(job.request)`. Nothing here imports
torch: variant names come from `trace_engine.variants` (stdlib only); suite names are listed here and a test checks
they match `trace_engine.evaluation.runner.SUITES` (which does import torch).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from api.settings import JUDGE_PROFILE_NAME
from trace_engine.data.presets import PRESETS
from trace_engine.policy import MAX_CLAUSES, MAX_POLICY_CHARS, Policy, check_policy_size
from trace_engine.variants import VARIANTS

EVAL_SUITES: tuple[str, ...] = ("tpa", "asr", "over_refusal", "capability")
CATEGORIES: tuple[str, ...] = ("INVERT", "PUNISH", "RETAIN")
MAX_METADATA_BYTES = 16 * 1024


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- request


class ClauseIn(StrictModel):
    id: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$", max_length=64)
    title: str = Field(default="", max_length=200)
    body: str = Field(min_length=1, max_length=20_000)


class PolicyIn(StrictModel):
    text: str = Field(min_length=1, max_length=MAX_POLICY_CHARS,
                      description="policy markdown; `## [ID] Title` starts a clause")
    name: str = Field(default="policy", min_length=1, max_length=200)
    clauses: list[ClauseIn] | None = Field(default=None, max_length=MAX_CLAUSES,
                                           description="named clauses appended to the text")

    @model_validator(mode="after")
    def _clauses_parse(self) -> PolicyIn:
        if not self.text.strip():
            raise ValueError("policy text is blank")
        # text plus clauses: at most MAX_POLICY_CHARS characters and MAX_CLAUSES clauses; duplicate ids -> 422
        check_policy_size(self.full_text().rstrip())
        return self

    def full_text(self) -> str:
        """The text with `clauses` rendered as clause headings (the form `trace_engine.policy` parses)."""
        parts = [self.text.rstrip()]
        parts += [f"## [{c.id}] {c.title}".rstrip() + f"\n{c.body.strip()}" for c in self.clauses or []]
        return "\n\n".join(parts) + "\n"

    def to_policy(self) -> Policy:
        return Policy(text=self.full_text(), name=self.name)


class HfDataset(StrictModel):
    type: Literal["hf"]
    repo: str = Field(min_length=1, max_length=300, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9_.\-]+)?$")
    revision: str = Field(min_length=1, max_length=100, description="commit sha or tag; always pinned")
    split: str = Field(default="train", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.\-\[\]:%+]+$")
    preset: str | None = Field(default=None, description="column mapping, e.g. pku_saferlhf")

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str | None) -> str | None:
        if value is not None and value not in PRESETS:
            raise ValueError(f"unknown preset {value!r}; known: {', '.join(sorted(PRESETS))}")
        return value


class FileDataset(StrictModel):
    type: Literal["file"]
    file_id: str = Field(min_length=1, max_length=64, description="id from POST /v1/files")


class PathDataset(StrictModel):
    type: Literal["path"]
    path: str = Field(min_length=1, max_length=1000, description="relative to the server's dataset root")


class SyntheticDataset(StrictModel):
    type: Literal["synthetic"]
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    n: int = Field(default=64, ge=1, le=100_000, description="training pairs to generate")


DatasetRef = Annotated[HfDataset | FileDataset | PathDataset | SyntheticDataset, Field(discriminator="type")]


class BaseModelIn(StrictModel):
    name_or_path: str = Field(min_length=1, max_length=500)
    revision: str | None = Field(default=None, max_length=100)


REMOVED_JUDGE_FIELDS = ("base_url", "api_key_secret", "api_key_env", "api_key")
DEFAULT_JUDGE_PROFILE = "default"


class JudgeIn(StrictModel):
    """Which judge grades responses. Network judges are operator-configured **profiles** (`REALIGN_JUDGE_PROFILES`):
    a request names a profile, never a URL or the name of a secret (docs/security.md)."""

    provider: Literal["openai", "rules", "synthetic"] = Field(
        description="openai: an operator-configured OpenAI-compatible endpoint, named by `profile`; rules: a "
                    "clause-rules file; synthetic: the synthetic world's rule judge")
    profile: str | None = Field(default=None, max_length=64, pattern=JUDGE_PROFILE_NAME,
                                description=f"provider openai: the judge profile to use (default "
                                f"{DEFAULT_JUDGE_PROFILE!r}); an unknown name is refused with the known ones")
    model: str | None = Field(default=None, max_length=200, description="provider openai: the model (default: "
                              "the profile's default model; must be one the profile allows)")
    rules_path: str | None = Field(default=None, max_length=1000, description="rules file, relative to the root")

    @model_validator(mode="before")
    @classmethod
    def _no_free_endpoints(cls, data: Any) -> Any:
        if isinstance(data, dict):
            given = [name for name in REMOVED_JUDGE_FIELDS if name in data]
            if given:  # the values are never echoed (one may be a key)
                raise ValueError(f"judge.{', judge.'.join(given)} is not accepted: judge endpoints and their keys "
                                 "are configured by the operator as judge profiles; name one with judge.profile "
                                 "(and optionally judge.model)")
        return data

    @model_validator(mode="after")
    def _provider_fields(self) -> JudgeIn:
        if self.provider == "openai" and self.profile is None:
            self.profile = DEFAULT_JUDGE_PROFILE
        if self.provider == "rules" and not self.rules_path:
            raise ValueError("judge.rules_path is required for provider 'rules'")
        if self.provider != "openai" and self.profile is not None:
            raise ValueError(f"provider {self.provider!r} makes no network calls: drop judge.profile")
        return self


class Hyperparameters(StrictModel):
    """Training knobs (defaults = trace_engine.train.TrainConfig / LoraSettings defaults)."""

    beta: float = Field(default=0.3, gt=0, le=100)
    alpha_kl: float = Field(default=0.1, ge=0, le=100)
    pref_loss: Literal["dpo", "ipo", "rdpo"] = "dpo"
    lr: float = Field(default=1e-4, gt=0, le=1)
    epochs: int = Field(default=1, ge=1, le=100)
    max_steps: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=4, ge=1, le=1024)
    grad_accum: int = Field(default=1, ge=1, le=1024)
    seed: int = Field(default=0, ge=0)
    max_prompt_len: int = Field(default=512, ge=8, le=131072)
    max_len: int = Field(default=1024, ge=16, le=131072)
    lora_r: int = Field(default=32, ge=1, le=1024)
    lora_alpha: int = Field(default=16, ge=1, le=4096)
    lora_dropout: float = Field(default=0.05, ge=0, lt=1)
    normalise: Literal["sum", "mean"] = Field(
        default="sum", description="impact weights: sum to 1 (chosen on the synthetic validation split) or mean 1"
    )
    gold_size: int | None = Field(default=None, ge=3, le=100000, description="gold batch B (default: n/4, ≤ 48)")
    kl_responses: Literal["preferred", "both"] = Field(
        default="preferred", description="RETAIN KL anchor on the preferred response (half the cost) or on both"
    )
    gradient_checkpointing: bool = Field(default=False, description="recompute activations: less GPU memory, slower")
    group_by_length: bool = Field(default=False, description="micro-batches of similar length: less padding")


class MethodIn(StrictModel):
    variant: str = Field(default="trace", description="one of trace_engine.variants.VARIANTS")
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)

    @field_validator("variant")
    @classmethod
    def _known_variant(cls, value: str) -> str:
        if value not in VARIANTS:
            raise ValueError(f"unknown variant {value!r}; known: {', '.join(sorted(VARIANTS))}")
        return value


class EvalIn(StrictModel):
    suites: list[Literal["tpa", "asr", "over_refusal", "capability"]] = Field(
        default_factory=list, description="suites to run at the end; empty = no evaluation stage")


class RealignRequest(StrictModel):
    policy: PolicyIn
    dataset: DatasetRef
    base_model: BaseModelIn
    judge: JudgeIn
    method: MethodIn = Field(default_factory=MethodIn)
    eval: EvalIn = Field(default_factory=EvalIn)
    parent_adapter: str | None = Field(default=None, max_length=200, description="id or name of the adapter this "
                                       "one succeeds (recorded as provenance; evaluations compare against it)")
    adapter_name: str | None = Field(default=None, max_length=120, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$",
                                     description="name of the registered adapter (default: policy name + job id)")
    metadata: dict[str, Any] = Field(default_factory=dict, description=f"free-form, at most {MAX_METADATA_BYTES} "
                                     "bytes of JSON")

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _small(value)


def _small(value: dict[str, Any]) -> dict[str, Any]:
    if len(json.dumps(value, default=str)) > MAX_METADATA_BYTES:
        raise ValueError(f"metadata is larger than {MAX_METADATA_BYTES} bytes of JSON")
    return value


class EvalRequest(StrictModel):
    """POST /v1/evals: evaluate one model (an adapter of yours, or the base model) against a policy."""

    model: str = Field(min_length=1, max_length=500, description="adapter id or name, or the base model's name")
    suites: list[Literal["tpa", "asr", "over_refusal", "capability"]] = Field(min_length=1)
    policy: PolicyIn
    judge: JudgeIn
    dataset: DatasetRef = Field(description="where the evaluation prompts come from (synthetic: the world's "
                                "held-out test, attack and benign sets; otherwise the dataset's prompts, TPA only)")
    n: int = Field(default=40, ge=1, le=100_000, description="prompts per suite (at most)")
    max_new_tokens: int = Field(default=48, ge=1, le=8192)
    compare: bool = Field(default=True, description="also evaluate the base model and the parent adapter")
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _small(value)


# ---------------------------------------------------------------- responses


class StageProgressOut(BaseModel):
    stage: str
    done: int
    total: int | None
    rate_per_s: float | None = Field(description="items per second since the stage started")
    eta_s: float | None = Field(description="seconds left at the current rate")
    started_at: datetime
    updated_at: datetime
    completed_at: datetime | None


class JobOut(BaseModel):
    id: str
    object: Literal["job"] = "job"
    kind: str = Field(default="realign", description="realign | eval")
    state: str
    stage: str | None
    cancel_requested: bool
    progress: list[StageProgressOut]
    category_counts: dict[str, int]
    metrics: dict[str, Any]
    artifacts: dict[str, Any]
    error: dict[str, Any] | None
    request: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobOut]
    next_cursor: str | None


class EvalJobOut(JobOut):
    report: dict[str, Any] | None = Field(default=None, description="the evaluation report once succeeded: per "
                                          "model (target, base, parent) metrics with confidence intervals, and "
                                          "the comparisons")


class AdapterBaseModelOut(BaseModel):
    name_or_path: str | None = Field(description="the base model as the job's request named it (a Hub id, a name "
                                     "under the model root, or synthetic-tiny)")
    revision: str | None = None


class LoraOut(BaseModel):
    """The adapter's LoRA settings, as its adapter_config.json (what peft and vLLM load) has them."""

    r: int | None = Field(default=None, description="rank")
    alpha: float | None = Field(default=None, description="lora_alpha (the update is scaled by alpha / r)")
    dropout: float | None = None
    target_modules: list[str] | str | None = Field(default=None, description="module names (or peft's regex)")
    peft_type: str | None = None


class AdapterOut(BaseModel):
    id: str
    object: Literal["adapter"] = "adapter"
    name: str
    job_id: str | None
    sha256: str = Field(description="sha256 of adapter_model.safetensors")
    size_bytes: int
    base_model: AdapterBaseModelOut
    lora: LoraOut | None = Field(description="None when the adapter's adapter_config.json is unreadable")
    provenance: dict[str, Any]
    eval_report: dict[str, Any] | None
    deploy_gate: dict[str, Any] | None = Field(description="the deploy gate's cached result (None: not served yet)")
    created_at: datetime


class AdapterList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AdapterOut]
    next_cursor: str | None


class ArtifactOut(BaseModel):
    name: str = Field(description="the name to download it by: GET /v1/jobs/{job_id}/artifacts/{name}")
    kind: str = Field(description="triaged_pairs | impact_scores | metrics_history | eval_report | eval_prompts | "
                      "dataset_snapshot | triage_summary | impact_score_summary | adapter")
    file: str = Field(description="its place in the job's folder (relative; for reference only)")
    size_bytes: int = Field(description="of the stored file (the adapter: of its weights)")
    sha256: str | None = Field(description="of the file's bytes; None for large files, the adapter archive and "
                               "the triaged pairs (served with judge error texts sanitised)")
    content_type: str
    url: str = Field(description="download path on this service")


class ArtifactList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ArtifactOut]


class MetricsHistory(BaseModel):
    """Training metrics per optimizer step, as the trainer appends them to train/metrics.jsonl (a step's line is
    on disk before the next step starts, so the history survives a crash up to the last finished step)."""

    object: Literal["list"] = "list"
    data: list[dict[str, Any]] = Field(description="one object per step: step, epoch, loss, loss_pref, loss_npo, "
                                       "kl, reward_chosen, reward_rejected, margin, accuracy, npo_reward, lr, "
                                       "grad_norm, tokens, tokens_per_s, seconds, example counts")
    next_cursor: str | None = Field(description="the last step returned (else the cursor sent): pass it as "
                                    "`cursor` for later steps; an empty page means none yet")


class ScoreOut(BaseModel):
    pair_id: str
    category: str | None = Field(description="the pair's triage category")
    impact_score: float | None = Field(description="normalised impact weight (None: not a conflicting pair)")
    impact_raw: float | None = Field(description="the raw impact score before normalisation")
    impact_kind: str | None


class ScoreList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ScoreOut]
    next_cursor: str | None
    summary: dict[str, Any] = Field(default_factory=dict, description="the scoring summary (score/summary.json)")


class EventOut(BaseModel):
    id: int
    job_id: str
    type: str
    stage: str | None
    data: dict[str, Any]
    created_at: datetime


class EventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EventOut]
    next_cursor: str | None


class TriageItemOut(BaseModel):
    pair_id: str
    position: int
    category: str
    verdicts: dict[str, Any]


class TriageList(BaseModel):
    object: Literal["list"] = "list"
    data: list[TriageItemOut]
    next_cursor: str | None
    category_counts: dict[str, int]


class FileOut(BaseModel):
    id: str
    object: Literal["file"] = "file"
    filename: str
    format: str
    size_bytes: int
    sha256: str
    rows: int
    pairs: int
    report: dict[str, Any]
    created_at: datetime


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileOut]
    next_cursor: str | None


class FieldError(BaseModel):
    loc: list[str | int] | None = None
    row: int | None = None
    field: str | None = None
    kind: str | None = None
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details (application/problem+json)."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[FieldError] | None = None


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)
    workers: dict[str, int] = Field(default_factory=dict, description="live workers per queue (judge, gpu)")
    serving: dict[str, Any] | None = Field(default=None, description="the gateway's serving backend, when one is "
                                           "configured: `isolation` (mode, the null adapter, whether adapters "
                                           "are served, the self-test's measured differences); does not make "
                                           "the API unready")
