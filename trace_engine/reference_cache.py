"""The reference log-prob cache: s_ref(y) per (prompt, response), taken once (by scoring, or by training up front)
and read by training. One key (`sequence_key`) and one file format (`save_reference_cache`) for the CLI and the
service. Values are valid only for the same base model, tokenizer, length limits and dtype (the `meta` says which).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trace_engine.data.pairs import Prompt, prompt_key, sha256_text

REFERENCE_CACHE = "reference_logps.safetensors"  # its file name next to the scored rows


def sequence_key(prompt: Prompt, response: str) -> str:
    """Key of a (prompt, response) sequence in the cache: sha256 (hex) of the prompt's key and the response."""
    return sha256_text(prompt_key(prompt), response)


def save_reference_cache(path: str | Path, cache: Mapping[str, float], meta: Mapping[str, Any]) -> Path:
    """Compact safetensors file: `keys` uint8 [n, 32] (raw sha256 of `sequence_key`), `values` fp64 [n].

    `meta` (JSON in the header) says what the values are valid for: base model, length limits, dtype. Atomic.
    """
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    items = sorted(cache.items())
    keys = torch.tensor([list(bytes.fromhex(k)) for k, _ in items], dtype=torch.uint8).reshape(len(items), 32)
    values = torch.tensor([float(v) for _, v in items], dtype=torch.float64)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({"keys": keys, "values": values}, str(tmp), metadata={"realign": json.dumps(dict(meta))})
    os.replace(tmp, path)
    return path


def load_reference_cache(path: str | Path) -> tuple[dict[str, float], dict[str, Any]]:
    """(sequence_key -> s_ref, meta) from `save_reference_cache`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("realign", "{}"))
        keys, values = f.get_tensor("keys"), f.get_tensor("values")
    return {bytes(k.tolist()).hex(): float(v) for k, v in zip(keys, values.tolist(), strict=True)}, meta
