"""Evaluation prompt sets (held-out TPA, harmful, benign-but-sensitive) from JSONL/JSON.

Each row needs `prompt` (a string or a list of chat messages); `id` defaults to the row number and `category`
(a triage category for TPA, or any grouping label) is optional. A triaged pairs file is a valid input, so the
held-out split of a triage run can be evaluated per category directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trace_engine.data.io import DatasetError, iter_raw_rows
from trace_engine.data.pairs import Prompt


@dataclass(frozen=True)
class EvalPrompt:
    id: str
    prompt: Prompt
    category: str | None = None


def load_eval_prompts(path: str | Path, *, limit: int | None = None) -> list[EvalPrompt]:
    """Read prompts; malformed rows are an error (an eval set must be exactly what was asked)."""
    out: list[EvalPrompt] = []
    seen: set[str] = set()
    for raw in iter_raw_rows(path):
        where = f"{path}: row {raw.row}"
        if raw.error is not None:
            raise DatasetError(f"{where}: {raw.error}")
        row = raw.data
        if not isinstance(row, dict):
            raise DatasetError(f"{where}: expected an object with a 'prompt' field")
        prompt = row.get("prompt")
        if not _valid_prompt(prompt):
            raise DatasetError(
                f"{where}: 'prompt' must be a non-empty string or a list of {{role, content}} messages"
            )
        item_id = str(row.get("id", raw.row))
        if item_id in seen:
            raise DatasetError(f"{where}: duplicate id {item_id!r}")
        seen.add(item_id)
        category = row.get("category")
        out.append(EvalPrompt(item_id, prompt, str(category) if category is not None else None))
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise DatasetError(f"{path}: no prompts")
    return out


def _valid_prompt(prompt: object) -> bool:
    if isinstance(prompt, str):
        return bool(prompt.strip())
    return (
        isinstance(prompt, list)
        and bool(prompt)
        and all(
            isinstance(m, dict) and isinstance(m.get("content"), str) and isinstance(m.get("role"), str)
            for m in prompt
        )
    )
