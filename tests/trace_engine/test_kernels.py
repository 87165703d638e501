"""Fused RMSNorm/SwiGLU: same outputs and gradients as the eager model, and clear refusals."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from trace_engine.kernels import FusionReport, fuse_elementwise_, rms_norm, swiglu


def _tiny(arch: str):
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[arch]
    cfg = cls(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()


def test_reference_formulas_match_hand_computation():
    x = torch.tensor([[3.0, 4.0]])
    # rms = sqrt((9 + 16) / 2) = 3.5355...
    assert torch.allclose(rms_norm(x, torch.tensor([1.0, 2.0]), 0.0), torch.tensor([[0.848528, 2.262742]]), atol=1e-5)
    assert torch.allclose(swiglu(torch.tensor([0.0, 1.0]), torch.tensor([5.0, 2.0])), torch.tensor([0.0, 1.462117]))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_fused_model_matches_eager_logits_and_gradients(arch):
    eager = _tiny(arch)
    fused = copy.deepcopy(eager)
    report = fuse_elementwise_(fused, "on")
    if not report.enabled and report.reason.startswith("torch.compile failed"):
        pytest.skip(report.reason)  # no working inductor toolchain on this machine
    assert report.enabled and report.norms == 2 * 2 + 1 and report.mlps == 2, report
    ids = torch.randint(0, 97, (3, 11))
    outs = []
    for model in (eager, fused):
        model.zero_grad()
        logits = model(input_ids=ids).logits
        logits.float().logsumexp(-1).sum().backward()
        outs.append((logits.detach(), [p.grad.clone() for p in model.parameters()]))
    assert torch.allclose(outs[0][0], outs[1][0], atol=1e-5, rtol=1e-4)
    for g_eager, g_fused in zip(outs[0][1], outs[1][1], strict=True):
        assert torch.allclose(g_eager, g_fused, atol=1e-5, rtol=1e-3)


def test_auto_is_off_on_cpu_and_off_means_off():
    model = _tiny("llama")
    assert fuse_elementwise_(model, "auto") == FusionReport(False, reason="auto: not on CUDA")
    assert not fuse_elementwise_(model, "off").enabled
    assert "forward" not in vars(model.model.norm)  # nothing patched


def test_unknown_modules_and_modes():
    assert fuse_elementwise_(nn.Sequential(nn.Linear(2, 2)), "on").reason == "no known RMSNorm/SwiGLU modules"
    with pytest.raises(ValueError, match="fused-kernels mode"):
        fuse_elementwise_(nn.Linear(2, 2), "sometimes")


def test_restore_eager_undoes_the_patch():
    from trace_engine.kernels import restore_eager_

    model = _tiny("qwen2")
    report = fuse_elementwise_(model, "on")
    if not report.enabled:
        pytest.skip(report.reason)
    assert "forward" in vars(model.model.norm)
    assert restore_eager_(model) == report.norms + report.mlps
    assert "forward" not in vars(model.model.norm) and restore_eager_(model) == 0
