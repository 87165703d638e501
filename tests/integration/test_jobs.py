"""A job from POST to succeeded through a real Celery worker on Redis, with Postgres as the record; idempotency;
validation failures; cancel of a running stage."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.support.fake_openai import spawn_fake_openai

from .support import Stack, stage_done, tiny_synthetic_body


def test_synthetic_job_succeeds_with_an_adapter_and_is_idempotent(shared_stack: Stack) -> None:
    body = tiny_synthetic_body(n=24, suites=["tpa"])
    job = shared_stack.submit(body, **{"Idempotency-Key": "it-success"})
    again = shared_stack.submit(body, **{"Idempotency-Key": "it-success"})
    assert again["id"] == job["id"]
    done = shared_stack.wait_done(job["id"], timeout=180)
    assert done["state"] == "succeeded", done
    assert sum(done["category_counts"].values()) == 24
    assert done["artifacts"]["adapter"] == "train/adapter"  # relative to the job folder: no server paths
    adapter = shared_stack.settings.data_dir / "jobs" / job["id"] / done["artifacts"]["adapter"]
    assert (adapter / "adapter_model.safetensors").is_file()
    provenance = json.loads((adapter / "realign.json").read_text())
    assert provenance["variant"] == "trace"
    assert done["metrics"]["train_steps"] >= 1 and "tpa_after" in done["metrics"]["eval"]
    assert {p["stage"] for p in done["progress"]} == {"validate", "triage", "score", "train", "evaluate"}
    assert all(p["completed_at"] for p in done["progress"])
    completed = [e["stage"] for e in shared_stack.events(job["id"]) if e["type"] == "stage_completed"]
    assert completed == ["validate", "triage", "score", "train", "evaluate"]  # each stage ran exactly once
    triage = shared_stack.client.get(f"/v1/jobs/{job['id']}/triage", params={"category": "INVERT"},
                                     headers=shared_stack.headers).json()
    assert triage["data"] and all(item["category"] == "INVERT" for item in triage["data"])
    assert triage["category_counts"] == {k: v for k, v in done["category_counts"].items() if v}
    registered = shared_stack.client.get(f"/v1/adapters/{done['artifacts']['adapter_id']}",
                                         headers=shared_stack.headers).json()  # registered with the success
    assert registered["job_id"] == job["id"] and registered["provenance"]["dataset"]["sha256"]
    assert registered["eval_report"]["tpa_after"] == done["metrics"]["eval"]["tpa_after"]  # the job's evaluation


def test_the_weight_shaping_a_job_asks_for_reaches_scoring(shared_stack: Stack) -> None:
    """`weight_cap: null` scores without the cap (the default caps at the engine's DEFAULT_WEIGHT_CAP); the uniform
    mix and the gold source reach scoring too."""
    hyper = {"weight_cap": None, "uniform_mix": 0.5, "gold_from": "auto", "gate_weights": True, "check_anchors": True,
             "max_steps": 1}
    job = shared_stack.submit(tiny_synthetic_body(n=24, hyperparameters=hyper))
    done = shared_stack.wait_done(job["id"], timeout=180)
    assert done["state"] == "succeeded", done
    summary = json.loads((shared_stack.settings.data_dir / "jobs" / job["id"] / "score" / "summary.json").read_text())
    assert summary["shaping"]["cap"] is None and summary["shaping"]["uniform_mix"] == 0.5
    assert summary["shaping"]["gate"] is True and summary["shaping"]["check_anchors"] is True
    assert summary["anchors"]["checked"] >= 1  # the tiny synthetic set has RETAIN pairs in its gold batch
    assert summary["gold"]["source"] == "auto"


def test_unreadable_dataset_fails_in_validating_with_a_clear_error(shared_stack: Stack) -> None:
    root = shared_stack.settings.datasets_root
    root.mkdir(parents=True, exist_ok=True)
    (root / "broken.jsonl").write_text('{"prompt": "hi"}\n{"chosen": "x"}\n')
    body = tiny_synthetic_body()
    body["dataset"] = {"type": "path", "path": "broken.jsonl"}
    job = shared_stack.submit(body)
    done = shared_stack.wait_done(job["id"], timeout=60)
    assert done["state"] == "failed"
    assert done["error"]["stage"] == "validate" and done["error"]["kind"] == "dataset_invalid"
    assert "no usable preference pairs" in done["error"]["message"]
    assert not any(p["stage"] == "triage" for p in done["progress"])


def test_unreachable_judge_fails_validation_before_any_gpu_stage(shared_stack: Stack) -> None:
    body = tiny_synthetic_body()
    body["judge"] = {"provider": "openai", "profile": "unreachable"}
    job = shared_stack.submit(body)
    done = shared_stack.wait_done(job["id"], timeout=90)
    assert done["state"] == "failed" and done["error"]["kind"] == "judge_unreachable", done["error"]
    assert {p["stage"] for p in done["progress"]} == {"validate"}


def write_marked_pairs(root: Path, n: int) -> str:
    """Pairs the fake judge sorts into all three categories (a response with VIOLATE violates)."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        chosen, rejected = f"answer {i} is fine", f"answer {i} is worse"
        if i % 4 == 0:
            chosen += " VIOLATE"  # INVERT
        elif i % 4 == 1:
            chosen, rejected = chosen + " VIOLATE", rejected + " VIOLATE"  # PUNISH
        rows.append({"id": f"p{i}", "prompt": f"question number {i}?", "chosen": chosen, "rejected": rejected})
    (root / "marked.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return "marked.jsonl"


def judged_body(stack: Stack, base_url: str, n: int) -> dict:
    """A body judged by the stack's `fake` judge profile: the fake server must run on that profile's port
    (`spawn_fake_openai(port=stack.judge_port)`; a request names a profile, never a URL)."""
    profile_url = str(stack.settings.judge_profiles["fake"].base_url).rstrip("/")
    assert base_url.rstrip("/") == profile_url, (f"start the fake judge on the `fake` profile's port: "
                                                 f"spawn_fake_openai(port=stack.judge_port) ({profile_url})")
    body = tiny_synthetic_body(variant="no_impact")
    body["dataset"] = {"type": "path", "path": write_marked_pairs(stack.settings.datasets_root, n)}
    body["judge"] = {"provider": "openai", "profile": "fake"}
    return body


def test_cancel_stops_a_running_triage_within_seconds(shared_stack: Stack) -> None:
    with spawn_fake_openai(port=shared_stack.judge_port, latency=0.3) as fake:
        job = shared_stack.submit(judged_body(shared_stack, fake.base_url, n=200))
        shared_stack.wait(job["id"], lambda j: stage_done(j, "triage") > 0, timeout=60)
        response = shared_stack.client.post(f"/v1/jobs/{job['id']}/cancel", headers=shared_stack.headers)
        asked = time.monotonic()
        assert response.status_code == 202 and response.json()["state"] == "cancelling"
        done = shared_stack.wait_done(job["id"], timeout=15)
        took = time.monotonic() - asked
        calls_at_cancel = fake.stats()["calls_total"]
        time.sleep(1.0)
        assert fake.stats()["calls_total"] - calls_at_cancel <= 4  # at most the in-flight calls finish
    assert done["state"] == "cancelled" and took < 5.0, (done["state"], took)
    assert stage_done(done, "triage") < 400


def test_readiness_checks_the_real_broker(shared_stack: Stack, tmp_path: Path) -> None:
    assert shared_stack.client.get("/readyz").status_code == 200
    from fastapi.testclient import TestClient

    from api.service import build_app
    from core.settings import Settings

    dead = Settings(data_dir=tmp_path, database_url=shared_stack.settings.database_url,
                    broker_url="redis://127.0.0.1:1/0")
    app = build_app(dead)
    with TestClient(app) as client:
        response = client.get("/readyz")
    app.state.engine.dispose()
    assert response.status_code == 503
    assert response.json()["checks"]["broker"] != "ok"
