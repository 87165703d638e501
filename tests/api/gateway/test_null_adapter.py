"""The adapters the gateway writes by hand (core/null_adapter.py): valid peft folders that plain
`peft.PeftModel.from_pretrained` loads; the null adapter leaves logits exactly equal, the self-test adapter moves
them; names follow the weights; unsupported architectures say isolation is unavailable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.null_adapter import (
    IsolationUnavailable,
    is_all_zero_safetensors,
    read_base_config,
    write_null_adapter,
    write_selftest_adapter,
)
from tests.trace_engine.serving.tiny_adapters import TinyWorld

SMOLLM2_LIKE = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
                "num_key_value_heads": 2}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> TinyWorld:
    from tests.trace_engine.serving.tiny_adapters import tiny_world

    return tiny_world(tmp_path_factory.mktemp("null-world"))


def logits(model: object, prompt_ids: object) -> object:
    import torch

    with torch.no_grad():
        return model(input_ids=prompt_ids).logits  # type: ignore[operator]


def test_the_null_adapter_loads_in_plain_peft_and_leaves_logits_exactly_equal(world: TinyWorld,
                                                                                tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    written = write_null_adapter(read_base_config(world.base), tmp_path, base_model=str(world.base))
    assert written.name.startswith("realign-null-") and written.path == tmp_path / written.name
    tensors = load_file(written.path / "adapter_model.safetensors")  # the hand-written format reads back
    assert tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape == (1, 64)
    assert tensors["base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"].shape == (64, 1)
    assert all(t.dtype == torch.float32 and not t.any() for t in tensors.values()) and len(tensors) == 4

    base = AutoModelForCausalLM.from_pretrained(world.base, dtype=torch.float32).eval()
    ids = torch.tensor([[1, 5, 9, 17, 33, 2]])
    expected = logits(base, ids)
    tuned = PeftModel.from_pretrained(base, written.path).eval()
    assert tuned.peft_config["default"].target_modules == {"q_proj"}
    assert torch.equal(logits(tuned, ids), expected)  # exactly: W x + 0 (0 x)

    probe = write_selftest_adapter(read_base_config(world.base), tmp_path, base_model=str(world.base))
    fresh = AutoModelForCausalLM.from_pretrained(world.base, dtype=torch.float32).eval()
    moved = logits(PeftModel.from_pretrained(fresh, probe.path).eval(), ids)
    assert (moved.log_softmax(-1) - expected.log_softmax(-1)).abs().max() > 1e-2  # type: ignore[union-attr]


def test_names_follow_the_weights_and_writing_again_is_idempotent(tmp_path: Path) -> None:
    first = write_null_adapter(SMOLLM2_LIKE, tmp_path)
    again = write_null_adapter(SMOLLM2_LIKE, tmp_path)
    assert again == first and is_all_zero_safetensors(first.path / "adapter_model.safetensors")
    bigger = write_null_adapter({**SMOLLM2_LIKE, "num_hidden_layers": 3}, tmp_path)
    assert bigger.name != first.name  # different weights, different name (vLLM keys its prefix cache by name)
    probe, probe_again = write_selftest_adapter(SMOLLM2_LIKE, tmp_path), write_selftest_adapter(SMOLLM2_LIKE, tmp_path)
    assert probe == probe_again and probe.name.startswith("realign-selftest-")  # deterministic PRNG
    assert write_selftest_adapter(SMOLLM2_LIKE, tmp_path, seed=18).name != probe.name
    assert not is_all_zero_safetensors(probe.path / "adapter_model.safetensors")
    config = json.loads((first.path / "adapter_config.json").read_text())
    assert config["r"] == 1 and config["target_modules"] == ["q_proj"] and config["peft_type"] == "LORA"


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2"])
def test_supported_families_use_head_dim_when_given(model_type: str, tmp_path: Path) -> None:
    from safetensors import safe_open

    config = {**SMOLLM2_LIKE, "model_type": model_type, "head_dim": 32}  # gemma: heads * head_dim != hidden
    written = write_null_adapter(config, tmp_path)
    with safe_open(str(written.path / "adapter_model.safetensors"), "np") as f:
        assert f.get_slice("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight").get_shape() == [128, 1]


def test_an_unsupported_architecture_says_isolation_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(IsolationUnavailable, match="isolation is unavailable for architecture 'gpt2'"):
        write_null_adapter({**SMOLLM2_LIKE, "model_type": "gpt2"}, tmp_path)
    with pytest.raises(IsolationUnavailable, match="config.json"):
        read_base_config(tmp_path / "no-such-model")
