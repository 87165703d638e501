"""The job specs: the request models of POST /v1/jobs and POST /v1/evals, which the API validates and stores and
the worker parses again (the OpenAPI schema is generated from these and from `api.schemas`' responses).

The worker re-reads a job's stored request with `RealignRequest.model_validate(job.request)`. Nothing here imports
torch: variant names come from `trace_engine.variants` (stdlib only); suite names are listed here and a test checks
they match `trace_engine.evaluation.runner.SUITES` (which does import torch).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.settings import JUDGE_PROFILE_NAME
from trace_engine.config import DEFAULT_CHECK_ANCHORS, DEFAULT_UNIFORM_MIX, DEFAULT_WEIGHT_CAP, TrainConfig
from trace_engine.data.presets import PRESETS
from trace_engine.gold import GoldSource
from trace_engine.policy import MAX_CLAUSES, MAX_POLICY_CHARS, Policy, check_policy_size
from trace_engine.variants import VARIANTS, DataError, check_pref_loss

EVAL_SUITES: tuple[str, ...] = ("tpa", "asr", "over_refusal", "capability")
MAX_METADATA_BYTES = 16 * 1024
SYNTHETIC_BASE_NAMES = frozenset({"synthetic-tiny", "synthetic"})  # the built-in synthetic base model

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


_TRAIN = TrainConfig()  # the engine's defaults: a knob a request leaves out trains as `realign train` would


class Hyperparameters(StrictModel):
    """Training knobs; their defaults are the engine's (`TrainConfig`, its `LoraSettings`), read from it."""

    beta: float = Field(default=_TRAIN.beta, gt=0, le=100, description="the preference loss's β (strength of the "
                        "implicit KL to the reference in DPO/IPO/rDPO and NPO)")
    alpha_kl: float = Field(default=_TRAIN.alpha_kl, ge=0, le=100, description="weight of the RETAIN pairs' KL "
                            "anchor")
    pref_loss: Literal["dpo", "ipo", "rdpo"] = Field(default=_TRAIN.pref_loss, description="the preference loss on "
                                                     "INVERT pairs (variants that fix one, e.g. `ipo`, override it)")
    lr: float = Field(default=_TRAIN.lr, gt=0, le=1, description="peak learning rate of the LoRA weights")
    epochs: int = Field(default=_TRAIN.epochs, ge=1, le=100, description="passes over the training examples")
    max_steps: int | None = Field(default=_TRAIN.max_steps, ge=1, description="stop after this many optimizer steps "
                                  "(default: the epochs decide)")
    batch_size: int = Field(default=_TRAIN.batch_size, ge=1, le=1024, description="examples per micro-batch")
    grad_accum: int = Field(default=_TRAIN.grad_accum, ge=1, le=1024, description="micro-batches per optimizer step")
    seed: int = Field(default=_TRAIN.seed, ge=0, description="seed of the data order, gold batch and LoRA "
                      "initialisation")
    max_prompt_len: int = Field(default=_TRAIN.max_prompt_len, ge=8, le=131072, description="prompt tokens kept "
                                "(longer prompts are truncated from the left)")
    max_len: int = Field(default=_TRAIN.max_len, ge=16, le=131072, description="prompt + response tokens kept")
    lora_r: int = Field(default=_TRAIN.lora.r, ge=1, le=1024, description="LoRA rank")
    lora_alpha: int = Field(default=_TRAIN.lora.alpha, ge=1, le=4096, description="LoRA alpha (the update is scaled "
                            "by alpha / r)")
    lora_dropout: float = Field(default=_TRAIN.lora.dropout, ge=0, lt=1, description="dropout on the LoRA input")
    normalise: Literal["sum", "mean"] = Field(
        default="sum", description="impact weights: sum to 1 (chosen on the synthetic validation split) or mean 1"
    )
    gold_size: int | None = Field(default=None, ge=3, le=100000, description="gold batch B (default: n/4, ≤ 48)")
    weight_cap: float | None = Field(
        default=DEFAULT_WEIGHT_CAP, ge=1, le=1e6, description="no conflicting pair's impact weight exceeds this many "
        "times the uniform weight (the excess goes to the other positive pairs), so a few mislabelled pairs cannot "
        "carry the loss; null: no cap. Default chosen on the synthetic validation split under noisy triage"
    )
    uniform_mix: float = Field(
        default=DEFAULT_UNIFORM_MIX, ge=0, le=1, description="λ: impact weights mixed with uniform ones, (1 - λ) w + "
        "λ · uniform: a floor under every conflicting pair (1 = uniform weights). The real-text benchmark's "
        "validation chose 0.5"
    )
    gate_weights: bool = Field(
        default=False, description="impact scores decide which conflicting pairs train, not how much: a pair that "
        "scores > 0 keeps the uniform weight, the others are dropped (a kind with no positive score is kept whole). "
        "Under noisy triage on the real-text benchmark it kept the mislabelled INVERT pairs out (docs/benchmarks.md)"
    )
    check_anchors: bool = Field(
        default=DEFAULT_CHECK_ANCHORS, description="score each RETAIN pair's preference against the gold batch's "
        "RETAIN pairs and drop the KL anchor of pairs that contradict them (a swapped pair would anchor the wrong "
        "response). Default on, chosen on validation: under 10% noisy triage on the real-text benchmark TPA 31.2 -> "
        "47.9%, a tie on the synthetic world; false anchors every RETAIN pair, as published"
    )
    gold_from: GoldSource = Field(
        default="all", description='pairs the gold batch (which sets every impact score) is drawn from: all, trusted '
        '(pairs marked "trusted": true in the dataset; the job fails in scoring if none is) or auto (the trusted '
        "pairs when any is marked, else all)"
    )
    kl_responses: Literal["preferred", "both"] = Field(
        default=_TRAIN.kl_responses, description="RETAIN KL anchor on the preferred response (half the cost) or on "
        "both"
    )
    gradient_checkpointing: bool = Field(default=_TRAIN.gradient_checkpointing, description="recompute activations: "
                                         "less GPU memory, slower")
    group_by_length: bool = Field(default=_TRAIN.group_by_length, description="micro-batches of similar length: less "
                                  "padding")


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
