"""A real service stack for integration tests: the API app (TestClient), real Celery worker processes on the
machine's Redis, Postgres as the system of record, and helpers to follow a job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.embedded import worker_command
from core.celery_app import queue_list
from core.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
TERMINAL = ("succeeded", "failed", "cancelled")


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as REALIGN_* variables, for worker processes (dicts such as the judge profiles as JSON,
    secrets with their real value)."""
    env = dict(os.environ)
    as_json = settings.model_dump(mode="json")
    for name, value in settings.model_dump().items():
        key = f"REALIGN_{name.upper()}"
        if value is None:
            env.pop(key, None)
        elif isinstance(value, SecretStr):
            env[key] = value.get_secret_value()
        elif isinstance(value, (dict, list)):
            env[key] = json.dumps(as_json[name])
        else:
            env[key] = str(value)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


@dataclass
class WorkerProcess:
    """`celery -A worker.tasks worker` in its own process group (so SIGKILL takes all of it)."""

    settings: Settings
    log_path: Path
    concurrency: int = 4
    process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> WorkerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            command = worker_command(self.concurrency, queue_list(self.settings), name="test", loglevel="INFO")
            self.process = subprocess.Popen(command, env=settings_env(self.settings), stdout=log,
                                            stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited early (rc={self.process.returncode}):\n{self.log()[-3000:]}")
            if " ready." in self.log_path.read_text(errors="replace")[offset:]:
                return self
            time.sleep(0.1)
        raise TimeoutError(f"worker not ready after {timeout}s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool threads): nothing gets to clean up."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)


@dataclass
class Stack:
    settings: Settings
    client: TestClient
    headers: dict[str, str]
    workers: list[WorkerProcess] = field(default_factory=list)
    judge_port: int = 0  # the `fake` judge profile's port: spawn_fake_openai(port=stack.judge_port)

    def start_worker(self, concurrency: int = 4) -> WorkerProcess:
        worker = WorkerProcess(self.settings, self.settings.data_dir / f"worker-{len(self.workers)}.log",
                               concurrency)
        self.workers.append(worker)
        return worker.start()

    def submit(self, body: dict[str, Any], **headers: str) -> dict[str, Any]:
        response = self.client.post("/v1/realign", json=body, headers={**self.headers, **headers})
        assert response.status_code == 202, response.text
        return response.json()

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.client.get(f"/v1/jobs/{job_id}", headers=self.headers)
        assert response.status_code == 200, response.text
        return response.json()

    def wait(self, job_id: str, until: Callable[[dict[str, Any]], bool], timeout: float = 120.0,
             poll: float = 0.1) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        job = self.job(job_id)
        while not until(job):
            if time.monotonic() > deadline:
                logs = "\n".join(w.log()[-2000:] for w in self.workers)
                raise TimeoutError(f"job {job_id} stuck in {job['state']}: {job}\n{logs}")
            time.sleep(poll)
            job = self.job(job_id)
        return job

    def wait_done(self, job_id: str, timeout: float = 120.0, poll: float = 0.1) -> dict[str, Any]:
        return self.wait(job_id, lambda j: j["state"] in TERMINAL, timeout, poll)

    def events(self, job_id: str) -> list[dict[str, Any]]:
        response = self.client.get(f"/v1/jobs/{job_id}/events", params={"limit": 500}, headers=self.headers)
        assert response.status_code == 200, response.text
        return response.json()["data"]


def stage_done(job: dict[str, Any], stage: str) -> int:
    return next((p["done"] for p in job["progress"] if p["stage"] == stage), 0)


def tiny_synthetic_body(n: int = 24, **method: Any) -> dict[str, Any]:
    hyper = {"lr": 0.002, "epochs": 1, "batch_size": 8, "max_prompt_len": 64, "max_len": 128, "lora_r": 4,
             "lora_alpha": 8, "lora_dropout": 0.0}
    hyper.update(method.pop("hyperparameters", {}))
    return {
        "policy": {"text": "# New policy\n## [P1] Follow the synthetic world's new rules\nSee the rules.\n",
                   "name": "synthetic-new"},
        "dataset": {"type": "synthetic", "seed": 0, "n": n},
        "base_model": {"name_or_path": "synthetic-tiny"},
        "judge": {"provider": "synthetic"},
        "method": {"variant": method.pop("variant", "trace"), "hyperparameters": hyper},
        "eval": {"suites": method.pop("suites", [])},
    }


BYO = REPO_ROOT / "examples" / "byo"


def upload_byo(stack: Stack, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The bring-your-own example's rules file under the dataset root, and `rows` uploaded: the file record."""
    import shutil

    stack.settings.datasets_root.mkdir(parents=True, exist_ok=True)
    shutil.copy(BYO / "rules.json", stack.settings.datasets_root / "byo-rules.json")
    upload = stack.client.post("/v1/files", headers=stack.headers, files={
        "file": ("byo.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())})
    assert upload.status_code == 201, upload.text
    return dict(upload.json())


def byo_job_body(file_id: str, base_model: str, adapter_name: str) -> dict[str, Any]:
    """A CI-sized realign job on the example policy with the rules judge: 2 steps at a high learning rate."""
    return {
        "policy": {"text": (BYO / "policy.md").read_text(), "name": "home-help-v2"},
        "dataset": {"type": "file", "file_id": file_id},
        "base_model": {"name_or_path": base_model},
        "judge": {"provider": "rules", "rules_path": "byo-rules.json"},
        "method": {"variant": "trace", "hyperparameters": {
            "lr": 0.01, "epochs": 1, "max_steps": 2, "batch_size": 4, "max_prompt_len": 64, "max_len": 128,
            "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "gold_size": 3, "normalise": "mean"}},
        "eval": {"suites": ["tpa"]},
        "adapter_name": adapter_name,
    }
