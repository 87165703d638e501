"""`realign`: one entry point, a subcommand per stage. Each stage module registers its own subparser."""

from __future__ import annotations

import argparse
import importlib
import sys
from importlib.metadata import entry_points

# Stage modules, each exposing `register(subparsers)`; they set `func` on their parser.
_COMMAND_MODULES = (
    "trace_engine.cli.data_cmds",
    "trace_engine.cli.triage_cmd",
    "trace_engine.cli.eval_cmd",
    "trace_engine.cli.demo_cmd",
    "trace_engine.cli.engine_cmds",
    "trace_engine.cli.models_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="realign",
        description="Re-align an LLM to a changed policy from existing preference pairs (TRACE).",
    )
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
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
