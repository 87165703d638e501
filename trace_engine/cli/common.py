"""Small helpers every subcommand shares: argument types and stderr messages."""

from __future__ import annotations

import argparse
import sys


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
