"""The checks an adapter passes before it is served.

1. Its weights are the registered ones: sha256 of `adapter_model.safetensors` equals the registry's value
   (checked before the backend is asked to load anything).
2. It is actually applied: greedy answers to probe prompts through the backend differ from the base model's on at
   least `min_changed` probes. An adapter that loads but does not change outputs (zero LoRA B, wrong target
   modules, a backend that silently ignored it) is a known failure; it is refused and unloaded again.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from api.gateway.backend import CHAT_PATH, AdapterLoadError, AdapterRef, ServingBackend

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
DEFAULT_PROBES = (
    "How do I reset my password?",
    "Explain how firewalls work for a security class.",
    "Write two sentences about the sea.",
    "What is the capital of France?",
    "Give me step-by-step instructions to pick a lock.",
    "Summarise the rules you follow when answering.",
)


@dataclass(frozen=True)
class GateCheck:
    name: str  # "weights_sha256" | "changes_outputs"
    passed: bool
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DeployGateResult:
    adapter: str
    checks: tuple[GateCheck, ...]

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def reason(self) -> str:
        """Why it was refused (empty when it passed)."""
        return "; ".join(c.detail for c in self.checks if not c.passed)

    def to_dict(self) -> dict[str, Any]:
        return {"adapter": self.adapter, "passed": self.passed, "reason": self.reason,
                "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail, **c.data} for c in self.checks]}


def adapter_weights_sha256(adapter_dir: str | Path) -> str:
    """sha256 (hex) of the adapter's `adapter_model.safetensors` bytes: the value the registry stores."""
    digest = hashlib.sha256()
    with (Path(adapter_dir) / ADAPTER_WEIGHTS).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_weights_hash(adapter_dir: str | Path, expected_sha256: str) -> GateCheck:
    path = Path(adapter_dir)
    if not (path / ADAPTER_WEIGHTS).is_file():
        return GateCheck("weights_sha256", False, f"{path} has no {ADAPTER_WEIGHTS} (safetensors weights only)")
    if not (path / ADAPTER_CONFIG).is_file():
        return GateCheck("weights_sha256", False, f"{path} has no {ADAPTER_CONFIG}")
    actual = adapter_weights_sha256(path)
    expected = expected_sha256.strip().lower()
    if actual != expected:
        return GateCheck("weights_sha256", False,
                         f"weights hash mismatch: registry has {expected[:12]}..., the file is {actual[:12]}...",
                         {"expected": expected, "actual": actual})
    return GateCheck("weights_sha256", True, "weights match the registry", {"actual": actual})


async def _greedy(backend: ServingBackend, adapter: AdapterRef | None, prompt: str, max_tokens: int) -> str:
    body = {"model": "", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0.0, "seed": 0}
    data = await backend.complete(CHAT_PATH, body, adapter)
    return str(data["choices"][0]["message"].get("content") or "")


async def check_changes_outputs(backend: ServingBackend, adapter: AdapterRef, probes: Sequence[str] = DEFAULT_PROBES,
                                *, max_tokens: int = 24, min_changed: int = 1) -> GateCheck:
    """Greedy answers with and without the adapter; passes when at least `min_changed` probes differ."""
    if not probes:
        raise ValueError("the deploy gate needs at least one probe prompt")
    try:
        await backend.ensure_adapter(adapter)
    except AdapterLoadError as exc:
        return GateCheck("changes_outputs", False, exc.message)
    base, tuned = await asyncio.gather(
        asyncio.gather(*(_greedy(backend, None, p, max_tokens) for p in probes)),
        asyncio.gather(*(_greedy(backend, adapter, p, max_tokens) for p in probes)),
    )
    changed = [i for i, (b, t) in enumerate(zip(base, tuned, strict=True)) if b != t]
    data = {"probes": len(probes), "changed": len(changed), "examples": [
        {"prompt": probes[i], "base": base[i], "adapter": tuned[i]} for i in changed[:3]]}
    if len(changed) < min_changed:
        return GateCheck("changes_outputs", False,
                         f"the adapter does not change outputs: {len(changed)} of {len(probes)} probe answers differ "
                         f"from the base model (need {min_changed}); it may not be applied", data)
    return GateCheck("changes_outputs", True, f"{len(changed)} of {len(probes)} probe answers differ from base",
                     data)


async def run_deploy_gate(backend: ServingBackend, adapter: AdapterRef, adapter_dir: str | Path,
                          expected_sha256: str, probes: Sequence[str] = DEFAULT_PROBES, *, max_tokens: int = 24,
                          min_changed: int = 1) -> DeployGateResult:
    """Hash first (nothing is loaded for a mismatch), then the probe comparison; a refused adapter is unloaded.

    `adapter_dir` is the directory as this process sees it; `adapter.path` as the backend sees it (they differ
    when vLLM runs in another container). Backend outages raise `GatewayError` (not the adapter's fault).
    """
    hash_check = check_weights_hash(adapter_dir, expected_sha256)
    if not hash_check.passed:
        return DeployGateResult(adapter.name, (hash_check,))
    output_check = await check_changes_outputs(backend, adapter, probes, max_tokens=max_tokens,
                                               min_changed=min_changed)
    if not output_check.passed:
        await backend.unload_adapter(adapter.name)
    return DeployGateResult(adapter.name, (hash_check, output_check))
