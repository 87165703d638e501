"""The preference-pair record every stage passes around.

The two responses: a row names them `chosen` / `rejected` (the dataset columns, kept as users wrote them). After
triage they are the pair as used for training (INVERT swapped them; `original_chosen` / `original_rejected` keep the
input), and from there on the engine's code calls the same two texts `preferred` / `dispreferred` (training
examples, encodings, losses). Public names that say chosen/rejected (metrics `reward_chosen`, CSV/JSON columns)
refer to that same pair.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

ChatMessage = dict[str, str]  # {"role": ..., "content": ...}
Prompt = str | list[ChatMessage]

CORE_FIELDS = ("id", "prompt", "chosen", "rejected")


@dataclass
class PreferencePair:
    """One row {id, prompt, chosen, rejected, ...}; unknown fields ride along in `extra`."""

    id: str
    prompt: Prompt
    chosen: str
    rejected: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        return {"id": self.id, "prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected, **self.extra}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> PreferencePair:
        """Build from an already validated row (see `trace_engine.data.validate`)."""
        extra = {k: v for k, v in row.items() if k not in CORE_FIELDS}
        return cls(id=str(row["id"]), prompt=row["prompt"], chosen=row["chosen"], rejected=row["rejected"], extra=extra)


def prompt_key(prompt: Prompt) -> str:
    """Canonical text of a prompt, used for prompt-disjoint splits and cache keys."""
    if isinstance(prompt, str):
        return prompt
    return json.dumps(prompt, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def prompt_as_text(prompt: Prompt) -> str:
    """Human-readable prompt: a string as is, a chat as 'role: content' lines."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}" for m in prompt)


def sha256_text(*parts: str) -> str:
    """Stable hash of several strings (length-prefixed so ('ab','c') != ('a','bc'))."""
    h = hashlib.sha256()
    for p in parts:
        b = p.encode("utf-8")
        h.update(len(b).to_bytes(8, "big"))
        h.update(b)
    return h.hexdigest()
