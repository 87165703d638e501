"""Impact scores (design.md §4): w_k = ⟨g_J, ∇_θ ℓ_k(θ)⟩ over the trainable (LoRA) parameters.

g_J is the gradient of the mean DPO loss over the gold batch at θ_ref. Every training loss ℓ_k is a function of the
summed response log-probs s(y) of its one or two sequences, so by the chain rule

    ∇ℓ_k = Σ_{y ∈ k} c_k(y) ∇s(y),   c_k(y) = ∂ℓ_k/∂s(y)   and   w_k = Σ_{y ∈ k} c_k(y) d(y),  d(y) = ⟨g_J, ∇s(y)⟩.

c_k(y) are scalars that depend only on s_θ(y) and s_ref(y) (the σ factors; constants at θ_ref where Δ = r = 0).
We take them by autograd through the SAME per-example loss training uses (`losses.hybrid_loss`), so scoring and
training can never disagree on a loss. d(y) for a whole batch comes from one forward and one backward
(`trace_engine.ghost`). The pass also yields the policy log-probs, which ARE the reference log-probs at θ_ref: they
are returned so the trainer can cache them.

Sharding: `score_batches` scores any list of batches independently; give each rank a shard, gather the
`ScoredSample`s, then normalise once over the whole conflict set (`scoring.normalise_scores`). Turning rows into
batches, normalisation and output live in `scoring`; model utilities in `modeling`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from trace_engine.config import LossSettings
from trace_engine.ghost import GhostDot
from trace_engine.head import policy_pass
from trace_engine.logprobs import SequenceBatch, host_to_device
from trace_engine.losses import KindMasks, dpo_loss, hybrid_loss
from trace_engine.modeling import (
    adapter_is_identity,
    autocast_dtype,
    checkpointed_layers,
    eval_mode,
    trainable_parameters,
)
from trace_engine.variants import LossKind, SampleKind


@dataclass
class ScoringBatch:
    """Token rows plus which rows each sample's loss reads.

    rows[k]: batch row indices of sample k, in loss order: (preferred, dispreferred) for INVERT / PUNISH_ORACLE,
    (y_w, y_l) for PUNISH_NPO, (y,) for NO_TRIAGE. A row belongs to at most one sample.
    reference_logps: optional cached s_ref per row [N]; when absent it is taken from the pass itself at θ_ref
    (identity adapter) or from one no-grad forward with the adapter disabled.
    """

    batch: SequenceBatch
    sample_ids: list[str]
    kinds: list[SampleKind]
    rows: list[tuple[int, ...]]
    reference_logps: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if not (len(self.sample_ids) == len(self.kinds) == len(self.rows)):
            raise ValueError("sample_ids, kinds and rows must have one entry per sample")
        seen: set[int] = set()
        n = self.batch.input_ids.shape[0]
        for sid, kind, rows in zip(self.sample_ids, self.kinds, self.rows, strict=True):
            if len(rows) != kind.arity:
                raise ValueError(f"sample {sid!r}: {kind.value} reads {kind.arity} rows, got {len(rows)}")
            for r in rows:
                if not 0 <= r < n or r in seen:
                    raise ValueError(f"sample {sid!r}: row {r} is out of range or shared with another sample")
                seen.add(r)


@dataclass(frozen=True)
class ScoredSample:
    """Raw impact score of one sample, and the log-probs of its sequences (in `rows` order) from the same pass."""

    sample_id: str
    kind: SampleKind
    raw_score: float
    policy_logps: tuple[float, ...]
    reference_logps: tuple[float, ...]


# ---------------------------------------------------------------- losses as functions of s (chain-rule factors)


def sample_losses(
    kinds: Sequence[SampleKind],
    rows: Sequence[tuple[int, ...]],
    policy: torch.Tensor,
    reference: torch.Tensor,
    num_tokens: torch.Tensor,
    settings: LossSettings,
) -> torch.Tensor:
    """ℓ_k for every sample from per-row s_θ, s_ref and response lengths [N] -> [K]: training's own
    `losses.hybrid_loss`, with each sample's rows as (y+, y-) (a one-sequence sample reads its row as y-)."""
    device = policy.device
    pos = torch.tensor([r[0] for r in rows], dtype=torch.long, device=device)  # [K]
    neg = torch.tensor([r[-1] for r in rows], dtype=torch.long, device=device)  # [K]
    loss_kinds = [k.loss for k in kinds]

    def mask(kind: LossKind) -> torch.Tensor:
        return torch.tensor([lk is kind for lk in loss_kinds], dtype=torch.bool, device=device)

    masks = KindMasks(mask(LossKind.PREF), mask(LossKind.DUAL_NPO), mask(LossKind.NPO_DISPREFERRED), mask(LossKind.KL))
    return hybrid_loss(masks, policy[pos], policy[neg], reference[pos], reference[neg], num_tokens[pos],
                       num_tokens[neg], settings).per_example


def sequence_coefficients(
    kinds: Sequence[SampleKind],
    rows: Sequence[tuple[int, ...]],
    policy: torch.Tensor,
    reference: torch.Tensor,
    num_tokens: torch.Tensor,
    settings: LossSettings,
) -> torch.Tensor:
    """c(y) = ∂ℓ_{k(y)}/∂s(y) per row [N] (fp64; 0 for rows no sample reads). Exact: rows are not shared."""
    s = policy.detach().double().requires_grad_(True)
    losses = sample_losses(kinds, rows, s, reference.detach().double(), num_tokens.double(), settings)
    if not losses.numel():
        return torch.zeros_like(s)
    (coef,) = torch.autograd.grad(losses.sum(), s, allow_unused=True)
    return coef if coef is not None else torch.zeros_like(s)


# ---------------------------------------------------------------- model passes


def sequence_logps_of(model: nn.Module, batch: SequenceBatch, amp: torch.dtype | None = None) -> torch.Tensor:
    """s(y) per row [N] fp32 from one forward (no fp32 [N, T, V] copy kept for backward)."""
    ctx = torch.autocast("cuda", dtype=amp) if amp is not None else nullcontext()
    with ctx:
        return policy_pass(model, batch).logps


def reference_logps(
    model: nn.Module,
    batch: SequenceBatch,
    policy_logps: torch.Tensor,
    cached: torch.Tensor | None = None,
    identity: bool | None = None,
    amp: torch.dtype | None = None,
) -> torch.Tensor:
    """s_ref per row: the cache if given, the policy's own at θ_ref, else a no-grad pass with the adapter off.

    identity: whether the adapter is currently the identity (`adapter_is_identity`); computed when None.
    """
    if cached is not None:
        return host_to_device(cached.float(), policy_logps.device)
    if identity is None:
        identity = adapter_is_identity(model)
    if identity:
        return policy_logps.detach()
    if not hasattr(model, "disable_adapter"):
        raise ValueError("reference log-probs needed: pass them, or use a PEFT model (adapter can be disabled)")
    with torch.no_grad(), model.disable_adapter():
        return sequence_logps_of(model, batch, amp).detach()


# ---------------------------------------------------------------- g_J


def gold_gradient(
    model: nn.Module,
    gold_batches: Sequence[ScoringBatch],
    beta: float,
    checkpoint: bool = False,
    total: int | None = None,
) -> dict[str, torch.Tensor]:
    """g_J = ∇_θ (1/B) Σ_b ℓ_DPO(b) over the gold pairs, trainable parameters only, fp32 on the model's device.

    Each batch's samples are preference pairs (rows = (chosen, rejected)); batches are processed one at a time
    and their gradients summed, so memory is bounded by the largest batch. Call at θ_ref (fresh adapter).
    checkpoint: recompute each decoder layer in the backward (see `checkpointed_layers`).
    total: gold pairs over ALL shards when `gold_batches` is one rank's shard (the ranks' results are then summed);
    default: the pairs in `gold_batches`.
    """
    total = sum(len(b.sample_ids) for b in gold_batches) if total is None else total
    if total == 0:
        raise ValueError("the gold batch is empty: cannot compute g_J")
    params = dict(trainable_parameters(model))
    if not params:
        raise ValueError("model has no trainable parameters")
    device = next(iter(params.values())).device
    grads = {name: torch.zeros(p.shape, dtype=torch.float32, device=device) for name, p in params.items()}
    identity, amp = adapter_is_identity(model), autocast_dtype(model)
    with eval_mode(model), checkpointed_layers(model, checkpoint):
        for gb in gold_batches:
            if any(len(r) != 2 for r in gb.rows):
                raise ValueError("gold samples must be (chosen, rejected) row pairs")
            batch = gb.batch.to(device)
            policy = sequence_logps_of(model, batch, amp)
            ref = reference_logps(model, batch, policy, gb.reference_logps, identity, amp)
            pos = host_to_device(torch.tensor([r[0] for r in gb.rows]), device)
            neg = host_to_device(torch.tensor([r[1] for r in gb.rows]), device)
            loss = dpo_loss(policy[pos], policy[neg], ref[pos], ref[neg], beta).sum() / total
            for (name, _), g in zip(params.items(), torch.autograd.grad(loss, list(params.values())), strict=True):
                grads[name] += g.float()
    return grads


# ---------------------------------------------------------------- scoring


@dataclass
class BatchScores:
    """Everything one scoring pass produced (per row and per sample), on CPU."""

    samples: list[ScoredSample]
    directional: torch.Tensor  # d(y) per row [N]
    policy_logps: torch.Tensor  # [N]
    reference_logps: torch.Tensor  # [N]


def directional_pass(
    model: nn.Module, ghost: GhostDot, sb: ScoringBatch, identity: bool, amp: torch.dtype | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward + one backward: (d(y), s_θ(y), s_ref(y), response lengths), all [N] on the model's device.

    No host sync here, so the caller can queue many batches before reading any result. Model in eval mode.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    batch = sb.batch.to(params[0].device)
    with ghost.capture(batch.input_ids.shape[0], params[0].device) as d:
        policy = sequence_logps_of(model, batch, amp)
        torch.autograd.grad(policy.sum(), params, allow_unused=True)
    policy = policy.detach()
    ref = reference_logps(model, batch, policy, sb.reference_logps, identity, amp)
    return d, policy, ref, batch.num_response_tokens


def combine(
    sb: ScoringBatch,
    d: torch.Tensor,
    policy: torch.Tensor,
    ref: torch.Tensor,
    num_tokens: torch.Tensor,
    settings: LossSettings,
) -> BatchScores:
    """w_k = Σ_{y∈k} c_k(y) d(y) on CPU (one device-to-host copy per tensor, no per-sample syncs)."""
    d, policy, ref, num_tokens = (t.detach().cpu() for t in (d, policy, ref, num_tokens))
    coef = sequence_coefficients(sb.kinds, sb.rows, policy, ref, num_tokens, settings)
    contrib = (coef * d.double()).tolist()
    pol, rf = policy.tolist(), ref.tolist()
    samples = [
        ScoredSample(
            sid, kind, math.fsum(contrib[r] for r in rows), tuple(pol[r] for r in rows), tuple(rf[r] for r in rows)
        )
        for sid, kind, rows in zip(sb.sample_ids, sb.kinds, sb.rows, strict=True)
    ]
    return BatchScores(samples, d, policy, ref)


def score_batches(
    model: nn.Module,
    batches: Iterable[ScoringBatch],
    direction: Mapping[str, torch.Tensor],
    settings: LossSettings,
    checkpoint: bool = False,
    progress: Callable[[int], None] | None = None,
) -> list[ScoredSample]:
    """Raw scores w_k = ⟨direction, ∇ℓ_k⟩ for every sample of every batch (dropout off during the passes).

    checkpoint: recompute each decoder layer in the backward (less activation memory, one extra forward).
    progress: called with the number of batches queued so far (no device sync); it may raise to stop the pass.
    """
    ghost = GhostDot(model, direction)
    identity, amp = adapter_is_identity(model), autocast_dtype(model)
    pending = []
    with eval_mode(model), checkpointed_layers(model, checkpoint):
        for sb in batches:
            pending.append((sb, *directional_pass(model, ghost, sb, identity, amp)))
            if progress is not None:
                progress(len(pending))
    out: list[ScoredSample] = []
    for sb, d, policy, ref, n_tok in pending:
        out.extend(combine(sb, d, policy, ref, n_tok, settings).samples)
    return out
