"""Small helpers every subcommand shares: argument types and stderr messages."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trace_engine.policy import Policy


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def positive_int(text: str) -> int:
    value = non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def err(message: str) -> None:
    """A line on stderr, flushed at once (progress and errors never interleave with stdout tables)."""
    print(message, file=sys.stderr, flush=True)


def file_problem(option: str, path: str | Path, exc: OSError | UnicodeDecodeError) -> str:
    """One line naming the option and the file, instead of a bare `[Errno 2] No such file or directory`."""
    if isinstance(exc, FileNotFoundError):
        return f"{option} {path}: no such file"
    if isinstance(exc, IsADirectoryError):
        return f"{option} {path} is a directory, not a file"
    if isinstance(exc, PermissionError):
        return f"{option} {path}: permission denied"
    if isinstance(exc, UnicodeDecodeError):
        return f"{option} {path} is not UTF-8 text"
    return f"{option} {path}: {exc.strerror or exc}"


def load_policy(path: str | Path, option: str = "--policy") -> Policy:
    """The policy file an option names; ValueError with a message that names the option otherwise."""
    from trace_engine.policy import Policy

    try:
        return Policy.from_file(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(file_problem(option, path, exc)) from None
    except ValueError as exc:
        raise ValueError(f"{option}: {exc}") from None


def load_json_file(path: str | Path, option: str) -> Any:
    """A JSON file an option (or positional argument) names; ValueError naming it when missing or not JSON."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(file_problem(option, path, exc)) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{option} {path} is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
