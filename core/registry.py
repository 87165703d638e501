"""The adapter registry's file side, shared by the API (download, delete, gateway) and the worker (registration).

A registered adapter's `path` is relative to the data dir and derived from the job id (`jobs/<job>/train/adapter`),
so no client-given string ever becomes a path; the serving backend may see the data dir elsewhere
(`serving_adapter_root`, e.g. another container's mount).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.settings import Settings
from trace_engine.categories import CONFLICT_CATEGORIES
from trace_engine.data.io import DatasetError, iter_jsonl_objects

_JOB_ID = re.compile(r"^job_[0-9a-f]{12,40}$")
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.\-]+")
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


# A job's downloadable artifacts: name -> (file relative to the job folder, kind, content type). The worker writes
# these files (worker.context documents the layout) and records the same names in the job's `artifacts`.
NDJSON = "application/x-ndjson"
HELD_OUT_FILE = "data/held_out.jsonl"  # the prompts a job held out of training at validation
EVAL_PROMPTS_FILE = "eval/prompts.jsonl"  # the prompts a job's TPA was measured on
JOB_ARTIFACTS: dict[str, tuple[str, str, str]] = {
    "dataset_snapshot": ("data/pairs.jsonl", "dataset_snapshot", NDJSON),
    "triaged": ("triage/triaged.jsonl", "triaged_pairs", NDJSON),
    "triage_summary": ("triage/summary.json", "triage_summary", "application/json"),
    "scored": ("score/scored.jsonl", "impact_scores", NDJSON),
    "score_summary": ("score/summary.json", "impact_score_summary", "application/json"),
    "train_metrics": ("train/metrics.jsonl", "metrics_history", NDJSON),
    "eval_report": ("eval/report.json", "eval_report", "application/json"),
    "eval_prompts": (EVAL_PROMPTS_FILE, "eval_prompts", NDJSON),
}
MAX_PROBE_CHARS = 2000  # longer prompts are not used as deploy-gate probes (they must fit the context)
MAX_SCANNED_LINES = 5000  # per file, when looking for probe prompts


def job_folder(settings: Settings, job_id: str) -> Path:
    """`<data_dir>/jobs/<job_id>`: only a well-formed job id ever becomes a path."""
    if not _JOB_ID.match(job_id):
        raise ValueError(f"not a job id: {job_id!r}")
    return settings.data_dir / "jobs" / job_id


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


@dataclass(frozen=True)
class AdapterRef:
    """An adapter as the serving backend knows it: a unique name and the directory path the backend can read."""

    name: str
    path: str


def adapter_weights_sha256(adapter_dir: str | Path) -> str:
    """sha256 (hex) of the adapter's `adapter_model.safetensors` bytes: the value the registry stores."""
    digest = hashlib.sha256()
    with (Path(adapter_dir) / ADAPTER_WEIGHTS).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_file(settings: Settings, relative: str) -> Path:
    return local_adapter_dir(settings, relative) / ADAPTER_WEIGHTS


def config_file(settings: Settings, relative: str) -> Path:
    return local_adapter_dir(settings, relative) / ADAPTER_CONFIG


def read_adapter_config(settings: Settings, relative: str) -> dict[str, Any] | None:
    """The adapter's adapter_config.json (peft's LoraConfig), or None when it is missing or not a JSON object."""
    try:
        config = json.loads(config_file(settings, relative).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def portable_adapter_config(config: dict[str, Any], base_model: dict[str, Any]) -> dict[str, Any]:
    """The config as a downloaded adapter carries it: `base_model_name_or_path` is the base model the request
    named (the stored one may be a server path, e.g. a cache folder), with its revision when pinned."""
    out = dict(config)
    out["base_model_name_or_path"] = base_model.get("name_or_path")
    if base_model.get("revision"):
        out["revision"] = base_model["revision"]
    return out


def archive_folder_name(name: str, fallback: str) -> str:
    """The top folder of a downloaded adapter archive: the adapter's name, reduced to safe characters."""
    stem = _NAME_CHARS.sub("-", name).strip("-.")[:120]
    return stem or fallback


def remove_adapter_files(settings: Settings, relative: str) -> None:
    """Delete the adapter folder and its training checkpoints (the job's other artifacts stay)."""
    adapter = local_adapter_dir(settings, relative)
    shutil.rmtree(adapter, ignore_errors=True)
    shutil.rmtree(adapter.parent / "checkpoints", ignore_errors=True)


def job_probe_prompts(settings: Settings, job_id: str, limit: int) -> list[str | list[dict[str, str]]]:
    """Up to `limit` distinct prompts of the job's own data for the deploy gate, alternating between its
    INVERT/PUNISH pairs (`triage/triaged.jsonl`) and its held-out eval prompts (`data/held_out.jsonl`, else
    `eval/prompts.jsonl`); missing or unreadable files give none (the generic probes still run)."""
    if limit <= 0:
        return []
    folder = job_folder(settings, job_id)
    changed = _prompts_in(folder / JOB_ARTIFACTS["triaged"][0], limit, CONFLICT_CATEGORIES)
    held = _prompts_in(folder / HELD_OUT_FILE, limit) or _prompts_in(folder / EVAL_PROMPTS_FILE, limit)
    out: list[str | list[dict[str, str]]] = []
    seen: set[str] = set()
    for pair in itertools.zip_longest(changed, held):
        for prompt in pair:
            key = json.dumps(prompt, sort_keys=True)
            if prompt is not None and key not in seen and len(out) < limit:
                seen.add(key)
                out.append(prompt)
    return out


def _prompts_in(path: Path, limit: int, categories: tuple[str, ...] | None = None) -> list[Any]:
    found: list[Any] = []
    try:
        for row in iter_jsonl_objects(path, max_lines=MAX_SCANNED_LINES):
            if len(found) >= limit:
                break
            if categories is not None and row.get("category") not in categories:
                continue
            prompt = row.get("prompt")
            if _usable_prompt(prompt):
                found.append(prompt)
    except (OSError, DatasetError):  # a missing or unreadable file: no probes from it
        return []
    return found


def _usable_prompt(prompt: Any) -> bool:
    if isinstance(prompt, str):
        return 0 < len(prompt) <= MAX_PROBE_CHARS
    return (isinstance(prompt, list) and bool(prompt) and all(
        isinstance(m, dict) and m.get("role") in ("system", "user", "assistant") and isinstance(m.get("content"), str)
        for m in prompt) and sum(len(m["content"]) for m in prompt) <= MAX_PROBE_CHARS)


def default_adapter_name(policy_name: str, job_id: str) -> str:
    """`<policy name>-<last 8 hex of the job id>`: readable, unique per tenant in practice (the id always is)."""
    stem = _NAME_CHARS.sub("-", policy_name).strip("-.")[:80] or "adapter"
    return f"{stem}-{job_id[-8:]}"
