from __future__ import annotations

import subprocess
import sys

import pytest

from trace_engine.config import ConfigError, LengthLimits, LoraSettings, TrainConfig


def test_importing_the_settings_does_not_import_torch() -> None:
    """The API derives its training defaults from TrainConfig and must stay torch-free."""
    code = "import sys, trace_engine.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_round_trip_and_checks() -> None:
    cfg = TrainConfig(lora=LoraSettings(r=8, target_modules=("q_proj",)), max_steps=3)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="max_prompt_len"):
        TrainConfig(max_prompt_len=64, max_len=64).validate()
    with pytest.raises(ValueError):
        LengthLimits(0, 10)
