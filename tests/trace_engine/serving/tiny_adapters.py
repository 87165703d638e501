"""A tiny base model and LoRA adapters built locally (no downloads), shared by the serving tests and benchmark.

`tiny_world(root)` builds once per process: the base (trace_engine.tiny_models), two adapters with random
non-zero LoRA B (they change outputs, differently), and a zero-B adapter (peft's default init: loads fine, changes
nothing: the "silently not applied" case).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

CHAT_PROMPTS = [
    "How do I reset my password?",
    "Explain how firewalls work for a security class.",
    "What is the capital of France?",
    "I cannot help with that request.",
    "Two plus two is four.",
    "Here is a careful answer with caveats.",
    "Open settings and choose reset.",
    "Sorry, I can't assist with that.",
]


@dataclass(frozen=True)
class TinyWorld:
    base: Path
    adapter_a: Path
    adapter_b: Path
    adapter_zero: Path


def save_lora(base_dir: Path, out_dir: Path, *, seed: int, zero_b: bool, rank: int = 4, alpha: int = 32) -> Path:
    """A peft LoRA on q_proj/v_proj saved as safetensors; random A and B unless zero_b (then B = 0)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=["q_proj", "v_proj"],
                        init_lora_weights=zero_b)  # False: random B; True: B = 0
    model = get_peft_model(base, config)
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def save_sharpening_lora(base_dir: Path, out_dir: Path, *, eps: float = 0.05) -> Path:
    """A real, non-zero LoRA on lm_head whose B·A = eps·W_lm_head: logits become (1 + eps)·logits, so every
    argmax (greedy text) stays the base model's while every log-prob changes (the adapter the old text-only
    deploy gate refused). Rank = hidden size, A = I."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    hidden = base.config.hidden_size
    weight = base.lm_head.weight.detach().clone()  # [V, H]
    model = get_peft_model(base, LoraConfig(r=hidden, lora_alpha=hidden, target_modules=["lm_head"],
                                            init_lora_weights=False))
    layer = model.base_model.model.lm_head
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(torch.eye(hidden))
        layer.lora_B["default"].weight.copy_(eps * weight)
    model.save_pretrained(out_dir, safe_serialization=True, save_embedding_layers=False)
    return out_dir


@functools.cache
def tiny_world(root: Path) -> TinyWorld:
    from trace_engine.tiny_models import DEFAULT_CORPUS, build_tiny_model, save_tiny, train_tokenizer

    tokenizer = train_tokenizer(DEFAULT_CORPUS + CHAT_PROMPTS, vocab_size=320)
    base = save_tiny(build_tiny_model(tokenizer, seed=0), tokenizer, root / "base")
    return TinyWorld(
        base=base,
        adapter_a=save_lora(base, root / "adapter_a", seed=1, zero_b=False),
        adapter_b=save_lora(base, root / "adapter_b", seed=2, zero_b=False),
        adapter_zero=save_lora(base, root / "adapter_zero", seed=3, zero_b=True),
    )
