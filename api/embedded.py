"""`realign serve`: the API under uvicorn plus (embedded) a real Celery worker in a child process, and `submit`,
a small HTTP client that follows a job to its end.

Embedded = no database and no broker configured: SQLite and kombu's `filesystem://` broker, both under the data
dir, so one command runs the whole service on a laptop. The local API key is created once and kept in
`<data_dir>/local-api-key` (mode 0600) so restarts print the same key.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from api.settings import Settings

LOCAL_TENANT = "local"
KEY_FILE = "local-api-key"
TERMINAL = ("succeeded", "failed", "cancelled")


# ---------------------------------------------------------------- local key and worker


def local_api_key(settings: Settings) -> str:
    """The embedded service's key: reused while it still authenticates, else a new one for tenant `local`."""
    from api.cli import create_key
    from api.db import access
    from api.db.engine import make_engine, make_session_factory

    path = settings.data_dir / KEY_FILE
    if path.is_file():
        key = path.read_text().strip()
        engine = make_engine(settings.sqlalchemy_url)
        try:
            with make_session_factory(engine)() as session:
                if access.authenticate(session, key=key) is not None:
                    return key
        except Exception:  # no schema yet: fall through and create one
            pass
        finally:
            engine.dispose()
    key = create_key(settings, LOCAL_TENANT)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(key + "\n")
    return key


def worker_env(settings: Settings) -> dict[str, str]:
    """The child worker reads the same settings from REALIGN_* variables."""
    env = dict(os.environ)
    env["REALIGN_DATA_DIR"] = str(settings.data_dir)
    for name, value in (("REALIGN_DATABASE_URL", settings.database_url), ("REALIGN_BROKER_URL", settings.broker_url),
                        ("REALIGN_SERVING_URL", settings.serving_url)):
        if value:
            env[name] = value
        else:
            env.pop(name, None)
    env["REALIGN_SERVING_ISOLATION"] = settings.serving_isolation  # "off" for the local server embedded starts
    if settings.judge_profiles:  # operator config the worker needs to build judges (docs/security.md)
        env["REALIGN_JUDGE_PROFILES"] = json.dumps(settings.model_dump(mode="json")["judge_profiles"])
    repo_root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo_root, env.get("PYTHONPATH")]))
    return env


def worker_command(concurrency: int, queues: str = "judge,gpu", name: str = "embedded",
                   loglevel: str = "WARNING") -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "worker.tasks", "worker", "-Q", queues, "--pool", "threads",
            "-c", str(concurrency), "--loglevel", loglevel, "-n", f"{name}-{os.getpid()}@%h",
            "--without-gossip", "--without-mingle", "--without-heartbeat"]


def start_worker(settings: Settings, concurrency: int) -> subprocess.Popen[bytes]:
    log_path = settings.data_dir / "worker.log"
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child; closed when the parent exits
    from worker.celery_app import queue_list

    return subprocess.Popen(worker_command(concurrency, queue_list(settings)), env=worker_env(settings), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent)


def _die_with_parent() -> None:
    """Linux: the worker gets SIGTERM when `realign serve` dies, however it dies (best effort elsewhere)."""
    if sys.platform.startswith("linux"):
        import contextlib
        import ctypes

        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def stop_worker(process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Warm shutdown (SIGTERM: Celery finishes nothing new, running stages stop at their lease), then SIGKILL."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------- serve


def serving_model_path(settings: Settings) -> str:
    """The local backend's model: the synthetic world's cached base (built in a child process: this process never
    imports torch), a folder under the model root, or a Hub id as given."""
    from api.paths import PathEscapesRoot, resolve_under_root

    name = settings.serving_base_model
    if name in ("synthetic-tiny", "synthetic"):
        code = "from trace_engine.synthetic.base_model import ensure_base_model; print(ensure_base_model().path)"
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                             env=worker_env(settings))
        return out.stdout.strip().splitlines()[-1]
    try:
        local = resolve_under_root(settings.models_root, name)
    except PathEscapesRoot:
        return name
    return str(local) if local.is_dir() else name


@contextlib.contextmanager
def local_serving(settings: Settings, enabled: bool) -> Iterator[Settings]:
    """Start the local serving backend (transformers + peft, vLLM's protocol) unless disabled or a serving URL is
    configured; yields the settings with `serving_url` pointing at it."""
    if not enabled or settings.serving_url:
        yield settings
        return
    from trace_engine.serving.launcher import spawn_local_server

    args = ["--served-model-name", settings.serving_base_model, "--max-loras", str(settings.serving_max_adapters),
            "--num-threads", "1"]
    with spawn_local_server(serving_model_path(settings), extra_args=args, startup_timeout_s=180) as server:
        print(f"local serving backend on {server.base_url} (model {settings.serving_base_model})", flush=True)
        # the local server runs one adapter per batch: adapter-less requests never see LoRA weights (issue 17)
        yield settings.model_copy(update={"serving_url": server.base_url, "serving_isolation": "off"})


def serve(settings: Settings, *, host: str, port: int, start_worker: bool = True, worker_concurrency: int = 4,
          demo_file: str | None = None, start_serving: bool = True) -> int:
    # uvicorn re-raises SIGTERM after its shutdown; make that an exception so `finally` stops the children.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    with local_serving(settings, start_serving) as served:
        return _serve(served, host=host, port=port, start_worker=start_worker, worker_concurrency=worker_concurrency,
                      demo_file=demo_file)


def _serve(settings: Settings, *, host: str, port: int, start_worker: bool, worker_concurrency: int,
           demo_file: str | None) -> int:
    import uvicorn

    from api.service import build_app

    embedded = settings.database_url is None and settings.broker_url is None
    port = port or free_port(host)
    app = build_app(settings)  # migrates the database first
    key = local_api_key(settings) if embedded else None
    worker = _start_worker(settings, worker_concurrency) if start_worker else None
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    url = f"http://{host}:{port}"
    mode = "embedded (SQLite + filesystem broker)" if embedded else "connected"
    print(f"realign service on {url}  [{mode}; data dir {settings.data_dir}; docs at {url}/docs]", flush=True)
    if key:
        print("local API key (tenant 'local'):", flush=True)
        print(key, flush=True)
    try:
        if demo_file is None:
            server.run()
            return 0
        thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        if not key:
            key = os.environ.get("REALIGN_API_KEY", "")
        return submit(url, key, Path(demo_file), wait=True, data_dir=settings.data_dir)
    finally:
        server.should_exit = True
        if worker is not None:
            stop_worker(worker)


def _exit_on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def _start_worker(settings: Settings, concurrency: int) -> subprocess.Popen[bytes]:
    process = start_worker(settings, concurrency)
    print(f"started a Celery worker (pid {process.pid}; log {settings.data_dir / 'worker.log'})", flush=True)
    return process


# ---------------------------------------------------------------- submit (HTTP client)


def submit(url: str, api_key: str | None, body_file: Path, *, wait: bool, poll_s: float = 1.0,
           data_dir: Path | None = None) -> int:
    """POST the body; with `wait`, print progress lines until the job ends, then the result. Exit code 0 only
    for a succeeded job (or, without `wait`, an accepted one). `data_dir`: the service's data dir when it runs
    on this machine (embedded), so the result names the adapter's real folder."""
    key = api_key or os.environ.get("REALIGN_API_KEY") or _saved_local_key()
    if not key:
        print("error: no API key (pass --api-key, set REALIGN_API_KEY, or start `realign serve` embedded)",
              file=sys.stderr)
        return 2
    body = json.loads(body_file.read_text(encoding="utf-8"))
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        response = client.post("/v1/realign", json=body)
        if response.status_code != 202:
            print(f"error: POST /v1/realign -> {response.status_code}: {response.text}", file=sys.stderr)
            return 1
        job = response.json()
        print(f"submitted job {job['id']} ({job['state']})", flush=True)
        if not wait:
            print(json.dumps(job, indent=2))
            return 0
        started = time.monotonic()
        last_line = ""
        while job["state"] not in TERMINAL:
            time.sleep(poll_s)
            job = client.get(f"/v1/jobs/{job['id']}").json()
            line = progress_line(job)
            if line != last_line:
                print(f"[{time.monotonic() - started:6.1f}s] {line}", flush=True)
                last_line = line
        print(format_result(job, base_url=url, data_dir=data_dir), flush=True)
        return 0 if job["state"] == "succeeded" else 1


def _saved_local_key() -> str | None:
    """The embedded service's key from `<data dir>/local-api-key` (REALIGN_DATA_DIR or ~/.realign)."""
    path = Settings().data_dir / KEY_FILE
    return path.read_text().strip() if path.is_file() else None


def progress_line(job: dict[str, Any]) -> str:
    parts = [job["state"]]
    current = [p for p in job.get("progress", []) if p["stage"] == job.get("stage")]
    if current:
        p = current[0]
        total = f"/{p['total']}" if p.get("total") else ""
        parts.append(f"{p['stage']} {p['done']}{total}")
        if p.get("eta_s") is not None and not p.get("completed_at"):
            parts.append(f"eta {p['eta_s']:.0f}s")
    if job.get("category_counts"):
        parts.append("categories " + json.dumps(job["category_counts"], sort_keys=True))
    return "  ".join(parts)


def format_result(job: dict[str, Any], *, base_url: str | None = None, data_dir: Path | None = None) -> str:
    """The job's end: the before/after table for the synthetic world when present, where the adapter is (its
    folder on this machine when the service's `data_dir` is local; how to download it), then the JSON summary."""
    lines = [f"job {job['id']}: {job['state']}"]
    if job.get("error"):
        lines.append("error: " + json.dumps(job["error"]))
    eval_summary = (job.get("metrics") or {}).get("eval")
    if eval_summary and "tpa_by_category" in eval_summary:
        from trace_engine.pipeline import format_summary

        lines.append(format_summary(eval_summary))
    lines += adapter_lines(job, base_url=base_url, data_dir=data_dir)
    result = {k: job.get(k) for k in ("id", "state", "category_counts", "error")}
    result["metrics"] = {k: v for k, v in (job.get("metrics") or {}).items() if k in ("pairs", "train_steps", "eval")}
    lines.append(json.dumps(result, sort_keys=True))
    return "\n".join(lines)


def adapter_lines(job: dict[str, Any], *, base_url: str | None, data_dir: Path | None) -> list[str]:
    """Where the job's adapter is and how to use it: the absolute folder (embedded: this machine's data dir),
    the registered name for the gateway, and the download command (a tar.gz of the adapter directory)."""
    artifacts = job.get("artifacts") or {}
    lines = []
    relative = artifacts.get("adapter")
    if relative and data_dir is not None:
        folder = (Path(data_dir).expanduser() / "jobs" / job["id"] / relative).resolve()
        if folder.is_dir():
            lines.append(f"adapter directory: {folder}")
            lines.append(f'  load it with peft.PeftModel.from_pretrained(base_model, "{folder}") or '
                         f"vllm serve BASE --enable-lora --lora-modules NAME={folder}")
    if artifacts.get("adapter_id"):
        adapter_id, name = artifacts["adapter_id"], artifacts.get("adapter_name") or artifacts["adapter_id"]
        lines.append(f"registered adapter: {name} ({adapter_id}); use it as `model` on /v1/chat/completions")
        if base_url:
            root = base_url.rstrip("/")
            lines.append(f'download: curl -fsS -H "Authorization: Bearer $REALIGN_API_KEY" -o {name}.tar.gz '
                         f"{root}/v1/adapters/{adapter_id}/download   (then: tar xzf {name}.tar.gz)")
            lines.append(f"job artifacts (triaged pairs, scores, metrics, eval report): {root}/v1/jobs/{job['id']}/artifacts")
    return lines
