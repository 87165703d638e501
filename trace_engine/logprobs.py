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

    def to(self, device: torch.device | str) -> SequenceBatch:
        return SequenceBatch(
            self.input_ids.to(device), self.attention_mask.to(device), self.response_mask.to(device)
        )

    @property
    def num_response_tokens(self) -> torch.Tensor:  # [N]
        return self.response_mask.sum(dim=1)


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
