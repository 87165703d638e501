"""The deployment files: docker-compose.yml wires the service as design.md §7 says; the Dockerfile is multi-stage
and runs as a non-root user; the README's example request is valid and matches the synthetic world."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.jobspec import RealignRequest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {"api", "worker-judge", "worker-gpu", "postgres", "redis", "vllm"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def gpu_reserved(service: dict[str, Any]) -> bool:
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    return any("gpu" in d.get("capabilities", []) and d.get("driver") == "nvidia" for d in devices)


def test_every_service_is_present_with_a_healthcheck(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= SERVICES
    for name in SERVICES:
        check = services[name].get("healthcheck")
        assert check and check.get("test"), f"{name} has no healthcheck"


def test_gpu_worker_and_vllm_reserve_a_gpu_and_the_judge_worker_does_not(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert gpu_reserved(services["worker-gpu"]) and gpu_reserved(services["vllm"])
    assert not gpu_reserved(services["worker-judge"]) and not gpu_reserved(services["api"])
    gpu_cmd, judge_cmd = services["worker-gpu"]["entrypoint"], services["worker-judge"]["entrypoint"]
    assert gpu_cmd[gpu_cmd.index("-Q") + 1] == "gpu" and gpu_cmd[gpu_cmd.index("-c") + 1] == "1"
    assert judge_cmd[judge_cmd.index("-Q") + 1] == "judge"
    gpu_args = services["worker-gpu"]["build"]["args"]
    assert "cu1" in gpu_args["TORCH_SPEC"] and str(gpu_args["INSTALL_CC"]) == "1"  # CUDA torch + a compiler


def test_vllm_serves_lora_and_is_not_published_to_the_host(compose: dict[str, Any]) -> None:
    vllm = compose["services"]["vllm"]
    assert "--enable-lora" in vllm["command"]
    assert "ports" not in vllm
    assert "frontend" not in vllm["networks"]
    assert compose["networks"]["backend"].get("internal") is True
    assert "ports" in compose["services"]["api"]
    for name in ("postgres", "redis"):
        assert "ports" not in compose["services"][name]


def test_the_gateway_reaches_vllm_with_runtime_lora_loading_on_the_shared_adapter_volume(
        compose: dict[str, Any]) -> None:
    from core.settings import Settings

    services = compose["services"]
    env = services["api"]["environment"]
    assert env["REALIGN_SERVING_URL"] == "http://vllm:8000/v1"
    settings = Settings(serving_url=env["REALIGN_SERVING_URL"], data_dir=env["REALIGN_DATA_DIR"])
    assert settings.serving_api_url == "http://vllm:8000"  # the setting name the app reads
    vllm = services["vllm"]
    command = vllm["command"]
    assert "--enable-lora" in command and int(command[command.index("--max-lora-rank") + 1]) >= 32
    assert str(vllm["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"]).lower() == "true"
    api_mount = next(v for v in services["api"]["volumes"] if v.startswith("realign-data:"))
    vllm_mount = next(v for v in vllm["volumes"] if v.startswith("realign-data:"))
    assert api_mount.split(":")[1] == vllm_mount.split(":")[1] == env["REALIGN_DATA_DIR"]
    assert "REALIGN_SERVING_ADAPTER_ROOT" not in env  # same path on both sides: no mapping needed
    assert "ports" not in vllm


def test_services_start_in_order_and_share_one_configuration(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["api"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["api"]["depends_on"]["redis"]["condition"] == "service_healthy"
    for name in ("api", "worker-judge", "worker-gpu"):
        env = services[name]["environment"]
        assert env["REALIGN_DATABASE_URL"].startswith("postgresql://") and env["REALIGN_BROKER_URL"].startswith("redis://")
        assert not any(re.search(r"sk-[A-Za-z0-9]", str(v)) for v in env.values())  # no secret in the file


def test_dockerfile_is_multi_stage_and_non_root() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, flags=re.M)) >= 2
    users = re.findall(r"^USER (\S+)", text, flags=re.M)
    assert users and users[-1] not in ("root", "0")
    assert "COPY migrations" in text


def test_example_request_is_valid_and_uses_the_synthetic_world() -> None:
    from trace_engine.synthetic.world import make_world

    body = json.loads((ROOT / "examples" / "synthetic_realign.json").read_text())
    request = RealignRequest.model_validate(body)
    assert request.dataset.type == "synthetic" and request.judge.provider == "synthetic"
    assert request.base_model.name_or_path == "synthetic-tiny"
    assert request.policy.text.strip() == make_world(request.dataset.seed).new_policy.strip()


def test_api_and_workers_restart_when_they_exit(compose: dict[str, Any]) -> None:
    for name in ("api", "worker-judge", "worker-gpu"):
        assert compose["services"][name].get("restart") == "unless-stopped", name
