"""bench/trl_compare.py refuses bad options with one line on stderr (no traceback, nothing trained)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "trl_compare.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args", [("--runs", "0"), ("--steps", "0"), ("--pairs", "-1"), ("--threads", "-2"),
                                  ("--loss", "kto"), ("--device", "tpu")])
def test_bad_options_are_one_line_errors(args: tuple[str, ...]) -> None:
    result = run(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "error:" in result.stderr.splitlines()[-1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_refused() -> None:
    result = run("--device", "cuda")
    assert result.returncode == 2 and "no CUDA device" in result.stderr.splitlines()[-1]
