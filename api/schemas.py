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
from trace_engine.variants import VARIANTS, DataError, check_pref_loss

EVAL_SUITES: tuple[str, ...] = ("tpa", "asr", "over_refusal", "capability")
CATEGORIES: tuple[str, ...] = ("INVERT", "PUNISH", "RETAIN")
MAX_METADATA_BYTES = 16 * 1024

# ---------------------------------------------------------------- request examples (OpenAPI; tests validate them
# against the schemas and submit the synthetic ones)

_HOME_HELP_POLICY = {
    "name": "home-help-v2",
    "text": "# Home-help assistant policy, v2\n\nRequests no clause covers are answered helpfully.\n",
    "clauses": [
        {"id": "P1", "title": "No lock-picking instructions", "body": "Decline requests to pick or bypass a lock "
         "and suggest a licensed locksmith; give no method."},
        {"id": "P2", "title": "No specific medication doses", "body": "Never give a dose or schedule; refer the "
         "user to a pharmacist or doctor."},
    ],
}
_SYNTHETIC_POLICY = {
    "name": "synthetic-new-policy",
    "text": "# Assistant policy v2\n\n## [H1] Refuse operational harm\nRequests for operational help to hurt "
            "people or damage systems must be refused.\n\n## [E1] Engage with educational and support questions\n"
            "Educational questions about security, mental-health support and personal finance must be answered.\n",
}
REALIGN_EXAMPLES: dict[str, dict[str, Any]] = {
    "synthetic": {
        "summary": "The demo: the synthetic world's pairs on its tiny model (no GPU, no network, no key)",
        "value": {
            "policy": _SYNTHETIC_POLICY,
            "dataset": {"type": "synthetic", "seed": 0, "n": 480},
            "base_model": {"name_or_path": "synthetic-tiny"},
            "judge": {"provider": "synthetic"},
            "method": {"variant": "trace", "hyperparameters": {"lr": 0.002, "epochs": 3, "batch_size": 16,
                                                               "max_prompt_len": 64, "max_len": 128, "lora_r": 8}},
            "eval": {"suites": ["tpa", "asr", "over_refusal"]},
        },
    },
    "own_data": {
        "summary": "Your uploaded pairs on a model under the model root, judged by the operator's `default` "
                   "OpenAI-compatible judge profile",
        "value": {
            "policy": _HOME_HELP_POLICY,
            "dataset": {"type": "file", "file_id": "file_0193b2c4d5e6a1b2c3d4e5f6a7b8"},
            "base_model": {"name_or_path": "smollm2-135m-instruct"},
            "judge": {"provider": "openai", "profile": "default", "model": "gpt-4o-mini"},
            "method": {"variant": "trace", "hyperparameters": {"epochs": 2, "lora_r": 16, "lora_alpha": 32}},
            "eval": {"suites": ["tpa"]},
            "adapter_name": "home-help-v2",
            "metadata": {"ticket": "POL-42"},
        },
    },
}
EVAL_EXAMPLES: dict[str, dict[str, Any]] = {
    "synthetic": {
        "summary": "The synthetic world's tiny base model on three suites (no GPU, no network, no key)",
        "value": {"model": "synthetic-tiny", "suites": ["tpa", "asr", "over_refusal"], "policy": _SYNTHETIC_POLICY,
                  "judge": {"provider": "synthetic"}, "dataset": {"type": "synthetic", "seed": 0}, "n": 40},
    },
    "adapter": {
        "summary": "One of your adapters on your own prompts, next to its base model and parent",
        "value": {"model": "home-help-v2", "suites": ["tpa"], "policy": _HOME_HELP_POLICY,
                  "judge": {"provider": "openai", "profile": "default"},
                  "dataset": {"type": "file", "file_id": "file_0193b2c4d5e6a1b2c3d4e5f6a7b8"},
                  "n": 100, "max_new_tokens": 128, "compare": True},
    },
}


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- request


class ClauseIn(StrictModel):
    id: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$", max_length=64, description="the clause id verdicts cite, e.g. "
                    "`P1` (rendered as the heading `## [P1] Title`)")
    title: str = Field(default="", max_length=200, description="a short title for the heading")
    body: str = Field(min_length=1, max_length=20_000, description="what the clause requires, in plain language")


class PolicyIn(StrictModel):
    text: str = Field(min_length=1, max_length=MAX_POLICY_CHARS,
                      description="the new policy as markdown; a heading `## [ID] Title` starts a named clause "
                      f"(text plus clauses: at most {MAX_POLICY_CHARS} characters and {MAX_CLAUSES} clauses)")
    name: str = Field(default="policy", min_length=1, max_length=200, description="a name for the policy (the "
                      "default adapter name starts with it); its identity everywhere is the text's sha256")
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
    """A Hugging Face Hub dataset at a pinned revision (the worker downloads it)."""

    type: Literal["hf"] = Field(description="a Hugging Face Hub dataset")
    repo: str = Field(min_length=1, max_length=300, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9_.\-]+)?$",
                      description="the dataset's Hub id, e.g. `PKU-Alignment/PKU-SafeRLHF`")
    revision: str = Field(min_length=1, max_length=100, description="the commit sha to read (a tag is accepted "
                          "but can move); required, so a job is reproducible")
    split: str = Field(default="train", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.\-\[\]:%+]+$",
                       description="the split, with an optional slice (`train[:2000]`)")
    preset: str | None = Field(default=None, description="a column mapping for a known dataset "
                               f"({', '.join(sorted(PRESETS))}); none: the rows already have prompt, chosen and "
                               "rejected")

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str | None) -> str | None:
        if value is not None and value not in PRESETS:
            raise ValueError(f"unknown preset {value!r}; known: {', '.join(sorted(PRESETS))}")
        return value


class FileDataset(StrictModel):
    """A pair file you uploaded."""

    type: Literal["file"] = Field(description="a file uploaded with POST /v1/files")
    file_id: str = Field(min_length=1, max_length=64, description="the `id` POST /v1/files returned")


class PathDataset(StrictModel):
    """A pair file the operator placed on the server."""

    type: Literal["path"] = Field(description="a file under the server's dataset root (REALIGN_DATASET_ROOT)")
    path: str = Field(min_length=1, max_length=1000, description="relative to the server's dataset root; a path "
                      "that leaves the root is refused")


class SyntheticDataset(StrictModel):
    """Pairs generated from the built-in synthetic world (for demos and tests; pair it with `synthetic-tiny`)."""

    type: Literal["synthetic"] = Field(description="the synthetic world's pairs, generated on the worker")
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="the world's seed (same seed, same pairs)")
    n: int = Field(default=64, ge=1, le=100_000, description="training pairs to generate")


DatasetRef = Annotated[HfDataset | FileDataset | PathDataset | SyntheticDataset, Field(discriminator="type")]


class BaseModelIn(StrictModel):
    """The model the adapter is trained on (and later served on)."""

    name_or_path: str = Field(min_length=1, max_length=500, description="a folder under the server's model root "
                              "(REALIGN_MODEL_ROOT), a Hugging Face Hub id, or `synthetic-tiny` (the synthetic "
                              "world's cached tiny model)")
    revision: str | None = Field(default=None, max_length=100, description="required for a Hub model: its "
                                 "40-character commit sha (a branch like `main` can change under you); not used "
                                 "for local folders")


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
    rules_path: str | None = Field(default=None, max_length=1000, description="provider rules: the clause-rules "
                                   "file (docs/rules-format.md), relative to the server's dataset root")

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

    beta: float = Field(default=0.3, gt=0, le=100, description="the preference loss's β (strength of the implicit "
                        "KL to the reference in DPO/IPO/rDPO and NPO)")
    alpha_kl: float = Field(default=0.1, ge=0, le=100, description="weight of the RETAIN pairs' KL anchor")
    pref_loss: Literal["dpo", "ipo", "rdpo"] = Field(default="dpo", description="the preference loss on INVERT "
                                                     "pairs (variants that fix one, e.g. `ipo`, override it)")
    lr: float = Field(default=1e-4, gt=0, le=1, description="peak learning rate of the LoRA weights")
    epochs: int = Field(default=1, ge=1, le=100, description="passes over the training examples")
    max_steps: int | None = Field(default=None, ge=1, description="stop after this many optimizer steps (default: "
                                  "the epochs decide)")
    batch_size: int = Field(default=4, ge=1, le=1024, description="examples per micro-batch")
    grad_accum: int = Field(default=1, ge=1, le=1024, description="micro-batches per optimizer step")
    seed: int = Field(default=0, ge=0, description="seed of the data order, gold batch and LoRA initialisation")
    max_prompt_len: int = Field(default=512, ge=8, le=131072, description="prompt tokens kept (longer prompts "
                                "are truncated from the left)")
    max_len: int = Field(default=1024, ge=16, le=131072, description="prompt + response tokens kept")
    lora_r: int = Field(default=32, ge=1, le=1024, description="LoRA rank")
    lora_alpha: int = Field(default=16, ge=1, le=4096, description="LoRA alpha (the update is scaled by "
                            "alpha / r)")
    lora_dropout: float = Field(default=0.05, ge=0, lt=1, description="dropout on the LoRA input")
    normalise: Literal["sum", "mean"] = Field(
        default="sum", description="impact weights: sum to 1 (chosen on the synthetic validation split) or mean 1"
    )
    gold_size: int | None = Field(default=None, ge=3, le=100000, description="gold batch B (default: n/4, ≤ 48)")
    kl_responses: Literal["preferred", "both"] = Field(
        default="preferred", description="RETAIN KL anchor on the preferred response (half the cost) or on both"
    )
    gradient_checkpointing: bool = Field(default=False, description="recompute activations: less GPU memory, slower")
    group_by_length: bool = Field(default=False, description="micro-batches of similar length: less padding")


def _variants_text() -> str:
    """One markdown line per training variant, from the engine's table (the enum and this text never drift)."""
    return "\n".join(f"- `{name}`: {spec.description}" for name, spec in VARIANTS.items())


class MethodIn(StrictModel):
    """How to train: the variant (TRACE or a baseline) and its hyperparameters."""

    variant: str = Field(default="trace", description="the training recipe; TRACE or one of the baselines it is "
                         "compared with (INVERT / PUNISH / RETAIN are the triage categories):\n\n"
                         + _variants_text(), json_schema_extra={"enum": list(VARIANTS)})
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters, description="training knobs; "
                                             "omitted ones take their defaults")

    @field_validator("variant")
    @classmethod
    def _known_variant(cls, value: str) -> str:
        if value not in VARIANTS:
            raise ValueError(f"unknown variant {value!r}; known: {', '.join(sorted(VARIANTS))}")
        return value

    @model_validator(mode="after")
    def _loss_fits_the_variant(self) -> MethodIn:
        try:  # the engine's rule, so the service refuses exactly what the CLI and training refuse
            check_pref_loss(self.variant, self.hyperparameters.pref_loss)
        except DataError as exc:
            raise ValueError(str(exc)) from None
        return self


_SUITES_TEXT = ("tpa: target-policy agreement on held-out prompts (on your own data up to one in five distinct "
                "prompts is held out of training); asr: attack success rate; over_refusal: refusals of benign "
                "requests; capability: answers unrelated to the policy (synthetic world)")


class EvalIn(StrictModel):
    """Which evaluation suites run after training."""

    suites: list[Literal["tpa", "asr", "over_refusal", "capability"]] = Field(
        default_factory=list, description=f"suites to run at the end; empty = no evaluation stage. {_SUITES_TEXT}")


class RealignRequest(StrictModel):
    """POST /v1/realign: re-align a base model's preferences to a new policy."""

    model_config = ConfigDict(json_schema_extra={"examples": [e["value"] for e in REALIGN_EXAMPLES.values()]})

    policy: PolicyIn = Field(description="the NEW policy the adapter should follow")
    dataset: DatasetRef = Field(description="your existing preference pairs (collected under the old policy)")
    base_model: BaseModelIn = Field(description="the model to train the adapter on")
    judge: JudgeIn = Field(description="who grades each response under the new policy (triage and evaluation)")
    method: MethodIn = Field(default_factory=MethodIn, description="training variant and hyperparameters")
    eval: EvalIn = Field(default_factory=EvalIn, description="evaluation suites after training")
    parent_adapter: str | None = Field(default=None, max_length=200, description="id or name of the adapter this "
                                       "one succeeds (recorded as provenance; evaluations compare against it)")
    adapter_name: str | None = Field(default=None, max_length=120, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$",
                                     description="name of the registered adapter (default: policy name + job id)")
    metadata: dict[str, Any] = Field(default_factory=dict, description=f"free-form, at most {MAX_METADATA_BYTES} "
                                     "bytes of JSON")
    review: bool = Field(default=False, description="stop after triage in `awaiting_review` so a person can check "
                         "and override categories (PATCH /v1/jobs/{id}/triage/{pair_id}), then POST "
                         "/v1/jobs/{id}/continue")

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

    model_config = ConfigDict(json_schema_extra={"examples": [e["value"] for e in EVAL_EXAMPLES.values()]})

    model: str = Field(min_length=1, max_length=500, description="adapter id or name, or the base model's name")
    suites: list[Literal["tpa", "asr", "over_refusal", "capability"]] = Field(
        min_length=1, description=f"suites to run (at least one). {_SUITES_TEXT}")
    policy: PolicyIn = Field(description="the policy the answers are judged against")
    judge: JudgeIn = Field(description="who grades each answer under the policy")
    dataset: DatasetRef = Field(description="where the evaluation prompts come from (synthetic: the world's "
                                "held-out test, attack and benign sets; otherwise the dataset's prompts, TPA only)")
    n: int = Field(default=40, ge=1, le=100_000, description="prompts per suite (at most)")
    max_new_tokens: int = Field(default=48, ge=1, le=8192, description="tokens generated per answer (greedy)")
    compare: bool = Field(default=True, description="also evaluate the base model and the parent adapter")
    metadata: dict[str, Any] = Field(default_factory=dict, description=f"free-form, at most {MAX_METADATA_BYTES} "
                                     "bytes of JSON")

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _small(value)


# ---------------------------------------------------------------- responses


_NEXT_CURSOR = "pass it back as `cursor` for the next page; null on the last page"
_OBJECT = "the object's type (OpenAI-style)"
_CREATED = "when it was created (UTC)"


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


class JobList(BaseModel):
    """A page of jobs, newest first."""

    object: Literal["list"] = Field(default="list", description=_OBJECT)
    data: list[JobOut] = Field(description="the jobs on this page")
    next_cursor: str | None = Field(description=_NEXT_CURSOR)


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


class AdapterList(BaseModel):
    """A page of adapters, newest first."""

    object: Literal["list"] = Field(default="list", description=_OBJECT)
    data: list[AdapterOut] = Field(description="the adapters on this page")
    next_cursor: str | None = Field(description=_NEXT_CURSOR)


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


class ScoreList(BaseModel):
    """A page of impact scores, in dataset order."""

    object: Literal["list"] = Field(default="list", description=_OBJECT)
    data: list[ScoreOut] = Field(description="the pairs on this page")
    next_cursor: str | None = Field(description=_NEXT_CURSOR)
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


class EventList(BaseModel):
    """A page of a job's events, oldest first."""

    object: Literal["list"] = Field(default="list", description=_OBJECT)
    data: list[EventOut] = Field(description="the events on this page")
    next_cursor: str | None = Field(description=_NEXT_CURSOR)


class TriageItemOut(BaseModel):
    """One triaged pair."""

    pair_id: str = Field(description="the pair's id")
    position: int = Field(description="its row in the dataset (0-based)")
    category: str = Field(description="INVERT, PUNISH or RETAIN (or ERROR when the judge failed on it)")
    verdicts: dict[str, Any] = Field(description="the judge's verdict on each response (chosen, rejected): "
                                     "compliant or violating, the clauses it cites, the rationale")


class TriageList(BaseModel):
    """A page of triaged pairs, in dataset order."""

    object: Literal["list"] = Field(default="list", description=_OBJECT)
    data: list[TriageItemOut] = Field(description="the pairs on this page")
    next_cursor: str | None = Field(description=_NEXT_CURSOR)
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


class FileList(BaseModel):
    """A page of files, newest first."""

    object: Literal["list"] = Field(default="list", description=_OBJECT)
    data: list[FileOut] = Field(description="the files on this page")
    next_cursor: str | None = Field(description=_NEXT_CURSOR)


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
