"""Throw-away PostgreSQL and Redis servers on free loopback ports, owned by one test session, that a test may stop,
kill and start again (the machine's shared servers on 5432/6379 are never touched).

    with PostgresServer.create(tmp) as pg:      # initdb + postgres (as the `postgres` user when run as root)
        pg.url                                  # postgresql+psycopg://postgres@127.0.0.1:<port>/postgres
        pg.restart()                            # fast shutdown, then start again on the same port and data
    with RedisServer.create(tmp) as redis:      # redis-server --appendonly yes, as compose runs it
        redis.url; redis.restart()

`unavailable_reason()` says why one cannot run here (no binaries, no non-root user); callers skip with it.
Each server is one process (the postmaster / redis-server itself, not a wrapper), so signals reach it directly.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_for(check: Callable[[], bool], timeout: float, what: str, poll: float = 0.05) -> float:
    """Poll `check` until true; returns the seconds it took (TimeoutError after `timeout`)."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what} not reached after {timeout:.0f}s")
        time.sleep(poll)
    return time.monotonic() - started


@dataclass
class ServerProcess:
    """One server process with its log; `stop` (graceful signal), `kill` (SIGKILL) and `start` again."""

    command: list[str]
    port: int
    log_path: Path
    graceful: signal.Signals = signal.SIGTERM
    popen_options: dict[str, Any] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def ready(self) -> bool:
        return port_open(self.port)

    def start(self, timeout: float = 30.0) -> ServerProcess:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True, **self.popen_options)
        wait_for(lambda: self.ready() or self.process.poll() is not None, timeout, f"{self.command[0]} ready")
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.command[0]} exited (rc={self.process.returncode}):\n{self.log()[-2000:]}")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        self._signal(self.graceful, timeout)

    def kill(self) -> None:
        self._signal(signal.SIGKILL, 10.0)

    def restart(self, down_s: float = 0.0) -> float:
        """Stop, stay down `down_s`, start again; returns the seconds it was unreachable."""
        stopped = time.monotonic()
        self.stop()
        time.sleep(down_s)
        self.start()
        return time.monotonic() - stopped

    def _signal(self, sig: signal.Signals, timeout: float) -> None:
        if not self.running():
            return
        assert self.process is not None
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def postgres_bin_dir() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(candidates[-1]).parent if candidates else None


def _unprivileged_user() -> dict[str, Any]:
    """Popen options that drop root to the `postgres` user (initdb and postgres refuse to run as root)."""
    if os.geteuid() != 0:
        return {}
    import pwd

    entry = pwd.getpwnam("postgres")
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


@dataclass
class PostgresServer(ServerProcess):
    graceful: signal.Signals = signal.SIGINT  # "fast" shutdown: roll back open transactions, close connections
    data_dir: Path = Path()

    @staticmethod
    def unavailable_reason() -> str | None:
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            return "no PostgreSQL server binaries (initdb) on PATH or under /usr/lib/postgresql/*/bin"
        if os.geteuid() == 0:
            try:
                import pwd

                pwd.getpwnam("postgres")
            except KeyError:
                return "running as root and there is no `postgres` user to run initdb/postgres as"
        return None

    @classmethod
    def create(cls, parent: Path | None = None, *, settings: dict[str, str] | None = None) -> PostgresServer:
        """initdb a fresh cluster (trust auth, durability off: test data) and start it on a free port."""
        bin_dir = postgres_bin_dir()
        assert bin_dir is not None, cls.unavailable_reason()
        root = Path(tempfile.mkdtemp(prefix="realign-pg-", dir=parent))  # pytest's tmp dirs are root-only (0700)
        options = _unprivileged_user()
        if options:
            os.chown(root, options["user"], options["group"])
        data = root / "data"
        subprocess.run([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                        "--no-sync"], check=True, capture_output=True, **options)
        port = free_port()
        conf = {"listen_addresses": "127.0.0.1", "port": str(port), "unix_socket_directories": str(root),
                "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off", "max_connections": "100",
                **(settings or {})}
        command = [str(bin_dir / "postgres"), "-D", str(data)] + [a for k, v in conf.items() for a in ("-c", f"{k}={v}")]
        server = cls(command=command, port=port, log_path=root / "postgres.log", popen_options=options,
                     data_dir=data)
        return server.start()  # type: ignore[return-value]

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def ready(self) -> bool:
        import psycopg

        try:
            psycopg.connect(self.url.replace("+psycopg", ""), connect_timeout=1).close()
        except psycopg.OperationalError:
            return False
        return True

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        shutil.rmtree(self.data_dir.parent, ignore_errors=True)


@dataclass
class RedisServer(ServerProcess):
    @staticmethod
    def unavailable_reason() -> str | None:
        return None if shutil.which("redis-server") else "redis-server is not on PATH"

    @classmethod
    def create(cls, root: Path) -> RedisServer:
        """redis-server as compose runs it (`--appendonly yes`: queued messages survive a restart)."""
        root.mkdir(parents=True, exist_ok=True)
        port = free_port()
        command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(root),
                   "--appendonly", "yes", "--save", "", "--daemonize", "no", "--protected-mode", "yes"]
        server = cls(command=command, port=port, log_path=root / "redis.log")
        return server.start()  # type: ignore[return-value]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def ready(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=0.5).ping())
        except redis.RedisError:
            return False
