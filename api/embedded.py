"""`realign serve`: the API under uvicorn plus (embedded) a real Celery worker in a child process, and `submit`,
a small HTTP client that follows a job to its end.

Embedded = no database and no broker configured: SQLite and kombu's `filesystem://` broker, both under the data
dir, so one command runs the whole service on a laptop. The local API key is created once and kept in
`<data_dir>/local-api-key` (mode 0600) so restarts print the same key.
"""

from __future__ import annotations

import contextlib
import errno
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

from core.jobspec import SYNTHETIC_BASE_NAMES
from core.settings import Settings

LOCAL_TENANT = "local"
KEY_FILE = "local-api-key"
TERMINAL = ("succeeded", "failed", "cancelled")
HEARTBEAT_S = 20.0  # `submit --wait` prints a line at least this often, even when nothing changed


# ---------------------------------------------------------------- local key and worker


def local_api_key(settings: Settings) -> str:
    """The embedded service's key: reused while it still authenticates, else a new one for tenant `local`."""
    from core.db.access.tenants import authenticate, create_api_key
    from core.db.engine import make_engine, make_session_factory, migrated_session

    path = settings.data_dir / KEY_FILE
    if path.is_file():
        key = path.read_text().strip()
        engine = make_engine(settings.sqlalchemy_url)
        try:
            with make_session_factory(engine)() as session:
                if authenticate(session, key=key) is not None:
                    return key
        except Exception:  # no schema yet: fall through and create one
            pass
        finally:
            engine.dispose()
    with migrated_session(settings.sqlalchemy_url) as session:
        key = create_api_key(session, tenant_name=LOCAL_TENANT)
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
    from core.celery_app import queue_list

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


# ---------------------------------------------------------------- serve


class ServeError(Exception):
    """A problem `realign serve` reports as one line before it starts anything (exit code 2)."""


def synthetic_base_path(settings: Settings) -> str:
    """The synthetic world's base model folder, trained on first use in a child process (this process never imports
    torch). The child's progress lines (stderr) reach the terminal: a first run trains for minutes."""
    code = "from trace_engine.synthetic.base_model import ensure_base_model; print(ensure_base_model().path)"
    out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=worker_env(settings))
    if out.returncode != 0:
        raise ServeError(f"could not build the synthetic base model (exit code {out.returncode}; see the lines above)")
    return out.stdout.strip().splitlines()[-1]


def bind_socket(host: str, port: int) -> socket.socket:
    """The listening address, bound now, before a key is printed or anything starts: a busy port fails at once
    with what to do, and the server (and --demo's client) can only ever talk to this process. Port 0: a free one."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise ServeError(f"--host {host!r} does not resolve: {exc.strerror}") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a restart after TIME_WAIT works
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ServeError(f"port {port} on {host} is already in use (another `realign serve`, or another "
                             "program): stop it, or pass --port N (--port 0 picks a free port)") from None
        if exc.errno == errno.EACCES:
            raise ServeError(f"not allowed to listen on {host}:{port} (ports below 1024 need privileges): "
                             "pass --port N") from None
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(False)
    return sock


def serving_model_path(settings: Settings) -> str:
    """The local backend's model: the synthetic world's cached base (built in a child process: this process never
    imports torch), a folder under the model root, or a Hub id as given."""
    from core.paths import PathEscapesRoot, resolve_under_root

    name = settings.serving_base_model
    if name in SYNTHETIC_BASE_NAMES:
        return synthetic_base_path(settings)
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
    """Exit code 0 when the server stopped normally (or the demo job succeeded); 2 when it could not start."""
    try:
        demo_body = read_body(Path(demo_file), option="--example") if demo_file is not None else None
        sock = bind_socket(host, port)
    except (ServeError, SubmitError) as exc:
        print(f"realign serve: error: {exc}", file=sys.stderr, flush=True)
        return 2
    # uvicorn re-raises SIGTERM after its shutdown; make that an exception so `finally` stops the children.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        serving_builds_it = (start_serving and not settings.serving_url
                             and settings.serving_base_model in SYNTHETIC_BASE_NAMES)
        if demo_body is not None and _base_name(demo_body) in SYNTHETIC_BASE_NAMES and not serving_builds_it:
            synthetic_base_path(settings)  # here, with its progress, rather than silently in the worker
        with local_serving(settings, start_serving) as served:
            return _serve(served, sock, start_worker=start_worker, worker_concurrency=worker_concurrency,
                          demo_body=demo_body)
    except ServeError as exc:
        print(f"realign serve: error: {exc}", file=sys.stderr, flush=True)
        return 2
    finally:
        sock.close()


def _base_name(body: dict[str, Any]) -> str | None:
    base = body.get("base_model")
    return base.get("name_or_path") if isinstance(base, dict) else None


def _serve(settings: Settings, sock: socket.socket, *, start_worker: bool, worker_concurrency: int,
           demo_body: dict[str, Any] | None) -> int:
    import uvicorn

    from api.service import build_app

    embedded = settings.database_url is None and settings.broker_url is None
    host, port = sock.getsockname()[:2]
    app = build_app(settings)  # migrates the database first
    key = local_api_key(settings) if embedded else None
    worker = _start_worker(settings, worker_concurrency) if start_worker else None
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    url = f"http://{_url_host(host)}:{port}"
    mode = "embedded (SQLite + filesystem broker)" if embedded else "connected"
    print(f"realign service on {url}  [{mode}; data dir {settings.data_dir}; dashboard at {url}/ui; docs at {url}/docs]",
          flush=True)
    if key:
        print("local API key (tenant 'local'):", flush=True)
        print(key, flush=True)
    try:
        if demo_body is None:
            server.run(sockets=[sock])
            return 0
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not server.started:
            print(f"realign serve: error: the server on {url} did not start", file=sys.stderr, flush=True)
            return 1
        if not key:
            key = os.environ.get("REALIGN_API_KEY", "")
        code = submit_body(url, key, demo_body, wait=True, data_dir=settings.data_dir)
        if code == 0:
            print(next_steps(url, settings.data_dir if embedded else None), flush=True)
        return code
    finally:
        server.should_exit = True
        if worker is not None:
            stop_worker(worker)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def realign_command() -> str:
    """How to run `realign` from here: the name when it is on PATH, else this environment's script."""
    import shutil

    script = Path(sys.executable).parent / "realign"
    if shutil.which("realign") == str(script) or not script.exists():
        return "realign"
    with contextlib.suppress(ValueError):
        return str(script.relative_to(Path.cwd()))
    return str(script)


def next_steps(url: str, data_dir: Path | None) -> str:
    """What to do after the demo (the demo's server stops when it returns)."""
    cli = realign_command()
    port = url.rsplit(":", 1)[-1]
    data = f" --data-dir {data_dir}" if data_dir is not None else ""
    key = f"$(cat {data_dir / KEY_FILE})" if data_dir is not None else "$REALIGN_API_KEY"
    return "\n".join([
        "",
        "next steps (this demo's server stops now):",
        f"  1. keep the service running:   {cli} serve{data} --port {port}",
        f"  2. open the dashboard:         {url}/ui   (log in with the API key it prints; API docs at {url}/docs)",
        f"  3. use the API from a shell:   KEY={key}",
        f'     curl -s {url}/v1/jobs -H "Authorization: Bearer $KEY"',
        f'     curl -s -X POST {url}/v1/realign -H "Authorization: Bearer $KEY" -H "Content-Type: application/json" '
        f"-d @examples/synthetic_realign.json",
        f"  4. or submit a request body:   {cli} submit --url {url} --file examples/synthetic_realign.json --wait",
        "  README.md, \"The service\": every endpoint; your own data, model and judge.",
    ])


def _exit_on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def _start_worker(settings: Settings, concurrency: int) -> subprocess.Popen[bytes]:
    process = start_worker(settings, concurrency)
    print(f"started a Celery worker (pid {process.pid}; log {settings.data_dir / 'worker.log'})", flush=True)
    return process


# ---------------------------------------------------------------- submit (HTTP client)


class SubmitError(Exception):
    """A problem `realign submit` reports as one line (bad --file, no key, unreachable service)."""


def read_body(path: Path, *, option: str = "--file") -> dict[str, Any]:
    """The request body in `path`: a JSON object, or a SubmitError naming the option and what is wrong."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SubmitError(f"{option} {path}: no such file") from None
    except IsADirectoryError:
        raise SubmitError(f"{option} {path} is a directory, not a JSON file") from None
    except UnicodeDecodeError:
        raise SubmitError(f"{option} {path} is not UTF-8 text (expected a JSON request body)") from None
    except OSError as exc:
        raise SubmitError(f"{option} {path}: cannot read it ({exc.strerror or exc})") from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SubmitError(f"{option} {path} is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(body, dict):
        raise SubmitError(f"{option} {path} must hold a JSON object (a request body such as "
                          f"examples/synthetic_realign.json), not {type(body).__name__}")
    return body


def submit(url: str, api_key: str | None, body_file: Path, *, wait: bool, poll_s: float = 1.0,
           data_dir: Path | None = None) -> int:
    """`realign submit`: read the body file, then `submit_body`. Exit code 2 for a bad file or no key."""
    try:
        body = read_body(body_file)
    except SubmitError as exc:
        print(f"realign submit: error: {exc}", file=sys.stderr, flush=True)
        return 2
    return submit_body(url, api_key, body, wait=wait, poll_s=poll_s, data_dir=data_dir)


def submit_body(url: str, api_key: str | None, body: dict[str, Any], *, wait: bool, poll_s: float = 1.0,
                data_dir: Path | None = None) -> int:
    """POST the body; with `wait`, print progress lines until the job ends, then the result. Exit code 0 only
    for a succeeded job (or, without `wait`, an accepted one); 1 when the service refuses it, cannot be reached or
    the job fails; 2 without a key. `data_dir`: the service's data dir when it runs on this machine (embedded), so
    the result names the adapter's real folder. Every error is one line on stderr."""
    key = api_key or os.environ.get("REALIGN_API_KEY") or _saved_local_key()
    if not key:
        print("realign submit: error: no API key (pass --api-key, set REALIGN_API_KEY, or start `realign serve` "
              "embedded)", file=sys.stderr, flush=True)
        return 2
    try:
        return _submit(url, key, body, wait=wait, poll_s=poll_s, data_dir=data_dir)
    except SubmitError as exc:
        print(f"realign submit: error: {exc}", file=sys.stderr, flush=True)
        return 1


def _submit(url: str, key: str, body: dict[str, Any], *, wait: bool, poll_s: float, data_dir: Path | None) -> int:
    with _client(url, key) as client:
        response = _call(client, "POST", "/v1/realign", json=body)
        if response.status_code != 202:
            raise SubmitError(f"POST /v1/realign -> {response.status_code}: {problem_text(response)}")
        job = response.json()
        print(f"submitted job {job['id']} ({job['state']})", flush=True)
        if not wait:
            print(json.dumps(job, indent=2))
            return 0
        started = last_print = time.monotonic()
        last_line = ""
        while job["state"] not in TERMINAL:
            time.sleep(poll_s)
            response = _call(client, "GET", f"/v1/jobs/{job['id']}")
            if response.status_code != 200:
                raise SubmitError(f"GET /v1/jobs/{job['id']} -> {response.status_code}: {problem_text(response)}")
            job = response.json()
            line = progress_line(job)
            now = time.monotonic()
            if line != last_line or now - last_print >= HEARTBEAT_S:
                print(f"[{now - started:6.1f}s] {line}", flush=True)
                last_line, last_print = line, now
        print(format_result(job, base_url=url, data_dir=data_dir), flush=True)
        return 0 if job["state"] == "succeeded" else 1


def _client(url: str, key: str) -> httpx.Client:
    try:
        return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    except (httpx.InvalidURL, ValueError) as exc:
        raise SubmitError(f"--url {url!r} is not a valid URL ({exc})") from None


def _call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One request; transport failures become a SubmitError that says which service could not be reached."""
    url = str(client.base_url).rstrip("/")
    try:
        return client.request(method, path, **kwargs)
    except httpx.ConnectError:
        raise SubmitError(f"cannot reach the service at {url} (is `realign serve` running there? pass --url)") \
            from None
    except httpx.TimeoutException:
        raise SubmitError(f"the service at {url} did not answer {method} {path} in time") from None
    except (httpx.UnsupportedProtocol, httpx.InvalidURL):
        raise SubmitError(f"--url {url!r} is not an http(s) URL of the service") from None
    except httpx.HTTPError as exc:
        raise SubmitError(f"{method} {url}{path} failed: {type(exc).__name__}: {exc}") from None


def problem_text(response: httpx.Response) -> str:
    """A refusal on one line: the problem's detail and its field errors, else the start of the body."""
    try:
        problem = response.json()
    except ValueError:
        return " ".join(response.text.split())[:300] or "(empty body)"
    if not isinstance(problem, dict):
        return json.dumps(problem)[:300]
    text = str(problem.get("detail") or problem.get("title") or json.dumps(problem)[:300])
    fields = [f"{e.get('field')}: {e.get('message')}" for e in problem.get("errors") or [] if isinstance(e, dict)]
    if fields and not any(f.split(": ", 1)[-1] in text for f in fields[:1]):
        text += " (" + "; ".join(fields[:5]) + ")"
    if response.status_code == 401:
        text += " (API keys belong to one data dir: `realign keys create --data-dir DIR` for the server's)"
    return " ".join(text.split())


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
        from trace_engine.synthetic.evaluation import format_summary

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
