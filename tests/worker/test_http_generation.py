"""Evaluation generation through the serving backend's chat completions, against the fake vLLM server."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.fake_vllm import FakeVLLM
from worker.http_generation import HttpGenerationBackend, ServingGenerationError


def test_generates_with_an_adapter_it_loads_and_unloads_in_prompt_order(tmp_path: Path) -> None:
    with FakeVLLM(latency=0.05) as fake:
        prompts = [f"prompt number {i}" for i in range(12)]
        with HttpGenerationBackend(fake.base_url, adapter=("ada_1", str(tmp_path)), concurrency=6) as backend:
            answers = backend.generate(prompts, max_new_tokens=8)
            assert "ada_1" in fake.loaded
            assert backend.describe()["model"] == "ada_1"
        assert answers == [f"ada_1 answers: {p}" for p in prompts]
        assert fake.max_in_flight > 1  # requests ran concurrently (the server batches them)
        assert "ada_1" not in fake.loaded  # loaded here, so unloaded here
        assert all(body["temperature"] == 0.0 for body in fake.calls_to("/v1/chat/completions"))


def test_an_adapter_someone_else_loaded_stays_loaded(tmp_path: Path) -> None:
    with FakeVLLM() as fake:
        fake.loaded["ada_1"] = str(tmp_path)
        with HttpGenerationBackend(fake.base_url, adapter=("ada_1", str(tmp_path))) as backend:
            assert backend.generate(["hi"], 4) == ["ada_1 answers: hi"]
        assert "ada_1" in fake.loaded


def test_base_model_and_backend_errors(tmp_path: Path) -> None:
    with FakeVLLM() as fake:
        with HttpGenerationBackend(fake.base_url) as backend:
            assert backend.generate([[{"role": "user", "content": "a b"}]], 4) == ["fake-base answers: a b"]
            fake.fail_next("500")
            with pytest.raises(ServingGenerationError, match="HTTP 500"):
                backend.generate(["x"], 4)
        missing = HttpGenerationBackend(fake.base_url, adapter=("ada_2", str(tmp_path / "missing")))
        with missing, pytest.raises(ServingGenerationError, match="loading adapter ada_2"):
            missing.generate(["x"], 4)
