"""The synthetic noise bench's settings: every key it documents reaches the weight shaping; a typo is refused."""

from __future__ import annotations

import argparse

import pytest


def test_every_shaping_key_reaches_weight_shaping(quality_noise) -> None:
    shaping = quality_noise.weight_shaping({"cap": 2, "uniform_mix": 0.5, "cap_per_kind": True, "gate": True,
                                            "check_anchors": True})
    assert (shaping.cap, shaping.uniform_mix, shaping.cap_per_kind, shaping.gate, shaping.check_anchors) == (
        2, 0.5, True, True, True)
    default = quality_noise.weight_shaping({})
    assert (default.cap, default.gate, default.check_anchors) == (None, False, False)


@pytest.mark.parametrize("text, message", [('{"cpa": 2}', "unknown key(s) cpa"), ("cap=2", "is not JSON"),
                                           ("[2]", "not a JSON object")])
def test_a_bad_setting_is_refused_before_anything_runs(quality_noise, capsys, text, message) -> None:
    with pytest.raises(SystemExit) as exc:
        quality_noise.parse_setting(text, argparse.ArgumentParser(prog="quality_noise.py"))
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_a_good_setting_parses(quality_noise) -> None:
    parser = argparse.ArgumentParser()
    assert quality_noise.parse_setting('{"cap": 2, "check_anchors": true}', parser) == {"cap": 2, "check_anchors": True}
