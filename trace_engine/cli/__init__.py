"""`realign`: one entry point, a subcommand per stage. Each stage module registers its own subparser.

Errors a user can cause print one line on stderr and a non-zero exit, never a traceback: each command reports its
own expected errors; `main` turns anything else into one line too (`REALIGN_DEBUG=1` shows the traceback)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from importlib.metadata import PackageNotFoundError, entry_points, version

# Stage modules, each exposing `register(subparsers)`; they set `func` on their parser.
_COMMAND_MODULES = (
    "trace_engine.cli.data_cmds",
    "trace_engine.cli.triage_cmd",
    "trace_engine.cli.eval_cmd",
    "trace_engine.cli.demo_cmd",
    "trace_engine.cli.engine_cmds",
    "trace_engine.cli.models_cmd",
)
EXIT_UNEXPECTED = 1
EXIT_INTERRUPTED = 130
DEBUG_ENV = "REALIGN_DEBUG"


def package_version() -> str:
    """The installed distribution's version (a source checkout that is not installed says so)."""
    try:
        return version("realign")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="realign",
        description="Re-align an LLM to a changed policy from existing preference pairs (TRACE).",
    )
    parser.add_argument("--version", action="version", version=f"realign {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    # Commands of other installed parts (the service's `keys`, `serve`, ...) register through the
    # `realign.commands` entry-point group, so the engine never imports the service.
    for ep in sorted(entry_points(group="realign.commands"), key=lambda e: e.name):
        ep.load().register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"realign {args.command}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except Exception as exc:  # the last net: one line, not a traceback, for errors no command anticipated
        if os.environ.get(DEBUG_ENV):
            raise
        print(f"realign {args.command}: error: {one_line(exc)} (set {DEBUG_ENV}=1 for the traceback)",
              file=sys.stderr, flush=True)
        return EXIT_UNEXPECTED


def one_line(exc: BaseException) -> str:
    """`Type: message` on one line (multi-line messages joined), at most 500 characters."""
    text = " ".join(str(exc).split()) or "(no message)"
    text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= 500 else text[:497] + "..."


if __name__ == "__main__":
    sys.exit(main())
