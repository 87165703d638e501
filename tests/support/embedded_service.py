"""`realign serve` in embedded mode as a child process on a free port, for tests that drive it over HTTP or from a
browser: started with a fresh data dir and no REALIGN_* settings, ready once `/readyz` answers, stopped with its
whole process group (worker and serving backend included)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.servers import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
CLI = "from trace_engine.cli import main; raise SystemExit(main())"


@dataclass
class EmbeddedService:
    url: str
    key: str  # the local API key it printed (tenant `local`)
    lines: list[str]  # what it printed up to the key


@contextmanager
def embedded_service(data_dir: Path, ready_timeout_s: float = 60) -> Iterator[EmbeddedService]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REALIGN_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    server = subprocess.Popen([sys.executable, "-c", CLI, "serve", "--port", str(port), "--data-dir", str(data_dir)],
                              cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    try:
        assert server.stdout is not None
        lines: list[str] = []
        while not (lines and lines[-1].startswith("rk_")):
            line = server.stdout.readline()
            assert line, f"serve exited early: {''.join(lines)}"
            lines.append(line.strip())
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + ready_timeout_s
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the API did not come up"
            time.sleep(0.1)
        yield EmbeddedService(url, lines[-1], lines)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(5)
