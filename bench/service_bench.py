"""Service benchmark: `GET /v1/jobs/{id}` under N concurrent keep-alive clients, and POST -> first triage verdict.

    .venv/bin/python bench/service_bench.py [--db postgres|sqlite] [--uvicorn-workers 2] [--clients 50]
        [--seconds 10] [--first-verdict-jobs 5]

Part 1 starts `uvicorn --factory api.service:app_from_env` (uvloop + httptools when installed) as its own
process(es) on loopback and drives it with a minimal asyncio HTTP/1.1 client (one connection per client, no
client library overhead), all on this machine. Part 2 starts a real Celery worker (Redis broker with Postgres; the
filesystem broker with SQLite), submits synthetic jobs over HTTP and reads, from the job's own events, the time
from the job's creation to the first triage progress event with done >= 1 (both timestamps server-side).
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import httpx  # noqa: E402

from api.embedded import free_port, worker_command  # noqa: E402
from core.settings import Settings  # noqa: E402

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


def make_database(kind: str, data_dir: Path) -> tuple[str | None, Any]:
    if kind == "sqlite":
        return None, lambda: None
    import psycopg

    name = f"realign_bench_{secrets.token_hex(4)}"
    admin = psycopg.connect(PG_ADMIN, autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()

    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", drop


def env_for(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REALIGN_")}
    for name, value in settings.model_dump().items():
        if value is not None:
            env[f"REALIGN_{name.upper()}"] = str(value)
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


def start_api(settings: Settings, port: int, workers: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "api.service:app_from_env", "--host", "127.0.0.1",
           "--port", str(port), "--workers", str(workers), "--no-access-log", "--log-level", "warning"]
    try:
        import httptools  # noqa: F401
        import uvloop  # noqa: F401

        cmd += ["--loop", "uvloop", "--http", "httptools"]
    except ImportError:
        pass
    process = subprocess.Popen(cmd, env=env_for(settings), cwd=REPO_ROOT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.2)
    raise TimeoutError("API did not start")


def stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


# ---------------------------------------------------------------- part 1: GET throughput and latency


async def one_client(port: int, path: str, key: str, stop_at: float, warm_until: float,
                     latencies: list[float], errors: list[int], period: float | None, phase: float) -> None:
    """Closed loop (period None: next request when the last answer arrives) or paced (one request per `period`;
    latency counts from the SCHEDULED send time, so a slow server cannot hide its queueing)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
               "Connection: keep-alive\r\n\r\n").encode()
    next_send = time.perf_counter() + phase
    try:
        while time.perf_counter() < stop_at:
            if period is not None:
                delay = next_send - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                started, next_send = next_send, next_send + period
            else:
                started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            if started >= warm_until:
                latencies.append(time.perf_counter() - started)
                if status != 200:
                    errors.append(status)
    finally:
        writer.close()


async def load(port: int, path: str, key: str, clients: int, seconds: float, warmup: float,
               rate: float | None = None) -> dict[str, Any]:
    """`rate` None: as fast as the server answers; else that many requests per second across all clients."""
    latencies: list[float] = []
    errors: list[int] = []
    begin = time.perf_counter()
    warm_until, stop_at = begin + warmup, begin + warmup + seconds
    period = clients / rate if rate else None
    await asyncio.gather(*(one_client(port, path, key, stop_at, warm_until, latencies, errors, period,
                                      (period or 0) * i / clients) for i in range(clients)))
    measured = time.perf_counter() - warm_until
    latencies.sort()

    def pct(q: float) -> float:
        return round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 2)

    return {"mode": f"paced {rate:g}/s" if rate else "closed loop", "requests": len(latencies), "errors": len(errors), "req_per_s": round(len(latencies) / measured, 1),
            "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99), "max_ms": round(1000 * latencies[-1], 2)}


# ---------------------------------------------------------------- part 2: POST -> first verdict


def first_verdict_seconds(client: httpx.Client, job_id: str, timeout: float = 120) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        events = client.get(f"/v1/jobs/{job_id}/events", params={"limit": 500}).json()["data"]
        hit = next((e for e in events if e["type"] == "progress" and e["stage"] == "triage"
                    and e["data"].get("done", 0) >= 1), None)
        if hit is not None:
            created = datetime.fromisoformat(job["created_at"])
            return (datetime.fromisoformat(hit["created_at"]) - created).total_seconds()
        if job["state"] in ("failed", "cancelled"):
            raise RuntimeError(f"job {job_id} {job['state']}: {job.get('error')}")
        time.sleep(0.05)
    raise TimeoutError(job_id)


def verdict_body() -> dict[str, Any]:
    body = json.loads((REPO_ROOT / "examples" / "synthetic_realign.json").read_text())
    body["dataset"]["n"] = 64
    body["eval"] = {"suites": []}
    return body


def measure_first_verdicts(port: int, key: str, jobs: int) -> dict[str, Any]:
    seconds = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"},
                      timeout=30) as client:
        for _ in range(jobs):
            job = client.post("/v1/realign", json=verdict_body()).json()
            seconds.append(round(first_verdict_seconds(client, job["id"]), 3))
            client.post(f"/v1/jobs/{job['id']}/cancel")  # free the worker for the next job
            time.sleep(1.0)
    return {"seconds": seconds, "first_s": seconds[0], "median_s": statistics.median(seconds),
            "max_s": max(seconds)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--uvicorn-workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rate", type=float, default=300.0, help="offered load of the paced run (req/s)")
    parser.add_argument("--first-verdict-jobs", type=int, default=5)
    args = parser.parse_args()

    from core.db.access.jobs import create_job
    from core.db.access.tenants import authenticate, create_api_key
    from core.db.engine import make_engine, make_session_factory, session_scope, upgrade_head
    from core.jobspec import RealignRequest

    data_dir = Path(tempfile.mkdtemp(prefix="realign-bench-"))
    database_url, drop = make_database(args.db, data_dir)
    broker = "redis://127.0.0.1:6379/12" if args.db == "postgres" else None
    settings = Settings(data_dir=data_dir, database_url=database_url, broker_url=broker,
                        queue_prefix=f"bench{secrets.token_hex(3)}.", progress_interval_s=0.2)
    engine = make_engine(settings.sqlalchemy_url)
    upgrade_head(engine)
    with session_scope(make_session_factory(engine)) as session:
        key = create_api_key(session, tenant_name="bench")
        tenant = authenticate(session, key=key)
        assert tenant is not None
        request = RealignRequest.model_validate(verdict_body()).model_dump(mode="json")
        job, _ = create_job(session, tenant_id=tenant.id, request=request, body_hash="bench")
        job_id = job.id
    engine.dispose()

    port = free_port("127.0.0.1")
    results: dict[str, Any] = {"db": args.db, "broker": "redis" if broker else "filesystem",
                               "uvicorn_workers": args.uvicorn_workers, "clients": args.clients,
                               "cpus": os.cpu_count(), "load_avg_start": os.getloadavg()[0],
                               "python": platform.python_version()}
    api = start_api(settings, port, args.uvicorn_workers)
    worker = None
    try:
        path = f"/v1/jobs/{job_id}"
        results["get_job"] = asyncio.run(load(port, path, key, args.clients, args.seconds, args.warmup))
        print("GET /v1/jobs/{id}:", results["get_job"], flush=True)
        results["get_job_paced"] = asyncio.run(load(port, path, key, args.clients, args.seconds, args.warmup,
                                                    rate=args.rate))
        print("GET /v1/jobs/{id}:", results["get_job_paced"], flush=True)
        if args.first_verdict_jobs:
            from core.celery_app import queue_list

            log = open(data_dir / "worker.log", "ab")  # noqa: SIM115
            worker = subprocess.Popen(worker_command(4, queue_list(settings), name="bench", loglevel="INFO"),
                                      env=env_for(settings), cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
            deadline = time.monotonic() + 60
            while " ready." not in (data_dir / "worker.log").read_text(errors="replace"):
                assert time.monotonic() < deadline, "worker did not start"
                time.sleep(0.1)
            results["first_verdict"] = measure_first_verdicts(port, key, args.first_verdict_jobs)
            print("POST -> first triage verdict:", results["first_verdict"], flush=True)
    finally:
        if worker is not None:
            stop(worker)
        stop(api)
        drop()
    results["load_avg_end"] = os.getloadavg()[0]
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
