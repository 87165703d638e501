"""Small builders shared by the data tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def write_lines(tmp_path: Path) -> Callable[..., Path]:
    """Write raw text lines (or dicts, JSON-encoded) to a file under tmp_path and return its path."""

    def write(lines: list[Any], name: str = "pairs.jsonl") -> Path:
        path = tmp_path / name
        text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
        path.write_text(text, encoding="utf-8")
        return path

    return write

