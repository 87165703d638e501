from __future__ import annotations

import json

import pytest
import torch

from trace_engine.config import LoraSettings, TrainConfig
from trace_engine.modeling import (
    ModelLoadError,
    ModelSource,
    attach_lora,
    default_dtype,
    linear_module_names,
    load_causal_lm,
    load_tokenizer,
    merge,
    reference_mode,
    validate_target_modules,
)
from trace_engine.tiny_models import DEFAULT_CORPUS, build_tiny_model, save_tiny, train_tokenizer


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tiny_dir(request, tmp_path_factory):
    tok = train_tokenizer(DEFAULT_CORPUS)
    return save_tiny(build_tiny_model(tok, request.param), tok, tmp_path_factory.mktemp(request.param))


def _ids(tokenizer) -> torch.Tensor:
    return torch.tensor([tokenizer("How do I reset my password?")["input_ids"]])


def test_hub_id_needs_pinned_commit():
    with pytest.raises(ModelLoadError, match="pinned revision"):
        ModelSource("org/model").validate()
    with pytest.raises(ModelLoadError, match="40-character commit"):
        ModelSource("org/model", revision="main").validate()
    ModelSource("org/model", revision="a" * 40).validate()  # accepted without touching the network


def test_local_pickle_only_checkpoint_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(ModelLoadError, match=r"only pickle weights \(pytorch_model.bin\)"):
        load_causal_lm(ModelSource(str(tmp_path)))
    (tmp_path / "pytorch_model.bin").unlink()
    with pytest.raises(ModelLoadError, match="no \\*.safetensors"):
        ModelSource(str(tmp_path)).validate()
    with pytest.raises(ModelLoadError, match="not a directory"):
        ModelSource(str(tmp_path / "missing")).validate()


def test_dtype_defaults():
    assert default_dtype(torch.device("cuda")) == torch.bfloat16
    assert default_dtype(torch.device("cpu")) == torch.float32
    assert default_dtype(torch.device("cpu"), "bf16") == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        default_dtype(torch.device("cpu"), "int3")


def test_load_local_fp32_on_cpu_and_tokenizer(tiny_dir):
    model = load_causal_lm(ModelSource(str(tiny_dir)), device="cpu")
    assert next(model.parameters()).dtype == torch.float32 and not model.training
    tok = load_tokenizer(ModelSource(str(tiny_dir)))
    assert tok.pad_token_id is not None and tok.chat_template


def test_target_modules_validated_with_available_names(tiny_dir):
    model = load_causal_lm(ModelSource(str(tiny_dir)), device="cpu")
    names = linear_module_names(model)
    assert {"q_proj", "v_proj", "o_proj", "gate_proj"} <= set(names)
    with pytest.raises(ModelLoadError, match=r"\['query_key_value'\] are not linear layers.*available: .*q_proj"):
        validate_target_modules(model, ["q_proj", "query_key_value"])
    with pytest.raises(ModelLoadError, match="query_key_value"):
        attach_lora(model, LoraSettings(target_modules=("query_key_value",)))


def test_reference_is_base_model_with_adapter_disabled(tiny_dir):
    source = ModelSource(str(tiny_dir))
    base = load_causal_lm(source, device="cpu")
    ids = _ids(load_tokenizer(source))
    with torch.no_grad():
        expected = base(input_ids=ids).logits
    model = attach_lora(load_causal_lm(source, device="cpu"), LoraSettings(r=4, alpha=8, dropout=0.0))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, expected)  # B = 0 at init
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)
        moved = model(input_ids=ids).logits
        with reference_mode(model):
            ref = model(input_ids=ids).logits
    assert not torch.allclose(moved, expected, atol=1e-3)
    assert torch.equal(ref, expected)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert any("q_proj" in n for n in trainable) and not any("k_proj" in n for n in trainable)


def test_reference_mode_refuses_plain_model(tiny_dir):
    with pytest.raises(RuntimeError, match="precompute"), reference_mode(torch.nn.Linear(2, 2)):
        pass


def test_merge_writes_safetensors_equal_to_adapter_model(tiny_dir, tmp_path):
    source = ModelSource(str(tiny_dir))
    tok = load_tokenizer(source)
    model = attach_lora(load_causal_lm(source, device="cpu"), LoraSettings(r=4, alpha=8, dropout=0.0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
        expected = model(input_ids=_ids(tok)).logits
    adapter_dir = tmp_path / "adapter"
    model.save_pretrained(adapter_dir, safe_serialization=True)
    tok.save_pretrained(adapter_dir)
    (adapter_dir / "realign.json").write_text(json.dumps({"base_model": source.to_dict()}))
    result = merge(adapter_dir, tmp_path / "merged")
    assert "model.safetensors" in result.files and "tokenizer.json" in result.files
    assert not any(f.endswith(".bin") for f in result.files)
    merged = load_causal_lm(ModelSource(str(tmp_path / "merged")), device="cpu")
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=_ids(tok)).logits, expected, atol=1e-4)


def test_merge_keeps_the_base_checkpoint_dtype(tmp_path):
    from safetensors.torch import load_file

    tok = train_tokenizer(DEFAULT_CORPUS)
    base_dir = save_tiny(build_tiny_model(tok, "qwen2").to(torch.bfloat16), tok, tmp_path / "base")
    source = ModelSource(str(base_dir))
    model = attach_lora(load_causal_lm(source, device="cpu"), LoraSettings(r=4, alpha=8))
    model.save_pretrained(tmp_path / "adapter", safe_serialization=True)
    merge(tmp_path / "adapter", tmp_path / "merged", base=source)
    weights = load_file(tmp_path / "merged" / "model.safetensors")
    assert {w.dtype for w in weights.values()} == {torch.bfloat16}
    assert (tmp_path / "merged" / "tokenizer.json").exists()  # falls back to the base's tokenizer


def test_lora_on_chosen_layers_only_and_backward_stops_below_them(tiny_dir):
    model = load_causal_lm(ModelSource(str(tiny_dir)), device="cpu")
    n_layers = model.config.num_hidden_layers
    top = n_layers - 1
    peft_model = attach_lora(model, LoraSettings(r=4, alpha=8, dropout=0.0, layers=(top,)), seed=0)
    adapted = {name.split(".layers.")[1].split(".")[0] for name, _ in peft_model.named_parameters() if "lora_" in name}
    assert adapted == {str(top)}
    seen: list[int] = []
    for i, layer in enumerate(peft_model.base_model.model.model.layers):
        layer.register_full_backward_hook(lambda *_, i=i: seen.append(i))
    tok = load_tokenizer(ModelSource(str(tiny_dir)))
    peft_model(input_ids=_ids(tok)).logits.sum().backward()
    assert seen == [top]  # no gradient work in the layers below the adapted one


def test_lora_layers_out_of_range_or_empty_are_refused(tiny_dir):
    model = load_causal_lm(ModelSource(str(tiny_dir)), device="cpu")
    with pytest.raises(ModelLoadError, match="out of range"):
        attach_lora(model, LoraSettings(layers=(model.config.num_hidden_layers,)))
    with pytest.raises(ValueError, match="layer indices"):
        LoraSettings(layers=())


def test_lora_layers_survive_the_config_round_trip():
    config = TrainConfig(lora=LoraSettings(layers=(2, 3)))
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))).lora.layers == (2, 3)
    assert "layers" not in TrainConfig().to_dict()["lora"]  # records of runs without it are unchanged
