"""One rule, everywhere (issue 14): a variant weighted by impact scores trains with a preference loss that impact
scoring takes gradients of (dpo or ipo). `variant: trace` with `pref_loss: rdpo` used to be refused by the CLI,
accepted by the service, scored with DPO and trained with rDPO."""

from __future__ import annotations

import pytest

from trace_engine.config import ConfigError, TrainConfig
from trace_engine.variants import SCORED_PREF_LOSSES, VARIANTS, DataError, check_pref_loss


@pytest.mark.parametrize("variant", [n for n, spec in VARIANTS.items() if spec.weights == "impact"])
def test_impact_weighted_variants_refuse_a_loss_scoring_cannot_score(variant: str) -> None:
    with pytest.raises(DataError, match="rdpo"):
        check_pref_loss(variant, "rdpo")
    with pytest.raises(ConfigError, match="rdpo"):
        TrainConfig(variant=variant, pref_loss="rdpo").validate()
    for loss in SCORED_PREF_LOSSES:
        check_pref_loss(variant, loss)
        TrainConfig(variant=variant, pref_loss=loss).validate()


def test_uniform_weight_variants_take_rdpo() -> None:
    for name in ("no_impact", "rdpo"):
        check_pref_loss(name, "rdpo")
        TrainConfig(variant=name, pref_loss="rdpo").validate()


def test_the_scored_losses_are_the_ones_scoring_accepts() -> None:
    from trace_engine.config import LossSettings

    for loss in SCORED_PREF_LOSSES:
        LossSettings(preference_loss=loss)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        LossSettings(preference_loss="rdpo")  # type: ignore[arg-type]
