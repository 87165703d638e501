"""Per-sequence directional derivatives d_n = ⟨G, ∇_θ s_n⟩ for a whole batch in one forward and one backward.

For a linear layer out = x Wᵀ (+ b), the gradient of s_n is Σ_t δ_{n,t} x_{n,t}ᵀ (δ = ∂(Σ_m s_m)/∂out; rows of a
batch do not interact, so row n of δ only carries s_n). Hence ⟨G_W, ∇_W s_n⟩ = Σ_t δ_{n,t}ᵀ G_W x_{n,t}: a forward
hook keeps a reference to x (autograd saves it anyway for the weight gradient) and a tensor hook on the output
reduces it against δ during the backward. No per-sample backward, no flattened gradient vectors ("ghost
dot-product", as in In-Run Data Shapley / GREATS). LoRA's lora_A and lora_B are plain nn.Linear layers, so this
covers PEFT LoRA; any other trainable parameter is refused with a clear error.
Pure torch; imports nothing from the rest of the engine.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class _Layer:
    module: nn.Linear
    weight_dir: torch.Tensor | None  # [out, in] fp32, None when the direction is zero there (skipped)
    bias_dir: torch.Tensor | None  # [out] fp32


class GhostDot:
    """Hooks every trainable nn.Linear of `model`; `direction` maps trainable parameter names to tensors (G)."""

    def __init__(self, model: nn.Module, direction: Mapping[str, torch.Tensor]):
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        missing = sorted(trainable - set(direction))
        if missing:
            raise ValueError(f"direction has no entry for trainable parameters: {missing[:5]}")
        covered: set[str] = set()
        self._layers: list[_Layer] = []
        for mname, module in model.named_modules():
            if not isinstance(module, nn.Linear):
                continue
            w_name, b_name = f"{mname}.weight", f"{mname}.bias"
            w_dir = _nonzero(direction[w_name]) if w_name in trainable else None
            b_dir = _nonzero(direction[b_name]) if b_name in trainable else None
            covered.update(n for n in (w_name, b_name) if n in trainable)
            if w_dir is not None or b_dir is not None:
                self._layers.append(_Layer(module, w_dir, b_dir))
        unsupported = sorted(trainable - covered)
        if unsupported:
            raise ValueError(
                "ghost dot-products support trainable nn.Linear weights/biases only (e.g. LoRA); "
                f"found other trainable parameters: {unsupported[:5]}"
            )

    @property
    def num_hooked_layers(self) -> int:
        return len(self._layers)

    @contextmanager
    def capture(self, num_rows: int, device: torch.device | str) -> Iterator[torch.Tensor]:
        """Yield d [num_rows] fp32 (zeros); a forward + backward of Σ s_n inside the block fills it.

        Rows must be right-padded (the SequenceBatch contract): then nothing scored depends on a padded position,
        so δ is exactly 0 there and padding needs no mask.
        """
        d = torch.zeros(num_rows, dtype=torch.float32, device=device)
        handles = [layer.module.register_forward_hook(_forward_hook(layer, d)) for layer in self._layers]
        try:
            yield d
        finally:
            for h in handles:
                h.remove()


def _nonzero(t: torch.Tensor) -> torch.Tensor | None:
    """fp32 copy of the direction block, or None when it is all zero (e.g. LoRA A at θ_ref): nothing to add."""
    t = t.detach().float()
    return t if bool(torch.any(t != 0)) else None


def _forward_hook(layer: _Layer, d: torch.Tensor):
    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if not (torch.is_grad_enabled() and output.requires_grad):
            return  # a no-grad pass (reference log-probs) contributes nothing
        x = inputs[0]
        output.register_hook(lambda grad: _accumulate(grad, x, layer, d))

    return hook


def _accumulate(grad: torch.Tensor, x: torch.Tensor, layer: _Layer, d: torch.Tensor) -> None:
    """d_n += Σ_t δ_{n,t}ᵀ (G x_{n,t}) (+ ⟨g_b, Σ_t δ_{n,t}⟩), contracting on the layer's smaller side, in fp32.

    Few kernels on purpose (this runs for every hooked layer of every batch): one projection matmul and one batched
    dot product per row.
    """
    n = d.shape[0]
    g = grad.reshape(n, -1, grad.shape[-1]).float()  # [N, T, out]
    if layer.weight_dir is not None:
        w = layer.weight_dir
        xs = x.reshape(n, -1, x.shape[-1]).float()  # [N, T, in]
        if w.shape[0] <= w.shape[1]:
            a, b = torch.matmul(xs, w.t()), g  # (G x) · δ
        else:
            a, b = torch.matmul(g, w), xs  # (Gᵀ δ) · x
        d.add_(torch.bmm(a.reshape(n, 1, -1), b.reshape(n, -1, 1)).view(n))
    if layer.bias_dir is not None:
        d.add_(torch.matmul(g.sum(dim=1), layer.bias_dir))
