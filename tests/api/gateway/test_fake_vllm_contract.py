"""The fake vLLM answers as the real vLLM 0.32.0 did (`REAL_VLLM_FACTS`, re-checked against the real server in
tests/integration/test_vllm_real.py), so the fast gateway tests exercise the protocol production speaks."""

from __future__ import annotations

from pathlib import Path

from tests.support.fake_vllm import FakeVLLM
from tests.support.vllm_contract import REAL_VLLM_FACTS, protocol_facts


def test_the_fake_answers_as_the_real_vllm_does(tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    with FakeVLLM(base_model="smollm2") as fake:
        assert protocol_facts(fake.base_url, "smollm2", adapter) == REAL_VLLM_FACTS
