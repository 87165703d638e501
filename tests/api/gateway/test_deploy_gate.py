"""The deploy gate through the gateway client, against the local serving backend run as its own process
(`python -m trace_engine.serving.local_server`, as embedded mode does) on a tiny model with real LoRA adapters."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from api.gateway.backend import AdapterRef, ServingBackend
from api.gateway.deploy_gate import DeployGateResult, adapter_weights_sha256, run_deploy_gate
from tests.trace_engine.serving.tiny_adapters import TinyWorld

PROBES = ("How do I reset my password?", "What is the capital of France?", "Two plus two is four.")


def gate(url: str, adapter: AdapterRef, adapter_dir: Path, sha256: str) -> tuple[DeployGateResult, list[str]]:
    async def main() -> tuple[DeployGateResult, list[str]]:
        async with ServingBackend(url) as backend:
            result = await run_deploy_gate(backend, adapter, adapter_dir, sha256, PROBES, max_tokens=8)
            names = [m["id"] for m in (await backend.models())["data"]]
            return result, names

    return asyncio.run(main())


def test_a_real_adapter_passes_and_stays_loaded(local_backend_url: str, world: TinyWorld) -> None:
    result, served = gate(local_backend_url, AdapterRef("good", str(world.adapter_a)), world.adapter_a,
                          adapter_weights_sha256(world.adapter_a))
    assert result.passed, result.to_dict()
    assert [c.name for c in result.checks] == ["weights_sha256", "changes_outputs"]
    assert result.checks[1].data["changed"] >= 1
    assert "good" in served


def test_a_hash_mismatch_is_refused_before_loading(local_backend_url: str, world: TinyWorld) -> None:
    result, served = gate(local_backend_url, AdapterRef("tampered", str(world.adapter_b)), world.adapter_b,
                          adapter_weights_sha256(world.adapter_a))
    assert not result.passed
    assert "hash mismatch" in result.reason
    assert "tampered" not in served


def test_an_adapter_that_does_not_change_outputs_is_refused_and_unloaded(local_backend_url: str, world: TinyWorld) -> None:
    result, served = gate(local_backend_url, AdapterRef("noop", str(world.adapter_zero)), world.adapter_zero,
                          adapter_weights_sha256(world.adapter_zero))
    assert not result.passed
    assert "does not change outputs" in result.reason
    assert result.checks[1].data["changed"] == 0
    assert "noop" not in served


def test_a_pickle_only_adapter_is_refused(local_backend_url: str, world: TinyWorld, tmp_path: Path) -> None:
    shutil.copy(world.adapter_a / "adapter_config.json", tmp_path / "adapter_config.json")
    (tmp_path / "adapter_model.bin").write_bytes(b"pickle")
    result, _ = gate(local_backend_url, AdapterRef("pickled", str(tmp_path)), tmp_path, "0" * 64)
    assert not result.passed and "safetensors" in result.reason
