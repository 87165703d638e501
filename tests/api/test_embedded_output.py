"""What `realign serve --demo` (and `realign submit --wait`) print: the adapter's real folder on this machine
(embedded mode) and how to download it, never the job-relative `train/adapter`; next steps after the demo; a
progress line at least every HEARTBEAT_S while a job waits; refusals as one line (against a real server)."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from api import embedded
from api.app import create_app
from api.embedded import bind_socket, format_result, next_steps, submit_body
from core.db.access.tenants import create_api_key
from core.db.engine import session_scope
from core.settings import Settings

from .support import RecordingEnqueuer, realign_body

JOB_ID = "job_00112233445566778899"


def succeeded_job() -> dict[str, object]:
    return {"id": JOB_ID, "state": "succeeded", "error": None, "category_counts": {"INVERT": 3},
            "metrics": {"train_steps": 4},
            "artifacts": {"adapter": "train/adapter", "adapter_id": "ad_123", "adapter_name": "kind-v2"}}


def test_the_demo_prints_the_adapter_folder_and_the_download_command(tmp_path: Path) -> None:
    folder = tmp_path / "state" / "jobs" / JOB_ID / "train" / "adapter"
    folder.mkdir(parents=True)
    text = format_result(succeeded_job(), base_url="http://127.0.0.1:8000", data_dir=tmp_path / "state")
    assert f"adapter directory: {folder.resolve()}" in text
    assert "peft.PeftModel.from_pretrained" in text and f"--lora-modules NAME={folder.resolve()}" in text
    assert "http://127.0.0.1:8000/v1/adapters/ad_123/download" in text and "-o kind-v2.tar.gz" in text
    assert f"http://127.0.0.1:8000/v1/jobs/{JOB_ID}/artifacts" in text
    assert "adapter: train/adapter" not in text


def test_a_remote_service_gets_no_local_path_but_the_download_command(tmp_path: Path) -> None:
    text = format_result(succeeded_job(), base_url="https://realign.example", data_dir=None)
    assert "adapter directory" not in text and "train/adapter" not in text.split("{")[0]
    assert "https://realign.example/v1/adapters/ad_123/download" in text
    assert "registered adapter: kind-v2 (ad_123)" in text


def test_the_demo_ends_with_next_steps(tmp_path: Path) -> None:
    text = next_steps("http://127.0.0.1:8799", tmp_path)
    assert "http://127.0.0.1:8799/ui" in text and "http://127.0.0.1:8799/docs" in text
    assert f"serve --data-dir {tmp_path} --port 8799" in text
    assert f"KEY=$(cat {tmp_path / 'local-api-key'})" in text
    assert 'curl -s http://127.0.0.1:8799/v1/jobs -H "Authorization: Bearer $KEY"' in text
    assert "submit --url http://127.0.0.1:8799 --file examples/synthetic_realign.json --wait" in text


@pytest.fixture
def live_service(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """The real app under uvicorn on a loopback port (jobs are recorded, not run); yields (url, API key)."""
    app = create_app(Settings(data_dir=tmp_path / "state"), RecordingEnqueuer())
    with session_scope(app.state.sessions) as session:
        key = create_api_key(session, tenant_name=f"t-{secrets.token_hex(3)}")
    sock = bind_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", key
    server.should_exit = True
    thread.join(10)
    sock.close()
    app.state.engine.dispose()


def test_a_waiting_job_still_prints_progress_lines(live_service: tuple[str, str], monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    url, key = live_service
    monkeypatch.setattr(embedded, "HEARTBEAT_S", 0.3)

    def cancel_soon() -> None:
        time.sleep(1.5)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as client:
            job = client.get("/v1/jobs").json()["data"][0]
            assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202

    canceller = threading.Thread(target=cancel_soon)
    canceller.start()
    assert submit_body(url, key, realign_body(), wait=True, poll_s=0.1) == 1  # cancelled, not succeeded
    canceller.join()
    lines = capsys.readouterr().out.splitlines()
    waiting = [line for line in lines if line.startswith("[") and line.endswith("] queued")]
    assert len(waiting) >= 3, lines  # the state never changed while queued, yet lines kept coming
    assert any(line.startswith("job ") and line.endswith(": cancelled") for line in lines)


def test_a_refusal_is_one_line_with_the_field(live_service: tuple[str, str],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    url, key = live_service
    body = realign_body(base_model={"name_or_path": "org/model", "revision": "main"})
    assert submit_body(url, key, body, wait=False) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("realign submit: error: POST /v1/realign -> 422: invalid base_model.revision:")
    assert len(err.splitlines()) == 1
    assert submit_body(url, "rk_000000000000_wrong", realign_body(), wait=False) == 1
    err = capsys.readouterr().err.strip()
    assert "-> 401" in err and "keys create --data-dir" in err and len(err.splitlines()) == 1
