"""Response log-probs and KL straight from the last hidden states: no [N, T, V] logits tensor ever exists.

Why: with a 152k vocabulary the logits of 16 rows x 240 positions are 1.2 GB in bf16, kept (with their gradient)
for the backward: the largest activation of a 7B scoring or training pass once decoder layers are checkpointed.
Here the LM head runs only on the positions that predict a response token (prompt and padding positions never
reach it), in chunks. When the decoder layers are checkpointed (the memory-lean mode) the head chunks are too:
the backward recomputes each chunk's logits, so the head needs O(chunk x V) memory; otherwise each chunk keeps its
logits (M x V in the activation dtype, M = scored positions) and the head costs no recompute.

Only for models whose causal-LM forward is exactly `lm_head(decoder(x))` (Llama, Qwen2/3, Mistral); anything
else (logit soft-capping or scaling, a LoRA on lm_head) gets None from `split_lm_head` and the caller uses the
plain logits path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from trace_engine.logprobs import (
    CHUNK_ELEMENTS,
    ChunkedTokenKL,
    ChunkedTokenLogps,
    SequenceBatch,
    chunked_sequence_logps,
)

PLAIN_HEAD_MODEL_TYPES = frozenset({"llama", "qwen2", "qwen3", "mistral"})


@dataclass(frozen=True)
class HeadSplit:
    decoder: nn.Module  # returns last_hidden_state (already final-normed)
    weight: torch.Tensor  # [V, H] LM head weight (no bias)
    recompute: bool = True  # recompute head chunks in the backward (set when the decoder layers are checkpointed)


def split_lm_head(model: nn.Module) -> HeadSplit | None:
    """(decoder, LM head weight) when logits are a plain linear map of the decoder's output; else None."""
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(causal, "config", None)
    if getattr(config, "model_type", None) not in PLAIN_HEAD_MODEL_TYPES:
        return None
    head = causal.get_output_embeddings() if hasattr(causal, "get_output_embeddings") else None
    decoder = getattr(causal, getattr(causal, "base_model_prefix", ""), None)
    if type(head) is not nn.Linear or head.bias is not None or not isinstance(decoder, nn.Module):
        return None
    return HeadSplit(decoder, head.weight, layers_recompute_activations(decoder))


def layers_recompute_activations(decoder: nn.Module) -> bool:
    """Whether the decoder's layers are under activation checkpointing: transformers' own (training mode), or the
    engine's `modeling.checkpointed_layers`, whose wrapped forwards carry `recomputes_activations`."""
    for m in decoder.modules():
        if getattr(m, "gradient_checkpointing", False) is True and m.training:
            return True
        if getattr(m.__dict__.get("forward"), "recomputes_activations", False):
            return True
    return False


def causal_forward_kwargs(batch: SequenceBatch) -> dict:
    """Model inputs for a right-padded batch: no attention mask at all, plain causal attention.

    Why: with right padding a real token only attends to earlier positions, which are all real, so the mask changes
    nothing that is scored (padded positions are never read, and their gradient is 0). Passing it costs two host
    syncs per forward (transformers checks whether it can drop it; without it one check remains, for packed
    sequences) and forces an explicit [N, 1, T, T] mask that rules out the FlashAttention kernel.
    """
    return {"input_ids": batch.input_ids, "attention_mask": None, "use_cache": False}


def last_hidden(split: HeadSplit, batch: SequenceBatch) -> torch.Tensor:
    """[N, T, H] from the decoder (run under the caller's autocast)."""
    out = split.decoder(**causal_forward_kwargs(batch))
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def positions_per_chunk(vocab: int, chunk_tokens: int | None = None) -> int:
    return max(1, chunk_tokens if chunk_tokens is not None else CHUNK_ELEMENTS // max(vocab, 1))


def _chunk_logps(h: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    logits = (h @ weight.t())[None]  # [1, m, V]
    return ChunkedTokenLogps.apply(logits, targets[None], logits.shape[1])[0]  # [m] fp32


def _chunk_kl(h: torch.Tensor, h_ref: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    logits = (h @ weight.t())[None]
    with torch.no_grad():
        ref_logits = (h_ref @ weight.t())[None]
    return ChunkedTokenKL.apply(logits, ref_logits, logits.shape[1])[0]  # [m] fp32


def _per_chunk(
    fn, chunk: int, sliced: tuple[torch.Tensor, ...], weight: torch.Tensor, recompute: bool
) -> torch.Tensor:
    """fn(*row-chunks of `sliced`, weight) concatenated; with `recompute`, checkpointed when a gradient will flow,
    so the backward recomputes each chunk's logits instead of keeping them."""
    grad = recompute and torch.is_grad_enabled() and (weight.requires_grad or any(t.requires_grad for t in sliced))
    m = sliced[0].shape[0]
    parts = []
    for s in range(0, m, chunk):
        args = [t[s : s + chunk] for t in sliced]
        parts.append(checkpoint(fn, *args, weight, use_reentrant=False) if grad else fn(*args, weight))
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float32, device=sliced[0].device)


def sequence_logps_from_hidden(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    batch: SequenceBatch,
    chunk_tokens: int | None = None,
    recompute: bool = True,
) -> torch.Tensor:
    """s(y) per row [N] fp32: the head applied only at positions predicting a response token."""
    n, t, _ = hidden.shape
    pos = batch.predicting_positions()  # [M]
    h = hidden.reshape(n * t, -1).index_select(0, pos)  # [M, H]
    targets = batch.input_ids.reshape(-1).index_select(0, pos + 1)  # [M]
    chunk = positions_per_chunk(weight.shape[0], chunk_tokens)
    lp = _per_chunk(_chunk_logps, chunk, (h, targets), weight, recompute)
    rows = torch.div(pos, t, rounding_mode="floor")
    return torch.zeros(n, dtype=torch.float32, device=hidden.device).index_add(0, rows, lp)


def kl_sums_from_hidden(
    hidden: torch.Tensor,
    ref_hidden: torch.Tensor,
    weight: torch.Tensor,
    batch: SequenceBatch,
    chunk_tokens: int | None = None,
    recompute: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ over response tokens of KL(π_ref ‖ π_θ), response-token count) per row of `batch`.  -> [R], [R]

    hidden: policy [R, T, H]; ref_hidden: reference [R, T, H], both for the rows of `batch`.
    """
    r, t, _ = hidden.shape
    pos = batch.predicting_positions()  # [M]
    h = hidden.reshape(r * t, -1).index_select(0, pos)
    h_ref = ref_hidden.reshape(r * t, -1).index_select(0, pos).detach()
    kl = _per_chunk(_chunk_kl, positions_per_chunk(weight.shape[0], chunk_tokens), (h, h_ref), weight, recompute)
    rows = torch.div(pos, t, rounding_mode="floor")
    zeros = torch.zeros(r, dtype=torch.float32, device=hidden.device)
    return zeros.index_add(0, rows, kl), zeros.index_add(0, rows, torch.ones_like(kl))


@dataclass
class PolicyPass:
    """One forward's result: per-row s(y) plus what the KL needs (hidden states, or logits on the plain path)."""

    logps: torch.Tensor  # [N] fp32
    hidden: torch.Tensor | None  # [N, T, H] (split path)
    logits: torch.Tensor | None  # [N, T, V] (plain path)
    split: HeadSplit | None


def policy_pass(model: nn.Module, batch: SequenceBatch, chunk_tokens: int | None = None) -> PolicyPass:
    """s(y) per row from one forward (run under the caller's autocast and grad mode)."""
    split = split_lm_head(model)
    if split is not None:
        hidden = last_hidden(split, batch)
        logps = sequence_logps_from_hidden(hidden, split.weight, batch, chunk_tokens, split.recompute)
        return PolicyPass(logps, hidden, None, split)
    logits = model(**causal_forward_kwargs(batch)).logits
    logps = chunked_sequence_logps(logits, batch.input_ids, batch.response_mask, chunk_tokens)
    return PolicyPass(logps, None, logits, None)
