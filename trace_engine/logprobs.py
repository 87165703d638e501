"""One function turns logits into per-sequence log-probs; policy, reference and scoring all use it."""

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
