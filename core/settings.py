"""Service configuration: one `Settings` read from `REALIGN_*` environment variables (or passed in by tests/CLI).

With no database configured the service runs embedded on SQLite under the data dir (design.md §7).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATA_DIR = Path.home() / ".realign"
JUDGE_PROFILE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
SECRET_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"


class JudgeProfile(BaseModel):
    """An operator-configured judge endpoint. Requests name a profile; they never give a URL or a secret's name,
    so a tenant cannot send the operator's key (or any other environment variable) to a server of its choice."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: Literal["openai"] = Field(default="openai", description="the API the endpoint speaks (OpenAI chat "
                                        "completions)")
    base_url: AnyHttpUrl | None = Field(default=None, description="OpenAI-compatible endpoint; None = OpenAI's")
    api_key_env: str | None = Field(default="OPENAI_API_KEY", pattern=SECRET_ENV_NAME, description="NAME of the "
                                    "environment variable holding this endpoint's key (None: the endpoint needs "
                                    "no key); the only names the worker ever reads a secret from")
    models: list[str] = Field(default_factory=list, description="models a request may name; empty = any")
    default_model: str | None = Field(default=None, description="the model when a request names none")
    timeout_s: float = Field(default=30.0, gt=0, description="seconds per judge call before it is retried")
    max_retries: int = Field(default=3, ge=0, le=20, description="retries of a call on 429, 5xx and timeouts "
                             "(with backoff, honouring Retry-After)")

    @model_validator(mode="after")
    def _default_allowed(self) -> JudgeProfile:
        if self.default_model and self.models and self.default_model not in self.models:
            raise ValueError(f"default_model {self.default_model!r} is not in models {self.models}")
        return self

    def model_for(self, requested: str | None) -> str:
        """The model a request gets on this profile; ValueError (with the allowed names) when refused."""
        model = requested or self.default_model or (self.models[0] if len(self.models) == 1 else None)
        if not model:
            raise ValueError("this judge profile has no default model: give judge.model"
                             + (f" (one of {', '.join(self.models)})" if self.models else ""))
        if self.models and model not in self.models:
            raise ValueError(f"model {model!r} is not allowed on this judge profile; allowed: {', '.join(self.models)}")
        return model


class Settings(BaseSettings):
    """Everything the API (and the worker) needs to find its state; secrets are never stored here."""

    model_config = SettingsConfigDict(env_prefix="REALIGN_", extra="ignore")

    data_dir: Path = Field(default=DEFAULT_DATA_DIR, description="root of all local state (SQLite, files, artifacts)")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; None = SQLite under data_dir")
    broker_url: str | None = Field(default=None, description="Celery broker URL; None = embedded broker")
    dataset_root: Path | None = Field(default=None, description="root for `path` datasets; None = data_dir/datasets")
    max_upload_bytes: int = Field(default=200 * 1024 * 1024, gt=0, description="POST /v1/files size limit")
    max_json_bytes: int = Field(default=2 * 1024 * 1024, gt=0, description="size limit of every other request body")
    sse_poll_interval_s: float = Field(default=0.5, gt=0, description="how often an SSE event stream checks the "
                                       "database for new events")
    sse_max_duration_s: float = Field(default=3600.0, gt=0, description="an SSE stream closes after this long")
    default_page_size: int = Field(default=50, ge=1, description="items per page of a list when the request "
                                   "gives no `limit`")
    max_page_size: int = Field(default=500, ge=1, description="the most items per page, whatever `limit` asks")
    auth_cache_ttl_s: float = Field(default=5.0, ge=0, description="how long a checked API key is trusted without "
                                    "a database read (a revoked key stops working within this time)")
    db_pool_size: int = Field(default=10, ge=1, description="Postgres connections kept per API process "
                              "(docs/operations.md: the connection budget)")
    db_max_overflow: int = Field(default=10, ge=0, description="extra Postgres connections an API process may "
                                 "open under load; its ceiling is db_pool_size + db_max_overflow")
    db_pool_timeout_s: float = Field(default=10.0, gt=0, description="how long a request waits for a pooled "
                                     "connection before failing (503)")
    db_application_name: str | None = Field(default=None, max_length=60, description="Postgres application_name "
                                            "of this process's connections; None = realign-api / realign-worker")
    max_active_jobs_per_tenant: int = Field(default=20, ge=0, description="live (not finished) jobs a tenant may "
                                            "have; one more submission answers 429 (0 = no limit)")
    max_submissions_per_minute: int = Field(default=60, ge=0, description="jobs + uploads a tenant may create "
                                            "per sliding minute, counted in the database so every API replica "
                                            "shares it; more answer 429 with Retry-After (0 = no limit)")
    run_migrations: bool = Field(default=True, description="run `alembic upgrade head` when the app starts")
    # ---- worker (worker/): leases, reaper, engine knobs
    model_root: Path | None = Field(default=None, description="root for local base models; None = data_dir/models")
    lease_ttl_s: float = Field(default=30.0, gt=0, description="a stage owner that stops heart-beating for this "
                               "long loses the stage; the reaper re-queues it")
    heartbeat_interval_s: float = Field(default=2.0, gt=0, description="lease renewal and cancel check period")
    reaper_interval_s: float = Field(default=5.0, gt=0, description="how often the reaper looks for expired "
                                     "leases and lost enqueues")
    requeue_after_s: float = Field(default=120.0, gt=0, description="a queued (or between-stages) job that no "
                                   "worker picked up for this long is enqueued again (a message the broker lost)")
    enqueue_grace_s: float = Field(default=5.0, gt=0, description="a job handed to its next stage whose enqueue "
                                   "was not confirmed within this long (the send failed, or its sender died) is "
                                   "enqueued again by the reaper")
    stage_max_attempts: int = Field(default=3, ge=1, description="starts of one stage of one job (crashes and "
                                    "expired leases included) before the job fails instead of being re-queued")
    worker_db_pool_size: int = Field(default=4, ge=1, description="Postgres connections kept per worker process")
    worker_db_max_overflow: int = Field(default=4, ge=0, description="extra Postgres connections per worker "
                                        "process; its ceiling is worker_db_pool_size + worker_db_max_overflow")
    worker_heartbeat_interval_s: float = Field(default=5.0, gt=0, description="how often a worker records that "
                                               "it is alive (and which queues it consumes) for /readyz")
    worker_stale_after_s: float = Field(default=20.0, gt=0, description="a worker not seen for this long no "
                                        "longer counts as live in /readyz")
    progress_interval_s: float = Field(default=0.5, ge=0, description="at most one progress write per interval")
    judge_concurrency: int = Field(default=32, ge=1, description="judge calls in flight per triage stage")
    checkpoint_every: int = Field(default=25, ge=0, description="training checkpoint period in optimizer steps")
    fused_kernels: Literal["auto", "on", "off"] = Field(
        default="auto", description="GPU workers: compiled RMSNorm/SwiGLU (auto = on CUDA); off = eager"
    )
    train_device: str | None = Field(default=None, description="torch device for scoring/training/eval; None = "
                                     "CUDA when available")
    eval_size: int = Field(default=40, ge=1, description="evaluation prompts per suite")
    queue_prefix: str = Field(default="", pattern=r"^[A-Za-z0-9_.\-]*$", description="prefix of the queue names "
                              "(`judge`, `gpu`), to share one broker between deployments or test sessions")
    broker_poll_interval_s: float = Field(default=0.05, gt=0, description="embedded (filesystem) broker polling")
    # ---- serving (api/gateway, evaluation jobs)
    serving_url: str | None = Field(default=None, description="the vLLM-protocol serving backend (vLLM in "
                                    "production, e.g. http://vllm:8000/v1; `realign serve` starts a local one); "
                                    "None = no gateway, and evaluation jobs generate in-process")
    serving_base_model: str = Field(default="synthetic-tiny", description="the base model the serving backend "
                                    "serves (a name clients may put in `model`; `realign serve` starts the local "
                                    "backend on it)")
    serving_adapter_root: Path | None = Field(default=None, description="where the serving backend sees the data "
                                              "dir (adapters are under it); None = the same path as data_dir")
    serving_max_adapters: int = Field(default=8, ge=1, description="adapters loaded on the backend at once (LRU)")
    deploy_gate_max_tokens: int = Field(default=16, ge=1, description="greedy tokens per deploy-gate probe")
    deploy_gate_min_logprob_delta: float = Field(
        default=1e-3, gt=0, description="the deploy gate serves an adapter when it changes the base model's "
        "teacher-forced answer log-probs by more than this (mean |Δ log p| over the probes; zero-B adapters measure "
        "0 to ~1e-5, trained ones ~1e-2: api/gateway/deploy_gate.py)")
    deploy_gate_job_probes: int = Field(default=8, ge=0, le=64, description="prompts of the adapter's own job "
                                        "(its INVERT/PUNISH pairs and held-out eval prompts) added to the generic "
                                        "deploy-gate probes")
    serving_isolation: Literal["null-adapter", "off"] = Field(
        default="null-adapter", description="how base-model requests are kept apart from adapters on the "
        "backend: `null-adapter` sends them as a zero adapter the gateway writes (vLLM with --enable-lora can "
        "apply another request's LoRA to adapter-less rows of a batch, issue 17) and runs a start-up self-test; "
        "`off` only for a backend that batches per adapter (the local server; embedded mode sets it)")
    serving_base_model_path: Path | None = Field(default=None, description="the base model's folder (or its "
                                                 "config.json) as the API sees it, to shape the null adapter; "
                                                 "None = model_root/<serving_base_model> when that exists, else "
                                                 "the Hugging Face cache's snapshot of that id")
    # ---- security (docs/security.md)
    judge_profiles: dict[str, JudgeProfile] = Field(default_factory=dict, description="named judge endpoints "
                                                    "(REALIGN_JUDGE_PROFILES as JSON: name -> profile); a request "
                                                    "with provider `openai` names one of them")
    metrics_token: SecretStr | None = Field(default=None, description="Bearer token for GET /metrics; None = "
                                            "/metrics answers 404 (disabled)")

    @model_validator(mode="after")
    def _profile_names(self) -> Settings:
        bad = [name for name in self.judge_profiles if not re.match(JUDGE_PROFILE_NAME, name)]
        if bad:
            raise ValueError(f"judge profile names must match {JUDGE_PROFILE_NAME}: {bad}")
        return self

    def secret_env_names(self) -> frozenset[str]:
        """The allow-list of environment variables a secret is ever read from (the profiles' `api_key_env`)."""
        return frozenset(p.api_key_env for p in self.judge_profiles.values() if p.api_key_env)

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return normalise_database_url(self.database_url)
        return f"sqlite:///{self.data_dir / 'realign.db'}"

    @property
    def serving_api_url(self) -> str | None:
        """`serving_url` without a trailing `/v1` (the backend client adds the `/v1/...` paths itself)."""
        if not self.serving_url:
            return None
        url = self.serving_url.rstrip("/")
        return url[: -len("/v1")] if url.endswith("/v1") else url

    @property
    def adapters_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def datasets_root(self) -> Path:
        return self.dataset_root if self.dataset_root is not None else self.data_dir / "datasets"

    @property
    def models_root(self) -> Path:
        return self.model_root if self.model_root is not None else self.data_dir / "models"

    @property
    def embedded_broker_dir(self) -> Path:
        return self.data_dir / "broker"

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"


def normalise_database_url(url: str) -> str:
    """`postgres://` and `postgresql://` (no driver) mean psycopg 3, the driver we ship."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url
