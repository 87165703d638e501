"""The deploy gate through the gateway client: against the local serving backend run as its own process (`python -m
trace_engine.serving.local_server`, as embedded mode does) on a tiny model with real LoRA adapters, where "applied"
is measured on real teacher-forced log-probs; and against the fake vLLM, which records whether a base request
was ever in flight together with an adapter request."""

from __future__ import annotations

import asyncio
import json
import shutil
import struct
from pathlib import Path

import pytest

from api.gateway.backend import CHAT_PATH, ServingBackend
from api.gateway.deploy_gate import DeployGateResult, run_deploy_gate
from core.registry import AdapterRef, adapter_weights_sha256
from tests.support.fake_vllm import FakeVLLM
from tests.trace_engine.serving.tiny_adapters import TinyWorld, save_sharpening_lora

PROBES = ("How do I reset my password?", "What is the capital of France?", "Two plus two is four.")


def gate(url: str, adapter: AdapterRef, adapter_dir: Path, sha256: str) -> tuple[DeployGateResult, list[str]]:
    async def main() -> tuple[DeployGateResult, list[str]]:
        async with ServingBackend(url) as backend:
            result = await run_deploy_gate(backend, adapter, adapter_dir, sha256, PROBES, max_tokens=8)
            names = [m["id"] for m in (await backend.models())["data"]]
            return result, names

    return asyncio.run(main())


def measured(result: DeployGateResult) -> dict:
    return next(c for c in result.to_dict()["checks"] if c["name"] == "changes_outputs")


def test_a_real_adapter_passes_with_its_measured_delta_and_stays_loaded(local_backend_url: str,
                                                                        world: TinyWorld) -> None:
    result, served = gate(local_backend_url, AdapterRef("good", str(world.adapter_a)), world.adapter_a,
                          adapter_weights_sha256(world.adapter_a))
    assert result.passed, result.to_dict()
    assert [c.name for c in result.checks] == ["weights_sha256", "changes_outputs"]
    check = measured(result)
    assert check["method"] == "teacher_forced_logprobs" and check["floor"] == 1e-3
    assert check["delta_mean"] > 1e-2 and check["noise"] == 0.0  # fp32 on the CPU: the base scores the same twice
    assert [e["prompt"] for e in check["evidence"]] == list(PROBES)
    for probe in check["evidence"]:
        assert probe["tokens"] > 0 and probe["delta_max"] >= probe["delta_mean"] > 0 and probe["base"]
    assert "good" in served


def test_an_adapter_that_leaves_every_greedy_answer_alone_but_changes_the_model_passes(
        local_backend_url: str, world: TinyWorld, tmp_path: Path) -> None:
    """The case the text-only gate got wrong: (1 + 0.05) x the logits keeps every argmax, changes every log-prob."""
    folder = save_sharpening_lora(world.base, tmp_path / "sharpen", eps=0.05)
    result, served = gate(local_backend_url, AdapterRef("sharpen", str(folder)), folder,
                          adapter_weights_sha256(folder))
    check = measured(result)
    assert check["changed"] == 0 and all(e["base"] == e["adapter"] for e in check["evidence"])
    assert result.passed, result.reason
    assert check["delta_mean"] > 5e-3 > 1e-3  # about 1e-2 measured: 10x above the floor
    assert "sharpen" in served


def test_a_zero_b_adapter_is_refused_with_the_measured_delta_and_unloaded(local_backend_url: str,
                                                                          world: TinyWorld) -> None:
    result, served = gate(local_backend_url, AdapterRef("noop", str(world.adapter_zero)), world.adapter_zero,
                          adapter_weights_sha256(world.adapter_zero))
    assert not result.passed
    check = measured(result)
    assert check["delta_mean"] < 1e-5 and check["changed"] == 0
    assert f"over {len(PROBES)} probes" in result.reason and "floor 1e-03" in result.reason
    assert "mean |Δ log p| 0.0e+00" in result.reason
    assert "the adapter does not change the model" in result.reason
    assert "target_modules" in result.reason and "--enable-lora" in result.reason
    assert "noop" not in served


def test_a_hash_mismatch_is_refused_before_loading(local_backend_url: str, world: TinyWorld) -> None:
    result, served = gate(local_backend_url, AdapterRef("tampered", str(world.adapter_b)), world.adapter_b,
                          adapter_weights_sha256(world.adapter_a))
    assert not result.passed
    assert "hash mismatch" in result.reason
    assert "tampered" not in served


def test_a_pickle_only_adapter_is_refused(local_backend_url: str, world: TinyWorld, tmp_path: Path) -> None:
    shutil.copy(world.adapter_a / "adapter_config.json", tmp_path / "adapter_config.json")
    (tmp_path / "adapter_model.bin").write_bytes(b"pickle")
    result, _ = gate(local_backend_url, AdapterRef("pickled", str(tmp_path)), tmp_path, "0" * 64)
    assert not result.passed and "safetensors" in result.reason


# ---------------------------------------------------------------- against the fake: probes are sent apart


def fake_adapter(folder: Path, *, zero: bool) -> Path:
    folder.mkdir(parents=True)
    if zero:  # a safetensors file whose tensor bytes are all zero: the fake answers (and scores) as the base
        header = json.dumps({"lora_B": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
        (folder / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
    else:
        (folder / "adapter_model.safetensors").write_bytes(b"trained weights")
    (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "peft_type": "LORA"}))
    return folder


@pytest.mark.parametrize("zero", [False, True])
def test_base_and_adapter_probes_are_never_in_flight_together_on_a_bleeding_backend(tmp_path: Path,
                                                                                     zero: bool) -> None:
    """With `lora_bleed` the fake computes any base request that overlaps an adapter request with that adapter:
    a gate that sent both sides at once would see the base answer as the adapter's (issue 17). The fake's
    `overlaps` shows that no base request (answer or scoring) overlapped an adapter request."""
    folder = fake_adapter(tmp_path / "adapter", zero=zero)

    async def main(fake: FakeVLLM) -> DeployGateResult:
        async with ServingBackend(fake.base_url) as backend:
            return await run_deploy_gate(backend, AdapterRef("tenant-a", str(folder)), folder,
                                         adapter_weights_sha256(folder), max_tokens=8)

    with FakeVLLM(latency=0.03, lora_bleed=True) as fake:
        result = asyncio.run(main(fake))
        generations = fake.calls_to("/v1/chat/completions") + fake.calls_to("/v1/completions")
    assert fake.overlaps == []
    assert fake.max_in_flight > 1  # each side's probes were still sent concurrently
    assert len(generations) == 6 * 3  # per probe: base answer, its noise repeat, adapter answer (with log-probs)
    assert check_method(result) == "greedy_path_logprobs"  # the fake returns chat log-probs as vLLM does
    assert result.passed is not zero, result.reason
    check = measured(result)
    assert check["noise"] == 0.0
    assert (check["delta_mean"] == 0.0) if zero else (check["delta_mean"] > 1.0)


def test_the_fakes_overlap_record_sees_requests_sent_together(tmp_path: Path) -> None:
    """The recorder the test above relies on: base and adapter requests sent at once do show up."""
    folder = fake_adapter(tmp_path / "adapter", zero=False)
    body = {"model": "", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}

    async def main(fake: FakeVLLM) -> None:
        async with ServingBackend(fake.base_url) as backend:
            ref = AdapterRef("tenant-a", str(folder))
            await backend.ensure_adapter(ref)
            await asyncio.gather(backend.complete(CHAT_PATH, body, None), backend.complete(CHAT_PATH, body, ref))

    with FakeVLLM(latency=0.05, lora_bleed=True) as fake:
        asyncio.run(main(fake))
    assert fake.overlaps == [("fake-base", ["tenant-a"])]


def check_method(result: DeployGateResult) -> str:
    return str(next(c for c in result.checks if c.name == "changes_outputs").data["method"])


def test_path_deltas_compare_the_shared_prefix_through_the_first_difference() -> None:
    from api.gateway.deploy_gate import path_deltas

    base = [("The", -0.1, {}), (" sea", -0.5, {}), (" is", -0.2, {})]
    same = [("The", -0.1, {}), (" sea", -0.5, {}), (" is", -0.2, {})]
    assert path_deltas(base, same) == ([0.0, 0.0, 0.0], False)
    moved = [("The", -0.3, {}), (" lake", -0.4, {" lake": -0.4, " sea": -1.5}), (" is", -0.1, {})]
    deltas, bound = path_deltas(base, moved)
    assert deltas == pytest.approx([0.2, 1.0]) and not bound  # stops after the first differing token
    far = [("A", -0.2, {"A": -0.2, "B": -4.0})]
    deltas, bound = path_deltas(base, far)
    assert bound and deltas == pytest.approx([3.9])  # "The" outside the top: at least -0.1 - (-4.0)
