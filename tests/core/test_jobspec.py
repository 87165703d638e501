"""The API's training defaults are the engine's: a knob a request leaves out trains exactly as `realign train`
would, and the choices the API offers are the ones the engine accepts. (That importing the job spec loads no
torch: tests/api/test_imports.py.)"""

from __future__ import annotations

from typing import Any, get_args

import pytest
from pydantic import ValidationError

from core.jobspec import Hyperparameters
from trace_engine.config import (
    DEFAULT_CHECK_ANCHORS,
    DEFAULT_UNIFORM_MIX,
    DEFAULT_WEIGHT_CAP,
    KL_RESPONSES,
    PREF_LOSSES,
    TrainConfig,
)
from trace_engine.gold import GOLD_SOURCES

NOT_TRAINING = {"normalise", "gold_size", "weight_cap", "uniform_mix", "gold_from", "gate_weights", "check_anchors"}  # the score stage's knobs
LORA = {"lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout"}  # TrainConfig.lora's fields


def engine_default(name: str, engine: TrainConfig) -> Any:
    """TrainConfig's default for a knob; AttributeError for a knob the engine does not have."""
    return getattr(engine.lora, LORA[name]) if name in LORA else getattr(engine, name)


def test_every_training_default_is_trainconfigs() -> None:
    engine, ours = TrainConfig(), Hyperparameters().model_dump()
    training = sorted(set(ours) - NOT_TRAINING)
    assert {name: ours[name] for name in training} == {name: engine_default(name, engine) for name in training}


def test_the_offered_choices_are_the_engines() -> None:
    fields = Hyperparameters.model_fields
    assert set(get_args(fields["pref_loss"].annotation)) == set(PREF_LOSSES)
    assert set(get_args(fields["kl_responses"].annotation)) == set(KL_RESPONSES)


def test_the_weight_cap_default_is_the_engines_and_null_turns_it_off() -> None:
    assert Hyperparameters().weight_cap == DEFAULT_WEIGHT_CAP
    assert Hyperparameters(weight_cap=None).weight_cap is None
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        Hyperparameters(weight_cap=0.5)  # below the uniform weight: every row would be cut


def test_the_weight_shaping_and_gold_source_are_the_engines() -> None:
    assert Hyperparameters().uniform_mix == DEFAULT_UNIFORM_MIX and Hyperparameters().gold_from == "all"
    assert set(get_args(Hyperparameters.model_fields["gold_from"].annotation)) == set(GOLD_SOURCES)
    assert Hyperparameters().gate_weights is False and Hyperparameters().check_anchors is DEFAULT_CHECK_ANCHORS is True
    for bad in ({"uniform_mix": 1.5}, {"uniform_mix": -0.1}, {"gold_from": "mine"}, {"gate_weights": "maybe"},
                {"check_anchors": [1]}):
        with pytest.raises(ValidationError):
            Hyperparameters(**bad)
