"""Start the local serving backend as a child process (the API process never imports torch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class LocalServerProcess:
    base_url: str
    model: str
    process: subprocess.Popen[str]


@contextmanager
def spawn_local_server(model: str, *, extra_args: Sequence[str] = (), startup_timeout_s: float = 120.0,
                       env: dict[str, str] | None = None) -> Iterator[LocalServerProcess]:
    """Run `python -m trace_engine.serving.local_server --model MODEL --port 0 ...`; yield once it serves."""
    cmd = [sys.executable, "-m", "trace_engine.serving.local_server", "--model", model, "--port", "0",
           *extra_args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    stderr_tail: list[str] = []
    threading.Thread(target=_drain, args=(proc, stderr_tail), daemon=True).start()
    try:
        line = _first_line(proc, startup_timeout_s)
        if not line:
            raise RuntimeError(f"local server exited before serving (rc={proc.poll()}): {''.join(stderr_tail)}")
        info = json.loads(line)
        yield LocalServerProcess(info["base_url"], info["model"], proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _first_line(proc: subprocess.Popen[str], timeout_s: float) -> str:
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(proc.stdout.readline() if proc.stdout else ""),
                              daemon=True)
    reader.start()
    reader.join(timeout_s)
    if reader.is_alive():
        raise TimeoutError(f"local server did not start within {timeout_s} s")
    return result[0].strip() if result else ""


def _drain(proc: subprocess.Popen[str], tail: list[str]) -> None:
    """Keep reading stderr so the child never blocks on a full pipe; remember the last lines for errors."""
    assert proc.stderr is not None
    for line in proc.stderr:
        tail.append(line)
        del tail[:-40]
