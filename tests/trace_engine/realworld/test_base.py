"""The real-text world's OLD-policy base: recipe-hash cache (hit, miss on a changed recipe), merged safetensors
that load without peft. Run on a tiny Llama standing in for SmolLM2 (the real one takes minutes on 2 CPUs)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trace_engine.modeling import ModelSource, load_causal_lm
from trace_engine.realworld.base import COMPLETE_MARKER, RealBaseRecipe, ensure_real_base
from trace_engine.realworld.world import RealWorld
from trace_engine.tiny_models import build_tiny_model, save_tiny, train_tokenizer

TINY = RealBaseRecipe(sft_examples=24, steps=2, batch_size=4, warmup_steps=1, lora_r=2, lora_alpha=4)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    corpus = [f"{p} {r}" for p, r in RealWorld(0).sft_examples(60)]
    tokenizer = train_tokenizer(corpus, vocab_size=400)
    model = build_tiny_model(tokenizer, "llama", hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                             intermediate_size=64)
    return save_tiny(model, tokenizer, tmp_path_factory.mktemp("src") / "tiny")


def test_trains_once_then_hits_the_cache_and_a_new_recipe_misses(source: Path, tmp_path: Path) -> None:
    path, metrics = ensure_real_base(source, TINY, tmp_path, log=lambda m: None)
    assert (path / COMPLETE_MARKER).is_file() and list(path.glob("*.safetensors"))
    assert metrics["steps"] == 2 and metrics["examples"] > 24
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
    again, _ = ensure_real_base(source, TINY, tmp_path, log=lambda m: (_ for _ in ()).throw(AssertionError(m)))
    assert again == path
    other, _ = ensure_real_base(source, RealBaseRecipe(**{**TINY.__dict__, "steps": 1}), tmp_path,
                                log=lambda m: None)
    assert other != path
    model = load_causal_lm(ModelSource(str(path)), device="cpu", dtype="fp32")
    assert not any("lora" in name for name, _ in model.named_parameters())  # merged, plain weights


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_a_pinned_adapter_rebuilds_the_same_weights_without_training(source: Path, tmp_path: Path) -> None:
    import shutil

    from trace_engine.realworld.base import ADAPTER_FILE, safe_open_metadata

    trained, metrics = ensure_real_base(source, TINY, tmp_path / "a", log=lambda m: None)
    adapter = trained / ADAPTER_FILE
    assert adapter.is_file() and safe_open_metadata(adapter)["recipe_key"] in trained.name
    pinned_dir = tmp_path / "pinned"
    pinned_dir.mkdir()
    shutil.copyfile(adapter, pinned_dir / f"realworld-{trained.name}.safetensors")
    said: list[str] = []
    rebuilt, again = ensure_real_base(source, TINY, tmp_path / "b", log=said.append, pinned_dir=pinned_dir)
    assert any("pinned adapter" in m for m in said) and not any("step" in m for m in said)
    assert again["pinned"] and again["steps"] == metrics["steps"]  # the training metrics travel in the file
    a, b = _weights(trained), _weights(rebuilt)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    base = _weights(source)
    assert any(not torch.equal(a[k], base[k]) for k in base if k in a)  # the adapter really changed the model


def test_a_pinned_file_for_another_recipe_is_not_used(source: Path, tmp_path: Path) -> None:
    import shutil

    from trace_engine.realworld.base import ADAPTER_FILE

    other, _ = ensure_real_base(source, RealBaseRecipe(**{**TINY.__dict__, "steps": 1}), tmp_path / "a",
                                log=lambda m: None)
    trained_key = ensure_real_base(source, TINY, tmp_path / "probe", log=lambda m: None)[0].name
    pinned_dir = tmp_path / "pinned"
    pinned_dir.mkdir()
    shutil.copyfile(other / ADAPTER_FILE, pinned_dir / f"realworld-{trained_key}.safetensors")  # renamed, wrong key
    said: list[str] = []
    ensure_real_base(source, TINY, tmp_path / "b", log=said.append, pinned_dir=pinned_dir)
    assert any("ignoring" in m for m in said) and not any("merging the pinned" in m for m in said)


def test_lora_delta_is_the_exact_product_of_fp16_factors() -> None:
    from trace_engine.realworld.base import lora_delta

    gen = torch.Generator().manual_seed(0)
    b = (torch.randn(24, 16, generator=gen) * 1e-2).half()
    a = (torch.randn(16, 40, generator=gen) * 5e-2).half()
    delta = lora_delta(b, a, 2.0)
    assert delta.dtype == torch.float64 and delta.shape == (24, 40)
    assert torch.equal(delta, (b.double() @ a.double()) * 2.0)  # fp16 products are exact in float64: any order agrees
