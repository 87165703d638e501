from __future__ import annotations

import math

import pytest
import torch

from trace_engine.config import LossSettings
from trace_engine.losses import (
    KindMasks,
    dpo_loss,
    dual_npo_loss,
    hybrid_loss,
    ipo_loss,
    length_normalise,
    margin,
    npo_loss,
    preference_loss,
    preference_stats,
    rdpo_loss,
)


def t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float64)


def softplus(z: float) -> float:  # -log σ(-z) = log(1 + e^z)
    return math.log1p(math.exp(z))


# Row 0: r(y+) = -2 - (-2.5) = 0.5, r(y-) = -3 - (-2.5) = -0.5, so Δ = 1.  Row 1: Δ = 0 (policy == ref).
POS, NEG, REF_POS, REF_NEG = t(-2.0, -1.0), t(-3.0, -4.0), t(-2.5, -1.0), t(-2.5, -4.0)


def test_margin_by_hand():
    assert margin(POS, NEG, REF_POS, REF_NEG).tolist() == [1.0, 0.0]


def test_dpo_by_hand():
    loss = dpo_loss(POS, NEG, REF_POS, REF_NEG, beta=0.5)
    # -log σ(0.5 * 1) = log(1 + e^-0.5); at Δ = 0: log 2
    assert loss.tolist() == pytest.approx([softplus(-0.5), math.log(2.0)])


def test_ipo_by_hand_with_length_normalisation():
    # β = 0.25 -> target margin 1/(2β) = 2.  Row 0: Δ = 1 -> (1 - 2)² = 1; row 1: Δ = 0 -> 4.
    assert ipo_loss(POS, NEG, REF_POS, REF_NEG, beta=0.25).tolist() == pytest.approx([1.0, 4.0])
    # Length-normalised: s(y+) = -6 over 3 tokens -> -2; s(y-) = -2 over 4 tokens -> -0.5; refs 0.
    pos, neg = length_normalise(t(-6.0), t(3.0)), length_normalise(t(-2.0), t(4.0))
    assert (pos.item(), neg.item()) == (-2.0, -0.5)
    # Δ = -2 - (-0.5) = -1.5 -> (-1.5 - 2)² = 12.25
    assert ipo_loss(pos, neg, t(0.0), t(0.0), beta=0.25).item() == pytest.approx(12.25)
    assert length_normalise(t(5.0), t(0.0)).item() == 5.0  # no division by zero


def test_rdpo_by_hand_and_eps_zero_is_dpo():
    eps, z = 0.2, 0.5  # z = β Δ for row 0
    expected = ((1 - eps) * softplus(-z) - eps * softplus(z)) / (1 - 2 * eps)
    loss = rdpo_loss(POS, NEG, REF_POS, REF_NEG, beta=0.5, eps=eps)
    assert loss[0].item() == pytest.approx(expected)
    # at Δ = 0: ((1-ε) log 2 - ε log 2) / (1 - 2ε) = log 2
    assert loss[1].item() == pytest.approx(math.log(2.0))
    assert torch.allclose(rdpo_loss(POS, NEG, REF_POS, REF_NEG, 0.5, 0.0), dpo_loss(POS, NEG, REF_POS, REF_NEG, 0.5))
    with pytest.raises(ValueError, match="eps < 0.5"):
        rdpo_loss(POS, NEG, REF_POS, REF_NEG, 0.5, 0.5)


def test_npo_by_hand_with_and_without_scale():
    # r = -4 - (-3) = -1, β = 0.5: -log σ(-β r) = -log σ(0.5) = log(1 + e^-0.5)
    plain = npo_loss(t(-4.0), t(-3.0), beta=0.5)
    assert plain.item() == pytest.approx(softplus(-0.5))
    scaled = npo_loss(t(-4.0), t(-3.0), beta=0.5, two_over_beta=True)
    assert scaled.item() == pytest.approx(4.0 * softplus(-0.5))  # 2/β = 4
    # dual: y_w has r = -1, y_l has r = +2 -> log(1+e^-0.5) + log(1+e^1)
    dual = dual_npo_loss(t(-4.0), t(0.0), t(-3.0), t(-2.0), beta=0.5)
    assert dual.item() == pytest.approx(softplus(-0.5) + softplus(1.0))


def test_npo_gradient_at_reference_is_beta_over_two():
    policy = t(-3.0).requires_grad_()
    npo_loss(policy, t(-3.0), beta=0.3).sum().backward()
    assert policy.grad.item() == pytest.approx(0.15)  # β σ(0) = β/2, as design §4 uses


def test_preference_stats_by_hand():
    stats = preference_stats(POS, NEG, REF_POS, REF_NEG, beta=0.5)
    assert stats["reward_chosen"].tolist() == [0.25, 0.0]
    assert stats["reward_rejected"].tolist() == [-0.25, 0.0]
    assert stats["margin"].tolist() == [0.5, 0.0]
    assert stats["accuracy"].tolist() == [1.0, 0.0]


# ---------------------------------------------------------------- each loss kind of the hybrid objective, by hand

# Four examples, one of each kind: PREF, DUAL_NPO, NPO_DISPREFERRED, KL.  All at β = 0.5.
# y+: s_θ = -6 over 3 tokens, s_ref = -6;  y-: s_θ = -2 over 4 tokens, s_ref = -3  (r(y+) = 0, r(y-) = 1).
KIND_MASKS = KindMasks(*(torch.eye(4, dtype=torch.bool)[i] for i in range(4)))
H_POS, H_NEG, H_REF_POS, H_REF_NEG = t(*[-6.0] * 4), t(*[-2.0] * 4), t(*[-6.0] * 4), t(*[-3.0] * 4)
H_N_POS, H_N_NEG, H_KL = t(*[3.0] * 4), t(*[4.0] * 4), t(0.0, 0.0, 0.0, 0.8)


def hybrid(settings: LossSettings) -> list[float]:
    return hybrid_loss(KIND_MASKS, H_POS, H_NEG, H_REF_POS, H_REF_NEG, H_N_POS, H_N_NEG, settings, H_KL).per_example.tolist()


def test_hybrid_loss_gives_each_kind_its_loss_by_hand():
    # DPO: Δ = 0 - 1 = -1 -> -log σ(-0.5) = log(1 + e^0.5).  Dual NPO: npo(r=0) + npo(r=1) = log 2 + log(1 + e^0.5).
    # NPO on y- only: log(1 + e^0.5).  KL: α_KL · KL = 0.25 · 0.8 = 0.2.
    got = hybrid(LossSettings(beta=0.5, alpha_kl=0.25))
    assert got == pytest.approx([softplus(0.5), math.log(2.0) + softplus(0.5), softplus(0.5), 0.2])
    # the NPO paper's 2/β scale multiplies both NPO kinds (2/β = 4), nothing else
    scaled = hybrid(LossSettings(beta=0.5, alpha_kl=0.25, npo_two_over_beta=True))
    assert scaled == pytest.approx([softplus(0.5), 4 * (math.log(2.0) + softplus(0.5)), 4 * softplus(0.5), 0.2])


def test_hybrid_ipo_is_length_normalised_by_hand():
    # per token: y+ -6/3 - (-6/3) = 0, y- -2/4 - (-3/4) = 0.25, so Δ = -0.25; target 1/(2β) = 1 -> (-1.25)² = 1.5625
    # (without the normalisation Δ = -1 and the loss would be 4)
    got = hybrid(LossSettings(beta=0.5, preference_loss="ipo"))
    assert got[0] == pytest.approx(1.5625)
    direct = preference_loss("ipo", H_POS[:1], H_NEG[:1], H_REF_POS[:1], H_REF_NEG[:1], H_N_POS[:1], H_N_NEG[:1], 0.5)
    assert direct.item() == pytest.approx(1.5625)


def test_hybrid_rdpo_by_hand():
    eps, z = 0.2, -0.5  # z = β Δ
    expected = ((1 - eps) * softplus(-z) - eps * softplus(z)) / (1 - 2 * eps)
    assert hybrid(LossSettings(beta=0.5, preference_loss="rdpo", rdpo_eps=eps))[0] == pytest.approx(expected)


def test_an_unknown_preference_loss_is_refused_not_replaced_by_dpo():
    with pytest.raises(ValueError, match="unknown preference loss 'kto'"):
        preference_loss("kto", POS, NEG, REF_POS, REF_NEG, t(1.0, 1.0), t(1.0, 1.0), 0.5)
    with pytest.raises(ValueError, match="preference_loss must be one of"):
        LossSettings(preference_loss="kto")


def test_train_config_loss_is_the_one_the_variant_trains_with():
    from trace_engine.config import TrainConfig

    assert TrainConfig(variant="ipo", pref_loss="dpo").loss.preference_loss == "ipo"  # the baseline fixes its loss
    cfg = TrainConfig(variant="no_impact", pref_loss="rdpo", rdpo_eps=0.2, beta=0.4, alpha_kl=0.3)
    assert cfg.loss == LossSettings(beta=0.4, preference_loss="rdpo", rdpo_eps=0.2, alpha_kl=0.3)


def test_every_configurable_preference_loss_has_a_function():
    from trace_engine.config import PREF_LOSSES

    for name in PREF_LOSSES:
        preference_loss(name, POS, NEG, REF_POS, REF_NEG, t(1.0, 1.0), t(1.0, 1.0), 0.5, rdpo_eps=0.1)
