"""Embedded mode: `realign serve` with no database and no broker configured runs on SQLite with the filesystem
broker, a worker and the local serving backend it starts itself. End to end: a job submitted over HTTP succeeds,
its adapter is registered, the OpenAI SDK gets answers from it through the service's gateway that differ from the
base model's, and an evaluation job reports TPA (with confidence intervals) for the adapter and the base."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
from openai import OpenAI

from api.embedded import TERMINAL, submit
from tests.support.embedded_service import embedded_service
from trace_engine.synthetic.world import make_world

from .support import tiny_synthetic_body


def test_serve_embedded_runs_a_job_end_to_end(tmp_path: Path) -> None:
    with embedded_service(tmp_path / "state") as served:
        key, url = served.key, served.url
        assert any("embedded" in line for line in served.lines)
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=url, headers=headers, timeout=10) as client:
            body_file = tmp_path / "body.json"
            body_file.write_text(json.dumps(tiny_synthetic_body(
                n=16, variant="no_impact", hyperparameters={"batch_size": 4, "lr": 0.01})))
            assert submit(url, key, body_file, wait=True, poll_s=0.2) == 0  # the CLI's client: 0 = succeeded
            job = client.get("/v1/jobs").json()["data"][0]
            assert job["state"] == "succeeded", job
            adapters = client.get("/v1/adapters").json()["data"]
            assert [a["job_id"] for a in adapters] == [job["id"]]
            adapter = adapters[0]
            assert job["artifacts"]["adapter_id"] == adapter["id"]
            check_gateway(url, key, adapter["name"])
            check_eval_job(client, adapter["id"])
        assert Path(tmp_path / "state" / "jobs" / job["id"], job["artifacts"]["adapter"],
                    "adapter_model.safetensors").is_file()
        assert (tmp_path / "state" / "realign.db").is_file()
        assert (tmp_path / "state" / "local-api-key").stat().st_mode & 0o077 == 0


def check_gateway(url: str, key: str, adapter_name: str) -> None:
    """The adapter answers through the service's OpenAI-compatible gateway, differently from the base model."""
    sdk = OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=120)
    assert adapter_name in [m.id for m in sdk.models.list().data]
    prompts = [t.prompt for t in make_world(0).test_prompts(8)]

    def answers(model: str) -> list[str]:
        return [str(sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": p}],
                                                max_tokens=24, temperature=0).choices[0].message.content)
                for p in prompts]

    tuned, base = answers(adapter_name), answers("synthetic-tiny")
    assert all(tuned) and tuned != base


def check_eval_job(client: httpx.Client, adapter_id: str) -> None:
    body = {"model": adapter_id, "suites": ["tpa"], "n": 6, "max_new_tokens": 24,
            "policy": {"text": make_world(0).new_policy, "name": "synthetic-new"},
            "judge": {"provider": "synthetic"}, "dataset": {"type": "synthetic", "seed": 0}}
    response = client.post("/v1/evals", json=body)
    assert response.status_code == 202, response.text
    job = response.json()
    deadline = time.monotonic() + 240
    while job["state"] not in TERMINAL:
        assert time.monotonic() < deadline, job
        time.sleep(0.5)
        job = client.get(f"/v1/evals/{job['id']}").json()
    assert job["state"] == "succeeded", (job.get("error"), job.get("events"))
    summary = job["report"]["summary"]
    for label in ("target", "base"):
        tpa = summary[label]["tpa/overall"]
        assert tpa["n"] == 6 and 0 <= tpa["ci_low"] <= tpa["value"] <= tpa["ci_high"] <= 1
    assert job["report"]["comparison"]["vs_base"][0]["metric"] == "tpa/overall"
    assert job["report"]["reports"]["target"]["model"]["backend"] == "serving-http"
