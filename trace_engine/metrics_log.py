"""The run's `metrics.jsonl`: what one step's line says, and how the log survives a crash and a resume."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from trace_engine.data.io import iter_jsonl

if TYPE_CHECKING:
    from trace_engine.checkpoint import Position


def step_metrics(sums: dict[str, float], position: Position, seconds: float) -> dict[str, float | None]:
    """Turn one step's sums into means (per component over the examples that have it)."""

    def mean(key: str, count: float) -> float | None:  # None (JSON null) when no example had this component
        return sums[key] / count if count else None

    n_pref = sums["n_pref"]
    return {
        "step": position.step + 1,
        "epoch": position.epoch,
        "loss": sums["loss_sum"] / sums["examples"],
        "loss_pref": mean("pref_loss_sum", n_pref),
        "loss_npo": mean("npo_loss_sum", sums["n_npo"]),
        "kl": mean("kl_sum", sums["n_kl"]),
        "reward_chosen": mean("reward_chosen_sum", n_pref),
        "reward_rejected": mean("reward_rejected_sum", n_pref),
        "margin": (sums["reward_chosen_sum"] - sums["reward_rejected_sum"]) / n_pref if n_pref else None,
        "accuracy": mean("accuracy_sum", n_pref),
        "npo_reward": mean("npo_reward_sum", sums["npo_responses"]),
        "n_pref": n_pref,
        "n_npo": sums["n_npo"],
        "n_kl": sums["n_kl"],
        "examples": sums["examples"],
        "lr": sums["lr"],
        "grad_norm": sums["grad_norm"],
        "tokens": sums["tokens"],
        "tokens_per_s": sums["tokens"] / seconds if seconds > 0 else None,
        "seconds": seconds,
    }


def append_metrics(log: IO[str], row: dict[str, Any]) -> None:
    """One metrics line, on disk before the next step starts: a crash loses no finished step."""
    log.write(json.dumps(row) + "\n")
    log.flush()
    os.fsync(log.fileno())


def logged_steps(path: Path) -> Iterator[dict[str, Any]]:
    """The metrics log's step lines; a line torn by a crash mid-write (not JSON) is dropped."""
    for raw in iter_jsonl(path):
        if raw.error is None and isinstance(raw.data, dict) and isinstance(raw.data.get("step"), int):
            yield raw.data


def truncate_metrics(path: Path, up_to_step: int) -> None:
    """After a resume, drop log lines of steps the crashed run did after its last checkpoint (and a torn one)."""
    if not path.exists():
        return
    keep = [row for row in logged_steps(path) if row["step"] <= up_to_step]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in keep), encoding="utf-8")
    os.replace(tmp, path)


def last_metrics(path: Path) -> dict[str, Any]:
    """The last logged step's metrics ({} without a log): what a resumed run reports if it has no step left."""
    last: dict[str, Any] = {}
    if path.exists():
        for last in logged_steps(path):  # noqa: B007 - we want the final line
            pass
    return last
