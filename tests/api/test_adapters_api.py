"""The adapter registry over HTTP (SQLite and Postgres): list with cursors, read, download, delete, tenant
isolation; and evaluation jobs' submission."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from core.registry import ADAPTER_WEIGHTS, local_adapter_dir
from tests.trace_engine.serving.tiny_adapters import TinyWorld, tiny_world

from .support import Harness, assert_problem, realign_body, register_adapter, tenant_of


def _register(harness: Harness, weights: bytes = b"weights", **overrides: object) -> str:
    tenant = tenant_of(harness.sessions, harness.headers)
    return register_adapter(harness.sessions, harness.settings, tenant, weights=weights, **overrides)


def test_a_registered_adapter_has_its_provenance_and_weights_hash(harness: Harness) -> None:
    adapter_id = _register(harness, b"abc", adapter_name="kind-v2")
    got = harness.client.get(f"/v1/adapters/{adapter_id}", headers=harness.headers)
    assert got.status_code == 200, got.text
    adapter = got.json()
    assert adapter["name"] == "kind-v2" and adapter["sha256"] == hashlib.sha256(b"abc").hexdigest()
    provenance = adapter["provenance"]
    assert provenance["policy"]["name"] == "new" and len(provenance["policy"]["sha256"]) == 64
    assert provenance["dataset"]["reference"] == {"type": "synthetic", "seed": 3, "n": 16}
    assert provenance["base_model"]["name_or_path"] == "synthetic-tiny"
    assert provenance["judge"]["id"].startswith("synthetic") and provenance["method"]["variant"] == "trace"
    assert provenance["parent_adapter_id"] is None and adapter["job_id"] == provenance["job_id"]


def test_listing_pages_newest_first_with_a_cursor(harness: Harness) -> None:
    ids = [_register(harness, f"w{i}".encode()) for i in range(3)]
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = harness.client.get("/v1/adapters", params=params, headers=harness.headers).json()
        seen += [a["id"] for a in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    assert_problem(harness.client.get("/v1/adapters", params={"cursor": "nope"}, headers=harness.headers), 400)


def test_download_streams_the_safetensors_bytes(harness: Harness) -> None:
    weights = bytes(range(256)) * 1000
    adapter_id = _register(harness, weights)
    response = harness.client.get(f"/v1/adapters/{adapter_id}/download", params={"format": "safetensors"},
                                  headers=harness.headers)
    assert response.status_code == 200
    assert response.content == weights
    assert response.headers["x-content-sha256"] == hashlib.sha256(weights).hexdigest()
    assert ".safetensors" in response.headers["content-disposition"]
    assert_problem(harness.client.get(f"/v1/adapters/{adapter_id}/download", params={"format": "zip"},
                                      headers=harness.headers), 422)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyWorld:
    return tiny_world(tmp_path_factory.mktemp("adapters-tiny"))


def test_the_adapter_record_shows_its_base_model_and_lora_settings(harness: Harness, tiny: TinyWorld) -> None:
    tenant = tenant_of(harness.sessions, harness.headers)
    adapter_id = register_adapter(harness.sessions, harness.settings, tenant, source=tiny.adapter_a)
    adapter = harness.client.get(f"/v1/adapters/{adapter_id}", headers=harness.headers).json()
    assert adapter["base_model"] == {"name_or_path": "synthetic-tiny", "revision": None}
    lora = adapter["lora"]
    assert lora["r"] == 4 and lora["alpha"] == 32 and sorted(lora["target_modules"]) == ["q_proj", "v_proj"]
    assert lora["peft_type"] == "LORA"
    listed = harness.client.get("/v1/adapters", headers=harness.headers).json()["data"]
    assert listed[0]["lora"] == lora


def test_the_downloaded_archive_loads_with_plain_peft(harness: Harness, tiny: TinyWorld, tmp_path: Path) -> None:
    """GET .../download is the adapter directory as a tar.gz: extracted, plain peft loads it, and it is the same
    adapter (same logits) as the folder the worker wrote."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tenant = tenant_of(harness.sessions, harness.headers)
    adapter_id = register_adapter(harness.sessions, harness.settings, tenant, source=tiny.adapter_a,
                                  adapter_name="kind-v3")
    response = harness.client.get(f"/v1/adapters/{adapter_id}/download", headers=harness.headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/gzip"
    assert 'filename="kind-v3.tar.gz"' in response.headers["content-disposition"]
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as tar:
        members = tar.getmembers()
        assert sorted(m.name for m in members) == ["kind-v3", "kind-v3/adapter_config.json",
                                                   "kind-v3/adapter_model.safetensors"]
        assert all(m.isfile() or m.isdir() for m in members)  # no links, nothing outside kind-v3/
        tar.extractall(tmp_path, filter="data")
    folder = tmp_path / "kind-v3"
    weights = (folder / "adapter_model.safetensors").read_bytes()
    assert hashlib.sha256(weights).hexdigest() == response.headers["x-adapter-weights-sha256"]
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "synthetic-tiny"  # what the job named, not a server path

    ids = torch.tensor([[1, 5, 9, 12, 7]])
    base = AutoModelForCausalLM.from_pretrained(tiny.base, dtype=torch.float32).eval()
    with torch.no_grad():
        plain = base(ids).logits
        downloaded = PeftModel.from_pretrained(base, folder).eval()(ids).logits
        original = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny.base, dtype=torch.float32),
                                             tiny.adapter_a).eval()(ids).logits
    assert torch.allclose(downloaded, original) and not torch.allclose(downloaded, plain)


def test_an_adapter_whose_files_were_swapped_for_a_symlink_is_not_archived(harness: Harness, tmp_path: Path) -> None:
    adapter_id = _register(harness)
    job_id = harness.client.get(f"/v1/adapters/{adapter_id}", headers=harness.headers).json()["job_id"]
    folder = local_adapter_dir(harness.settings, f"jobs/{job_id}/train/adapter")
    secret = tmp_path / "secret"
    secret.write_text("not yours")
    (folder / "adapter_model.safetensors").unlink()
    (folder / "adapter_model.safetensors").symlink_to(secret)
    assert_problem(harness.client.get(f"/v1/adapters/{adapter_id}/download", headers=harness.headers), 410)


def test_delete_removes_the_row_and_the_files(harness: Harness) -> None:
    adapter_id = _register(harness)
    path = harness.client.get(f"/v1/adapters/{adapter_id}", headers=harness.headers).json()["job_id"]
    folder = local_adapter_dir(harness.settings, f"jobs/{path}/train/adapter")
    assert (folder / ADAPTER_WEIGHTS).is_file()
    assert harness.client.delete(f"/v1/adapters/{adapter_id}", headers=harness.headers).status_code == 204
    assert not folder.exists()
    assert_problem(harness.client.get(f"/v1/adapters/{adapter_id}", headers=harness.headers), 404)
    assert_problem(harness.client.delete(f"/v1/adapters/{adapter_id}", headers=harness.headers), 404)
    assert harness.client.get("/v1/adapters", headers=harness.headers).json()["data"] == []


def test_another_tenant_sees_nothing_and_can_delete_nothing(harness: Harness) -> None:
    adapter_id = _register(harness)
    other = harness.new_headers("other")
    for path in (f"/v1/adapters/{adapter_id}", f"/v1/adapters/{adapter_id}/download"):
        assert_problem(harness.client.get(path, headers=other), 404)
    assert_problem(harness.client.delete(f"/v1/adapters/{adapter_id}", headers=other), 404)
    assert harness.client.get("/v1/adapters", headers=other).json()["data"] == []
    assert harness.client.get(f"/v1/adapters/{adapter_id}", headers=harness.headers).status_code == 200
    assert_problem(harness.client.get("/v1/adapters"), 401)


def test_a_realign_job_may_name_a_parent_adapter_of_its_own_tenant_only(harness: Harness) -> None:
    adapter_id = _register(harness)
    body = realign_body(parent_adapter=adapter_id)
    assert harness.client.post("/v1/realign", json=body, headers=harness.headers).status_code == 202
    problem = assert_problem(harness.client.post("/v1/realign", json=body, headers=harness.new_headers("b")), 422)
    assert problem["errors"][0]["field"] == "parent_adapter"
    child = _register(harness, b"child", parent_adapter=adapter_id)
    got = harness.client.get(f"/v1/adapters/{child}", headers=harness.headers).json()
    assert got["provenance"]["parent_adapter_id"] == adapter_id


def eval_body(model: str, **overrides: object) -> dict[str, object]:
    body: dict[str, object] = {"model": model, "suites": ["tpa"], "policy": {"text": "# P\n## [P1] Kind\nBe kind.\n"},
                               "judge": {"provider": "synthetic"}, "dataset": {"type": "synthetic", "seed": 3},
                               "n": 4}
    body.update(overrides)
    return body


def test_an_eval_job_is_queued_for_an_adapter_or_the_base_model(harness: Harness) -> None:
    adapter_id = _register(harness)
    for model in (adapter_id, "synthetic-tiny"):
        response = harness.client.post("/v1/evals", json=eval_body(model), headers=harness.headers)
        assert response.status_code == 202, response.text
        job = response.json()
        assert job["kind"] == "eval" and job["state"] == "queued" and job["report"] is None
        assert harness.enqueuer.calls[-1] == (job["id"], "validate")
        assert harness.client.get(f"/v1/evals/{job['id']}", headers=harness.headers).json()["id"] == job["id"]
        assert harness.client.get(f"/v1/jobs/{job['id']}", headers=harness.headers).json()["kind"] == "eval"
    realign = harness.client.post("/v1/realign", json=realign_body(), headers=harness.headers).json()
    assert_problem(harness.client.get(f"/v1/evals/{realign['id']}", headers=harness.headers), 404)


def test_an_eval_of_an_unknown_or_foreign_model_is_refused(harness: Harness) -> None:
    adapter_id = _register(harness)
    problem = assert_problem(harness.client.post("/v1/evals", json=eval_body("nope"), headers=harness.headers), 422)
    assert problem["errors"][0]["field"] == "model"
    assert_problem(harness.client.post("/v1/evals", json=eval_body(adapter_id), headers=harness.new_headers("x")),
                   422)
    assert_problem(harness.client.post("/v1/evals", json=eval_body(adapter_id, suites=[]), headers=harness.headers),
                   422)
    assert harness.enqueuer.calls == []
