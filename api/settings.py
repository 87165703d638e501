"""Service configuration: one `Settings` read from `REALIGN_*` environment variables (or passed in by tests/CLI).

With no database configured the service runs embedded on SQLite under the data dir (design.md §7).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATA_DIR = Path.home() / ".realign"


class Settings(BaseSettings):
    """Everything the API (and the worker) needs to find its state; secrets are never stored here."""

    model_config = SettingsConfigDict(env_prefix="REALIGN_", extra="ignore")

    data_dir: Path = Field(default=DEFAULT_DATA_DIR, description="root of all local state (SQLite, files, artifacts)")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; None = SQLite under data_dir")
    broker_url: str | None = Field(default=None, description="Celery broker URL; None = embedded broker")
    dataset_root: Path | None = Field(default=None, description="root for `path` datasets; None = data_dir/datasets")
    max_upload_bytes: int = Field(default=200 * 1024 * 1024, gt=0, description="POST /v1/files size limit")
    max_json_bytes: int = Field(default=2 * 1024 * 1024, gt=0, description="size limit of every other request body")
    sse_poll_interval_s: float = Field(default=0.5, gt=0)
    sse_max_duration_s: float = Field(default=3600.0, gt=0, description="an SSE stream closes after this long")
    default_page_size: int = Field(default=50, ge=1)
    max_page_size: int = Field(default=500, ge=1)
    auth_cache_ttl_s: float = Field(default=5.0, ge=0, description="how long a checked API key is trusted without "
                                    "a database read (a revoked key stops working within this time)")
    db_pool_size: int = Field(default=20, ge=1, description="Postgres connections per API process")
    run_migrations: bool = Field(default=True, description="run `alembic upgrade head` when the app starts")
    # ---- worker (worker/): leases, reaper, engine knobs
    model_root: Path | None = Field(default=None, description="root for local base models; None = data_dir/models")
    lease_ttl_s: float = Field(default=30.0, gt=0, description="a stage owner that stops heart-beating for this "
                               "long loses the stage; the reaper re-queues it")
    heartbeat_interval_s: float = Field(default=2.0, gt=0, description="lease renewal and cancel check period")
    reaper_interval_s: float = Field(default=5.0, gt=0)
    requeue_after_s: float = Field(default=120.0, gt=0, description="a queued (or between-stages) job that no "
                                   "worker picked up for this long is enqueued again")
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
