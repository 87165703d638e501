"""The GPU paths (bf16 autocast, compiled kernels, hidden-state head) agree with eager fp32. Skipped without CUDA."""

from __future__ import annotations

import copy

import pytest
import torch

from trace_engine.head import policy_pass
from trace_engine.kernels import fuse_elementwise_
from trace_engine.logprobs import sequence_logps
from trace_engine.modeling import LoraSettings, attach_lora
from trace_engine.tokenization import EncodedSequence, collate

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _qwen2():
    from transformers import AutoModelForCausalLM, Qwen2Config

    cfg = Qwen2Config(vocab_size=4096, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=512)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()


def _batch():
    g = torch.Generator().manual_seed(0)
    seqs = [EncodedSequence(tuple(torch.randint(10, 4096, (p,), generator=g).tolist()),
                            tuple(torch.randint(10, 4096, (r,), generator=g).tolist()))
            for p, r in ((20, 60), (35, 41), (8, 90), (50, 30))]
    return collate(seqs, pad_id=0, pad_to_multiple_of=8)


def test_bf16_fused_hidden_state_path_matches_fp32_eager_logits():
    eager = _qwen2()
    batch = _batch()
    want = sequence_logps(eager(input_ids=batch.input_ids).logits, batch.input_ids, batch.response_mask)  # CPU fp32
    fast = copy.deepcopy(eager).to("cuda", torch.bfloat16)
    report = fuse_elementwise_(fast, "auto")
    assert report.enabled, report
    model = attach_lora(fast, LoraSettings(r=8, alpha=16, dropout=0.0))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = policy_pass(model, batch.to("cuda"))
    assert out.hidden is not None
    got = out.logps.cpu()
    # bf16 weights: per-token log-probs agree to ~1e-2 nats; sums over 30-90 tokens to well under 1%
    assert torch.allclose(got, want, rtol=1e-2, atol=0.5), (got, want)
    out.logps.sum().backward()  # the compiled backward and the checkpointed head run
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
