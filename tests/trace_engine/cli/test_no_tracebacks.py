"""Issue 13: every `realign` subcommand, given bad input, exits non-zero with a short, clear error on stderr and
never a traceback. Each runs as a real subprocess (the installed entry point's code path, `python -m
trace_engine.cli`). A new subcommand without a case here fails `test_every_subcommand_has_a_bad_input_case`."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from trace_engine.cli import build_parser

REPO_ROOT = Path(__file__).resolve().parents[3]
OK_ROW = '{"prompt": "p", "chosen": "a", "rejected": "b"}\n'

# command -> [(argv after the command, text the one-line error must contain)]
CASES: dict[str, list[tuple[list[str], str]]] = {
    "validate": [(["--pairs", "missing.jsonl"], "missing.jsonl: no such file"),
                 (["--pairs", "junk.jsonl"], "no usable preference pairs in junk.jsonl")],
    "split": [(["--triaged", "missing.jsonl", "--out", "o", "--train-size", "1", "--train2-size", "1"],
               "no such file")],
    "triage": [(["--pairs", "ok.jsonl", "--policy", "missing.md", "--judge", "rules:r.json", "--out", "o"],
                "--policy missing.md: no such file")],
    "eval": [(["--model", "missing-model", "--suites", "tpa", "--out", "o"], "error:"),
             (["--model", "m", "--suites", "tpa", "--policy", "missing.md", "--out", "o"], "--policy missing.md")],
    "eval-compare": [(["before.json", "after.json"], "BEFORE before.json: no such file"),
                     (["junk.jsonl", "junk.jsonl"], "BEFORE junk.jsonl is not JSON")],
    "demo": [(["--n-train", "5", "--out", "o"], "n_train must be >= 10")],
    "score": [(["--triaged", "missing.jsonl", "--model", "m", "--variant", "trace", "--out", "o"], "does not exist")],
    "train": [(["--triaged", "missing.jsonl", "--model", "m", "--variant", "trace", "--out", "o"], "does not exist")],
    "merge": [(["--adapter", "missing", "--out", "o"], "not an adapter directory")],
    "models import-gguf": [(["--gguf", "missing.gguf"], "missing.gguf")],
    "keys create": [(["--tenant", "x", "--database-url", "bogus://x"], "bad database URL")],
    "keys list": [(["--database-url", "postgresql://nobody@127.0.0.1:1/x"], "cannot use the database")],
    "keys revoke": [(["key_nope"], "no API key 'key_nope'")],
    "serve": [(["--demo", "--port", "{busy_port}"], "already in use"),
              (["--port", "99999"], "port must be in 0-65535"),
              (["--demo", "--port", "0", "--example", "missing.json"], "--example missing.json: no such file")],
    "submit": [(["--file", "missing.json", "--api-key", "k"], "--file missing.json: no such file"),
               (["--file", "junk.jsonl", "--api-key", "k"], "--file junk.jsonl is not JSON"),
               (["--file", "body.json", "--api-key", "k", "--url", "http://127.0.0.1:{dead_port}"],
                "cannot reach the service at http://127.0.0.1:"),
               (["--file", "body.json", "--api-key", "k", "--url", "ftp://x"], "not an http(s) URL"),
               (["--api-key", "k"], "the following arguments are required: --file")],
}


def subcommands(parser: argparse.ArgumentParser, prefix: str = "") -> Iterator[str]:
    """Every leaf command path ("validate", "keys create", ...) of the parser."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                path = f"{prefix} {name}".strip()
                nested = list(subcommands(sub, path))
                yield from nested or [path]


def test_every_subcommand_has_a_bad_input_case() -> None:
    assert set(subcommands(build_parser())) == set(CASES)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "ok.jsonl").write_text(OK_ROW)
    (tmp_path / "junk.jsonl").write_text("this is not json\n{\"prompt\": \"p\", \"chosen\": \"a\", \"rej\n")
    (tmp_path / "body.json").write_text('{"policy": {"text": "x"}}')
    return tmp_path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_bad_input_gives_one_clear_line_and_no_traceback(workdir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REALIGN_")}
    env.update(REALIGN_DATA_DIR=str(workdir / "state"), PYTHONPATH=str(REPO_ROOT))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        ports = {"busy_port": str(busy.getsockname()[1]), "dead_port": str(free_port())}
        runs = [(command, [a.format(**ports) for a in argv], expected)
                for command, cases in CASES.items() for argv, expected in cases]

        def run(case: tuple[str, list[str], str]) -> tuple[str, list[str], str, subprocess.CompletedProcess[str]]:
            command, argv, expected = case
            result = subprocess.run([sys.executable, "-m", "trace_engine.cli", *command.split(), *argv], cwd=workdir,
                                    env=env, capture_output=True, text=True, timeout=300)
            return command, argv, expected, result

        with ThreadPoolExecutor(max_workers=3) as pool:
            results = list(pool.map(run, runs))
    failures = []
    for command, argv, expected, result in results:
        err_lines = [line for line in result.stderr.splitlines() if line.strip()]
        problems = []
        if result.returncode == 0:
            problems.append("exit code 0")
        if "Traceback" in result.stderr or "Traceback" in result.stdout:
            problems.append("a traceback")
        if expected not in result.stderr:
            problems.append(f"no {expected!r} on stderr")
        error_lines = [line for line in err_lines if "error" in line.lower()]
        if len(error_lines) != 1:
            problems.append(f"{len(error_lines)} error lines")
        if command == "serve" and "rk_" in result.stdout:
            problems.append("printed an API key before failing")
        if problems:
            failures.append(f"realign {command} {' '.join(argv)}: {', '.join(problems)}\n{result.stderr[-2000:]}")
    assert not failures, "\n\n".join(failures)
    assert not (workdir / "state" / "jobs").exists()  # nothing was submitted anywhere
