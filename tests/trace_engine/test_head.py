"""Response log-probs and KL from hidden states equal the full-logits computation, values and gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trace_engine.config import LoraSettings
from trace_engine.head import kl_sums_from_hidden, last_hidden, policy_pass, split_lm_head
from trace_engine.logprobs import SequenceBatch, predicting_positions, sequence_logps, token_kl_sums
from trace_engine.modeling import attach_lora
from trace_engine.tokenization import EncodedSequence, collate


def _model(arch: str):
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[arch]
    cfg = cls(vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = attach_lora(AutoModelForCausalLM.from_config(cfg, dtype=torch.float32), LoraSettings(r=4, alpha=8, dropout=0))
    for name, p in model.named_parameters():  # a non-identity adapter, so policy != reference
        if "lora_B" in name:
            nn.init.normal_(p, std=0.2)
    return model.eval()


def _batch() -> SequenceBatch:
    g = torch.Generator().manual_seed(1)
    seqs = []
    for p_len, r_len in ((3, 5), (6, 2), (1, 7), (4, 4)):
        ids = torch.randint(5, 101, (p_len + r_len,), generator=g).tolist()
        seqs.append(EncodedSequence(tuple(ids[:p_len]), tuple(ids[p_len:])))
    return collate(seqs, pad_id=0, pad_to_multiple_of=4)


def test_predicting_positions_point_one_before_each_response_token():
    mask = torch.tensor([[False, False, True, True], [False, True, False, False]])
    # row 0 predicts tokens 2, 3 from positions 1, 2; row 1 predicts token 1 from position 0 (flat 4)
    assert predicting_positions(mask).tolist() == [1, 2, 4]
    assert predicting_positions(torch.tensor([[True, True]])).tolist() == [0]  # position 0 has no predecessor


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("chunk_tokens", [None, 3])
def test_sequence_logps_and_gradients_match_full_logits(arch, chunk_tokens):
    model, batch = _model(arch), _batch()
    assert split_lm_head(model) is not None
    params = [p for p in model.parameters() if p.requires_grad]
    fast = policy_pass(model, batch, chunk_tokens)
    assert fast.logits is None and fast.hidden is not None
    fast_grads = torch.autograd.grad((fast.logps * torch.arange(1.0, 5.0)).sum(), params)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    slow = sequence_logps(logits, batch.input_ids, batch.response_mask)
    slow_grads = torch.autograd.grad((slow * torch.arange(1.0, 5.0)).sum(), params)
    assert torch.allclose(fast.logps, slow, atol=1e-5, rtol=1e-5)
    for a, b in zip(fast_grads, slow_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


def test_kl_from_hidden_matches_full_logits_kl_and_its_gradient():
    model, batch = _model("llama"), _batch()
    split = split_lm_head(model)
    params = [p for p in model.parameters() if p.requires_grad]
    hidden = last_hidden(split, batch)
    with torch.no_grad(), model.disable_adapter():
        ref_hidden = last_hidden(split, batch)
        ref_logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    sums, counts = kl_sums_from_hidden(hidden, ref_hidden, split.weight, batch, chunk_tokens=5)
    fast_grads = torch.autograd.grad(sums.sum(), params)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    slow_sums, slow_counts = token_kl_sums(logits, ref_logits, batch.response_mask)
    slow_grads = torch.autograd.grad(slow_sums.sum(), params)
    assert bool((sums > 0).all())
    assert torch.equal(counts, slow_counts) and torch.allclose(sums, slow_sums, atol=1e-6, rtol=1e-5)
    for a, b in zip(fast_grads, slow_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-7, rtol=1e-4)


def test_models_with_a_non_plain_head_use_the_logits_path():
    model = _model("llama")
    model.get_base_model().config.model_type = "gemma2"  # soft-capped logits: not lm_head(hidden)
    assert split_lm_head(model) is None
    out = policy_pass(model, _batch())
    assert out.logits is not None and out.hidden is None


def test_head_chunks_recompute_only_when_the_layers_do():
    from trace_engine.modeling import checkpointed_layers

    model = _model("qwen2")
    assert split_lm_head(model).recompute is False
    with checkpointed_layers(model):
        assert split_lm_head(model).recompute is True
    assert split_lm_head(model).recompute is False
    base = model.get_base_model()
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    assert split_lm_head(model).recompute is True
    model.eval()  # transformers checkpoints only in training mode
    assert split_lm_head(model).recompute is False


def test_recomputed_head_gives_the_same_values_and_gradients():
    from trace_engine.modeling import checkpointed_layers

    model, batch = _model("llama"), _batch()
    params = [p for p in model.parameters() if p.requires_grad]
    results = []
    for layers_checkpointed in (False, True):
        with checkpointed_layers(model, layers_checkpointed):
            out = policy_pass(model, batch, chunk_tokens=3)
            assert out.split.recompute is layers_checkpointed
            results.append((out.logps.detach(), torch.autograd.grad(out.logps.sum(), params)))
    assert torch.allclose(results[0][0], results[1][0], atol=1e-6)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        assert torch.allclose(a, b, atol=1e-7, rtol=1e-5)


def test_engine_forwards_pass_no_attention_mask():
    """Right-padded batches need none; passing one costs host syncs and the FlashAttention path (head.py)."""
    model, batch = _model("qwen2"), _batch()
    seen = []
    decoder = split_lm_head(model).decoder
    handle = decoder.register_forward_pre_hook(lambda m, a, kw: seen.append(kw.get("attention_mask", "absent")),
                                               with_kwargs=True)
    try:
        policy_pass(model, batch)
    finally:
        handle.remove()
    assert seen == [None]
