"""The bench scripts are not a package: fixtures import them by file, with bench/ on the path only while importing."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def import_bench(name: str) -> ModuleType:
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def quality_real() -> ModuleType:
    return import_bench("quality_real")


@pytest.fixture(scope="module")
def probe() -> ModuleType:
    return import_bench("quality_real_noise_probe")


@pytest.fixture(scope="module")
def quality_noise() -> ModuleType:
    return import_bench("quality_noise")


@pytest.fixture(scope="module")
def intervention() -> ModuleType:
    return import_bench("quality_real_noise_intervention")
