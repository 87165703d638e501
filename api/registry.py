"""The adapter registry's file side, shared by the API (download, delete, gateway) and the worker (registration).

A registered adapter's `path` is relative to the data dir and derived from the job id (`jobs/<job>/train/adapter`),
so no client-given string ever becomes a path; the serving backend may see the data dir elsewhere
(`serving_adapter_root`, e.g. another container's mount).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from api.gateway.deploy_gate import ADAPTER_WEIGHTS
from api.settings import Settings

_JOB_ID = re.compile(r"^job_[0-9a-f]{12,40}$")
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.\-]+")


def adapter_relative_path(job_id: str) -> str:
    if not _JOB_ID.match(job_id):
        raise ValueError(f"not a job id: {job_id!r}")
    return f"jobs/{job_id}/train/adapter"


def local_adapter_dir(settings: Settings, relative: str) -> Path:
    """The adapter folder as this process sees it; refuses anything that is not a registry-made path."""
    parts = relative.split("/")
    if len(parts) != 4 or parts[0] != "jobs" or not _JOB_ID.match(parts[1]) or parts[2:] != ["train", "adapter"]:
        raise ValueError(f"not a registry adapter path: {relative!r}")
    return settings.data_dir / relative


def serving_adapter_dir(settings: Settings, relative: str) -> str:
    """The adapter folder as the serving backend sees it."""
    local_adapter_dir(settings, relative)  # validates
    root = settings.serving_adapter_root if settings.serving_adapter_root is not None else settings.data_dir
    return str(Path(root) / relative)


def weights_file(settings: Settings, relative: str) -> Path:
    return local_adapter_dir(settings, relative) / ADAPTER_WEIGHTS


def remove_adapter_files(settings: Settings, relative: str) -> None:
    """Delete the adapter folder and its training checkpoints (the job's other artifacts stay)."""
    adapter = local_adapter_dir(settings, relative)
    shutil.rmtree(adapter, ignore_errors=True)
    shutil.rmtree(adapter.parent / "checkpoints", ignore_errors=True)


def default_adapter_name(policy_name: str, job_id: str) -> str:
    """`<policy name>-<last 8 hex of the job id>`: readable, unique per tenant in practice (the id always is)."""
    stem = _NAME_CHARS.sub("-", policy_name).strip("-.")[:80] or "adapter"
    return f"{stem}-{job_id[-8:]}"
