"""A tiny model with LoRA adapters, served by the local backend in its own process, shared by this directory."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.trace_engine.serving.tiny_adapters import TinyWorld, tiny_world
from trace_engine.serving.launcher import spawn_local_server


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> TinyWorld:
    return tiny_world(tmp_path_factory.mktemp("gateway-world"))


@pytest.fixture(scope="session")
def local_backend_url(world: TinyWorld) -> Iterator[str]:
    """`python -m trace_engine.serving.local_server` as embedded mode runs it (the API process imports no torch)."""
    args = ["--served-model-name", "tiny-base", "--max-loras", "4", "--num-threads", "1"]
    with spawn_local_server(str(world.base), extra_args=args, startup_timeout_s=90) as server:
        yield server.base_url
