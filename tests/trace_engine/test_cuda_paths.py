"""The GPU paths (bf16 autocast, compiled kernels, hidden-state head) agree with eager fp32. Skipped without CUDA."""

from __future__ import annotations

import copy

import pytest
import torch

from trace_engine.config import LoraSettings
from trace_engine.head import policy_pass
from trace_engine.kernels import fuse_elementwise_
from trace_engine.logprobs import sequence_logps
from trace_engine.modeling import attach_lora
from trace_engine.tokenization import EncodedSequence, collate

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _qwen2():
    from transformers import AutoModelForCausalLM, Qwen2Config

    cfg = Qwen2Config(vocab_size=4096, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=512)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()


def _batch(lengths=((20, 60), (35, 41), (8, 90), (50, 30)), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    seqs = [EncodedSequence(tuple(torch.randint(10, 4096, (p,), generator=g).tolist()),
                            tuple(torch.randint(10, 4096, (r,), generator=g).tolist()))
            for p, r in lengths]
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


def test_bf16_cuda_impact_scores_track_fp32_cpu_scores():
    """The whole GPU scoring path (bf16, compiled kernels, hidden-state head, ghost hooks) against the same
    computation in fp32 on the CPU: the same ranking of samples and scores within bf16 noise."""
    from trace_engine.config import LossSettings
    from trace_engine.impact import ScoringBatch, gold_gradient, score_batches
    from trace_engine.variants import SampleKind

    eager, lora = _qwen2(), LoraSettings(r=8, alpha=16, dropout=0.0)
    gpu_base = copy.deepcopy(eager).to("cuda", torch.bfloat16)
    assert fuse_elementwise_(gpu_base, "auto").enabled
    # as the engine does: bf16 base, then LoRA (peft keeps its weights in fp32), A seeded identically
    model_cpu, model_gpu = attach_lora(eager, lora, seed=0), attach_lora(gpu_base, lora, seed=0)
    gold = ScoringBatch(_batch(), ["g0", "g1"], [SampleKind.INVERT] * 2, [(0, 1), (2, 3)])
    rows = _batch(((12, 70), (12, 64), (30, 40), (30, 52), (9, 88), (44, 20), (44, 75)), seed=1)
    samples = ScoringBatch(rows, ["a", "b", "c", "d"], [SampleKind.INVERT, SampleKind.PUNISH_NPO,
                                                        SampleKind.NO_TRIAGE, SampleKind.INVERT],
                           [(1, 0), (2, 3), (4,), (5, 6)])
    st = LossSettings(beta=0.3)
    scores = {}
    for name, model in (("cpu", model_cpu), ("gpu", model_gpu)):
        g_j = gold_gradient(model, [gold], beta=0.3)
        scores[name] = torch.tensor([s.raw_score for s in score_batches(model, [samples], g_j, st)])
    cpu, gpu = scores["cpu"], scores["gpu"]
    assert cpu.abs().max() > 0
    assert (gpu - cpu).abs().max() <= 0.05 * cpu.abs().max(), (cpu, gpu)
    assert torch.equal(torch.argsort(cpu), torch.argsort(gpu))
