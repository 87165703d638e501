"""One function turns logits into per-sequence log-probs; policy, reference and scoring all use it. The chunked
autograd functions here compute the same log-probs, and the RETAIN anchor's token-level KL, without an [N, T, V]
fp32 temporary (`head.py` runs them on the LM head's chunks)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SequenceBatch:
    """Right-padded token rows. Row i is prompt_i + response_i (+ padding).

    input_ids:      [N, T] long
    attention_mask: [N, T] long, 1 on real tokens
    response_mask:  [N, T] bool, True where input_ids[:, t] is a response token (a position that is scored)
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    scored_positions: torch.Tensor | None = None  # [M] cache of `predicting_positions()`

    def to(self, device: torch.device | str) -> SequenceBatch:
        """Moved copy; the scored positions are computed first where the mask lives on the CPU (no device sync)."""
        positions = self.scored_positions
        if self.attention_mask.device.type == "cpu":
            self.check_right_padded()
            if positions is None:
                positions = self.predicting_positions()
        return SequenceBatch(
            host_to_device(self.input_ids, device),
            host_to_device(self.attention_mask, device),
            host_to_device(self.response_mask, device),
            None if positions is None else host_to_device(positions, device),
        )

    def select(self, rows: torch.Tensor) -> SequenceBatch:
        """The given rows (an index tensor on this batch's device), as a new batch."""
        return SequenceBatch(self.input_ids[rows], self.attention_mask[rows], self.response_mask[rows])

    def check_right_padded(self) -> None:
        """Every row is real tokens then padding: forwards rely on it to drop the attention mask (head.py)."""
        m = self.attention_mask
        if m.shape[1] > 1 and bool((m[:, 1:] > m[:, :-1]).any()):
            raise ValueError("SequenceBatch rows must be right-padded (real tokens first, then padding)")

    def predicting_positions(self) -> torch.Tensor:
        """Flat indices (row * T + t) of positions whose next token is a response token.  -> [M] long"""
        if self.scored_positions is None:
            self.scored_positions = predicting_positions(self.response_mask)
        return self.scored_positions

    @property
    def num_response_tokens(self) -> torch.Tensor:  # [N]
        return self.response_mask.sum(dim=1)


def predicting_positions(response_mask: torch.Tensor) -> torch.Tensor:
    """Flat indices (row * T + t) of the positions t whose next token is a response token.  [N, T] -> [M] long

    Computed where the mask lives (on CUDA `nonzero` syncs the host: `SequenceBatch.to` computes it on the CPU).
    """
    scored = response_mask.clone()
    scored[:, 0] = False  # position 0 has no predecessor (token_logps gives it 0 as well)
    return scored.reshape(-1).nonzero().squeeze(1) - 1


def host_to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """CPU -> CUDA through pinned memory without blocking the host.

    Why: a copy from pageable host memory synchronises the stream first, so every batch moved mid-step made the
    CPU wait for all queued GPU work and left the GPU idle while the next kernels were launched.
    """
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def token_logps(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log p(input_ids[:, t] | input_ids[:, <t]) for t >= 1; position 0 gets 0.

    logits: [N, T, V]; input_ids: [N, T] -> [N, T] (float32)
    Uses logsumexp on the gathered logit so no [N, T, V] log-softmax tensor is materialised beyond the logits.
    """
    shifted = logits[:, :-1, :].float()  # [N, T-1, V] predicts tokens 1..T-1
    targets = input_ids[:, 1:].unsqueeze(-1)  # [N, T-1, 1]
    picked = torch.gather(shifted, 2, targets).squeeze(-1)  # [N, T-1]
    lp = picked - torch.logsumexp(shifted, dim=-1)  # [N, T-1]
    return torch.nn.functional.pad(lp, (1, 0), value=0.0)  # [N, T]


def sequence_logps(logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """s(y) = sum over response tokens of log p(y_t | x, y_<t).  logits [N, T, V] -> [N]."""
    lp = token_logps(logits, input_ids)  # [N, T]
    return (lp * response_mask.to(lp.dtype)).sum(dim=1)


# ---------------------------------------------------------------- token-level KL (chunked)

CHUNK_ELEMENTS = 2**27
"""Default size of one fp32 temporary in the chunked functions (512 MiB): ~880 positions at a 152k vocabulary.
Measured on an H100, sequence log-probs + KL forward and backward on [8, 1024, 151936] bf16 logits: the obvious
fp32 computation peaks 27.8 GiB above its inputs in 98 ms; this default 6.95 GiB (of which ~7 GiB are the bf16
gradients themselves) in 122 ms; chunks of 4096 positions 11.6 GiB."""


def _positions_per_chunk(logits: torch.Tensor, chunk_tokens: int | None) -> int:
    """Sequence positions per chunk for each of the N rows."""
    n, _, v = logits.shape
    total = chunk_tokens if chunk_tokens is not None else max(1, CHUNK_ELEMENTS // max(v, 1))
    return max(1, total // max(n, 1))


class ChunkedTokenKL(torch.autograd.Function):
    """Per-position KL(softmax(ref) ‖ softmax(policy)) over the vocabulary, [N, T, V] x2 -> [N, T] fp32.

    Forward and backward walk the sequence in chunks so at most [N, chunk, V] fp32 temporaries exist; only the
    input logits are saved (no log-softmax kept alive for backward). dKL/dz_policy = softmax(policy) - softmax(ref).
    """

    @staticmethod
    def forward(ctx, policy_logits: torch.Tensor, ref_logits: torch.Tensor, chunk: int) -> torch.Tensor:
        n, t, _ = policy_logits.shape
        out = torch.empty((n, t), dtype=torch.float32, device=policy_logits.device)
        for s in range(0, t, chunk):
            lp = torch.log_softmax(policy_logits[:, s : s + chunk].float(), dim=-1)
            lq = torch.log_softmax(ref_logits[:, s : s + chunk].float(), dim=-1)
            out[:, s : s + chunk] = (lq.exp() * (lq - lp)).sum(dim=-1)
        ctx.save_for_backward(policy_logits, ref_logits)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        policy_logits, ref_logits = ctx.saved_tensors
        grad = torch.empty_like(policy_logits)
        t, chunk = policy_logits.shape[1], ctx.chunk
        for s in range(0, t, chunk):
            p = torch.softmax(policy_logits[:, s : s + chunk].float(), dim=-1)
            q = torch.softmax(ref_logits[:, s : s + chunk].float(), dim=-1)
            grad[:, s : s + chunk] = (grad_out[:, s : s + chunk, None] * (p - q)).to(grad.dtype)
        return grad, None, None


def token_kl_sums(
    policy_logits: torch.Tensor,
    ref_logits: torch.Tensor,
    response_mask: torch.Tensor,
    chunk_tokens: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ over response tokens of KL(π_ref ‖ π_θ), number of response tokens), per sequence.  -> [N], [N]

    policy_logits, ref_logits: [N, T, V] (any float dtype); response_mask: [N, T] bool (True on response tokens).
    Token t is predicted by logits at t-1. chunk_tokens bounds the positions (over all rows) per chunk, so each
    fp32 temporary is about chunk_tokens * V floats instead of [N, T, V]; None = CHUNK_ELEMENTS // V.
    """
    chunk = _positions_per_chunk(policy_logits, chunk_tokens)
    per_pos = ChunkedTokenKL.apply(policy_logits[:, :-1], ref_logits[:, :-1].detach(), chunk)  # [N, T-1]
    mask = response_mask[:, 1:].to(per_pos.dtype)  # [N, T-1]
    return (per_pos * mask).sum(dim=1), mask.sum(dim=1)


def token_kl(
    policy_logits: torch.Tensor,
    ref_logits: torch.Tensor,
    response_mask: torch.Tensor,
    chunk_tokens: int | None = None,
) -> torch.Tensor:
    """Mean over response tokens of KL(π_ref(·|x, y_<t) ‖ π_θ(·|x, y_<t)), per sequence.  -> [N] fp32

    Rows with no response tokens give 0.
    """
    total, count = token_kl_sums(policy_logits, ref_logits, response_mask, chunk_tokens)
    return total / count.clamp(min=1.0)


# ---------------------------------------------------------------- sequence log-probs (chunked fast path)


class ChunkedTokenLogps(torch.autograd.Function):
    """log softmax(logits)[target] per position, chunked; saves only the logits.  [N, T, V], [N, T] -> [N, T]."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
        n, t, _ = logits.shape
        out = torch.empty((n, t), dtype=torch.float32, device=logits.device)
        for s in range(0, t, chunk):
            block = logits[:, s : s + chunk].float()  # [N, c, V]
            picked = torch.gather(block, 2, targets[:, s : s + chunk, None]).squeeze(-1)
            out[:, s : s + chunk] = picked - torch.logsumexp(block, dim=-1)
        ctx.save_for_backward(logits, targets)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        logits, targets = ctx.saved_tensors
        grad = torch.empty_like(logits)
        t, chunk = logits.shape[1], ctx.chunk
        for s in range(0, t, chunk):
            g = grad_out[:, s : s + chunk, None]  # [N, c, 1]
            block = -g * torch.softmax(logits[:, s : s + chunk].float(), dim=-1)
            block.scatter_add_(2, targets[:, s : s + chunk, None], g)
            grad[:, s : s + chunk] = block.to(grad.dtype)
        return grad, None, None


def chunked_sequence_logps(
    logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor, chunk_tokens: int | None = None
) -> torch.Tensor:
    """Same value as `sequence_logps` without an [N, T, V] fp32 copy kept for backward.  -> [N] fp32."""
    chunk = _positions_per_chunk(logits, chunk_tokens)
    lp = ChunkedTokenLogps.apply(logits[:, :-1], input_ids[:, 1:].contiguous(), chunk)  # [N, T-1]
    return (lp * response_mask[:, 1:].to(lp.dtype)).sum(dim=1)
