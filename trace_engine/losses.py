"""The hybrid objective (design.md §5) as small pure functions over per-sequence log-probs.

Every loss returns one value per example ([N]); impact weights multiply these before the reduction, which is the
caller's job. Notation: s(y) = summed response log-prob, r(y) = s_θ(y) - s_ref(y), Δ = r(y+) - r(y-).
`hybrid_loss` picks each example's loss by its kind: training calls it, and scoring takes its gradient in s at
θ_ref, so the two never disagree on a loss. Imports only torch and the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------- preference losses


def margin(policy_pos: torch.Tensor, policy_neg: torch.Tensor, ref_pos: torch.Tensor, ref_neg: torch.Tensor):
    """Δ = (s_θ(y+) - s_ref(y+)) - (s_θ(y-) - s_ref(y-)).  All [N] -> [N]."""
    return (policy_pos - ref_pos) - (policy_neg - ref_neg)


def dpo_loss(
    policy_pos: torch.Tensor, policy_neg: torch.Tensor, ref_pos: torch.Tensor, ref_neg: torch.Tensor, beta: float
) -> torch.Tensor:
    """DPO (Rafailov et al. 2023, "Direct Preference Optimization"): -log σ(β Δ).  [N]"""
    return -F.logsigmoid(beta * margin(policy_pos, policy_neg, ref_pos, ref_neg))


def ipo_loss(
    policy_pos: torch.Tensor, policy_neg: torch.Tensor, ref_pos: torch.Tensor, ref_neg: torch.Tensor, beta: float
) -> torch.Tensor:
    """IPO (Azar et al. 2024, "A General Theoretical Paradigm to Understand Learning from Human Preferences"):
    (Δ - 1/(2β))².  Pass length-normalised log-probs (`length_normalise`), as the IPO authors intend.  [N]"""
    return (margin(policy_pos, policy_neg, ref_pos, ref_neg) - 1.0 / (2.0 * beta)) ** 2


def rdpo_loss(
    policy_pos: torch.Tensor,
    policy_neg: torch.Tensor,
    ref_pos: torch.Tensor,
    ref_neg: torch.Tensor,
    beta: float,
    eps: float,
) -> torch.Tensor:
    """Robust DPO (Chowdhury et al. 2024, "Provably Robust DPO"): ((1-ε) ℓ(βΔ) - ε ℓ(-βΔ)) / (1-2ε), ℓ(z) = -log σ(z).

    ε is the assumed label-flip rate; ε = 0 is plain DPO (the published baseline ran exactly that by mistake).
    """
    if not 0.0 <= eps < 0.5:
        raise ValueError(f"rDPO needs 0 <= eps < 0.5, got {eps}")
    z = beta * margin(policy_pos, policy_neg, ref_pos, ref_neg)
    return ((1.0 - eps) * -F.logsigmoid(z) - eps * -F.logsigmoid(-z)) / (1.0 - 2.0 * eps)


def length_normalise(logps: torch.Tensor, num_tokens: torch.Tensor) -> torch.Tensor:
    """Mean log-prob per response token (for IPO): s(y) / |y|.  [N], [N] -> [N]; rows with no tokens keep s."""
    return logps / num_tokens.clamp(min=1).to(logps.dtype)


def preference_loss(
    name: str,
    policy_pos: torch.Tensor,
    policy_neg: torch.Tensor,
    ref_pos: torch.Tensor,
    ref_neg: torch.Tensor,
    n_pos: torch.Tensor,
    n_neg: torch.Tensor,
    beta: float,
    rdpo_eps: float = 0.0,
) -> torch.Tensor:
    """ℓ_pref by name: "dpo", "rdpo" (label noise ε), or "ipo" on length-normalised log-probs.  [N]

    An unknown name is a ValueError (never a silent DPO stand-in).
    """
    if name == "ipo":
        return ipo_loss(
            length_normalise(policy_pos, n_pos),
            length_normalise(policy_neg, n_neg),
            length_normalise(ref_pos, n_pos),
            length_normalise(ref_neg, n_neg),
            beta,
        )
    if name == "rdpo":
        return rdpo_loss(policy_pos, policy_neg, ref_pos, ref_neg, beta, rdpo_eps)
    if name == "dpo":
        return dpo_loss(policy_pos, policy_neg, ref_pos, ref_neg, beta)
    raise ValueError(f"unknown preference loss {name!r}; known: dpo, ipo, rdpo (config.PREF_LOSSES)")


# ---------------------------------------------------------------- suppression (NPO)


def npo_loss(policy: torch.Tensor, ref: torch.Tensor, beta: float, two_over_beta: bool = False) -> torch.Tensor:
    """NPO (Zhang et al. 2024, "Negative Preference Optimization"): -log σ(-β r(y)) for one response per row; times
    2/β when `two_over_beta` (the NPO paper's scale).  [N]

    The published TRACE code does not use the 2/β factor; it is a setting here.
    """
    loss = -F.logsigmoid(-beta * (policy - ref))
    return loss * (2.0 / beta) if two_over_beta else loss


def dual_npo_loss(
    policy_w: torch.Tensor,
    policy_l: torch.Tensor,
    ref_w: torch.Tensor,
    ref_l: torch.Tensor,
    beta: float,
    two_over_beta: bool = False,
) -> torch.Tensor:
    """PUNISH pairs: both responses violate, so each is pushed down: npo(y_w) + npo(y_l).  [N]"""
    return npo_loss(policy_w, ref_w, beta, two_over_beta) + npo_loss(policy_l, ref_l, beta, two_over_beta)


# ---------------------------------------------------------------- the per-example hybrid loss


class LossParams(Protocol):
    """What `hybrid_loss` reads (`config.LossSettings`; declared here so this file imports only torch)."""

    beta: float
    preference_loss: str
    npo_two_over_beta: bool
    rdpo_eps: float | None
    alpha_kl: float


@dataclass(frozen=True)
class KindMasks:
    """Which loss each example gets (`variants.LossKind`), as bool masks [N]; exactly one is True per example."""

    pref: torch.Tensor  # ℓ_pref(y+, y-)
    dual_npo: torch.Tensor  # npo(y+) + npo(y-): both responses violate
    npo_dispreferred: torch.Tensor  # npo(y-) only
    kl: torch.Tensor  # α_KL · KL anchor (the caller computes the token-level KL)


@dataclass(frozen=True)
class HybridLoss:
    """per_example: ℓ_i, the loss each example gets, before its weight [N]; the others are every example's value
    of each component [N] (read them where the example's mask is set: for metrics)."""

    per_example: torch.Tensor
    pref: torch.Tensor
    dual_npo: torch.Tensor
    npo_dispreferred: torch.Tensor


def hybrid_loss(
    masks: KindMasks,
    policy_pos: torch.Tensor,
    policy_neg: torch.Tensor,
    ref_pos: torch.Tensor,
    ref_neg: torch.Tensor,
    n_pos: torch.Tensor,
    n_neg: torch.Tensor,
    settings: LossParams,
    kl: torch.Tensor | None = None,
) -> HybridLoss:
    """TRACE's objective per example (design.md §5): ℓ_pref on INVERT, dual NPO on PUNISH, α_KL · KL on RETAIN.

    ℓ_i = ℓ_pref(y+, y-) | npo(y+) + npo(y-) | npo(y-) | α_KL · KL_i, by the example's kind; all inputs [N]
    (n_*: response token counts, for IPO; kl: per-example token-mean KL from `logprobs.token_kl_sums`, None = no
    KL example).
    """
    b, two = settings.beta, settings.npo_two_over_beta
    pref = preference_loss(settings.preference_loss, policy_pos, policy_neg, ref_pos, ref_neg, n_pos, n_neg, b,
                           settings.rdpo_eps or 0.0)
    npo_neg = npo_loss(policy_neg, ref_neg, b, two)
    dual = dual_npo_loss(policy_pos, policy_neg, ref_pos, ref_neg, b, two)
    zero = torch.zeros_like(pref)
    per_example = torch.where(masks.pref, pref, zero) + torch.where(masks.dual_npo, dual, zero) + torch.where(
        masks.npo_dispreferred, npo_neg, zero
    )
    if kl is not None:
        per_example = per_example + torch.where(masks.kl, settings.alpha_kl * kl, zero)
    return HybridLoss(per_example, pref, dual, npo_neg)


# ---------------------------------------------------------------- metrics helpers


def rewards(policy: torch.Tensor, ref: torch.Tensor, beta: float) -> torch.Tensor:
    """Implicit reward β r(y), detached (for logging only).  [N]"""
    return (beta * (policy - ref)).detach()


def preference_stats(
    policy_pos: torch.Tensor, policy_neg: torch.Tensor, ref_pos: torch.Tensor, ref_neg: torch.Tensor, beta: float
) -> dict[str, torch.Tensor]:
    """Per-example reward_chosen, reward_rejected, margin (β Δ) and accuracy (margin > 0), all detached [N]."""
    chosen, rejected = rewards(policy_pos, ref_pos, beta), rewards(policy_neg, ref_neg, beta)
    m = chosen - rejected
    return {"reward_chosen": chosen, "reward_rejected": rejected, "margin": m, "accuracy": (m > 0).float()}
