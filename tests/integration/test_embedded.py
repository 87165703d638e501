"""Embedded mode: `realign serve` with no database and no broker configured runs on SQLite with the filesystem
broker and a worker it starts itself; a job submitted over HTTP succeeds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from api.embedded import free_port, submit

from .support import REPO_ROOT, tiny_synthetic_body

CLI = "from trace_engine.cli import main; raise SystemExit(main())"


def test_serve_embedded_runs_a_job_end_to_end(tmp_path: Path) -> None:
    port = free_port("127.0.0.1")
    env = {k: v for k, v in os.environ.items() if not k.startswith("REALIGN_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    server = subprocess.Popen([sys.executable, "-c", CLI, "serve", "--port", str(port), "--data-dir",
                               str(tmp_path / "state")], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        assert server.stdout is not None
        lines = []
        while not (lines and lines[-1].startswith("rk_")):
            line = server.stdout.readline()
            assert line, f"serve exited early: {''.join(lines)}"
            lines.append(line.strip())
        key = lines[-1]
        assert any("embedded" in line for line in lines)
        url = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=url, headers=headers, timeout=10) as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "API did not come up"
                time.sleep(0.1)
            body_file = tmp_path / "body.json"
            body_file.write_text(json.dumps(tiny_synthetic_body(n=16, variant="no_impact")))
            assert submit(url, key, body_file, wait=True, poll_s=0.2) == 0  # the CLI's client: 0 = succeeded
            job = client.get("/v1/jobs").json()["data"][0]
        assert job["state"] == "succeeded", job
        assert Path(job["artifacts"]["adapter"], "adapter_model.safetensors").is_file()
        assert (tmp_path / "state" / "realign.db").is_file()
        assert (tmp_path / "state" / "local-api-key").stat().st_mode & 0o077 == 0
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(5)
