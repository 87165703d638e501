"""Offline-run pieces without a model: triage with the synthetic oracle, the split, triage noise, the summary line.
(The end-to-end run is `tests/trace_engine/cli/test_demo_cmd.py`.)"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from trace_engine.data.pairs import prompt_key
from trace_engine.synthetic.evaluation import eval_sets, format_summary, summary_json
from trace_engine.synthetic.offline_run import PipelineConfig, add_triage_noise, split_rows, triage_pairs
from trace_engine.synthetic.oracle_judge import SyntheticOracleJudge
from trace_engine.synthetic.world import make_world

WORLD = make_world(0)


@pytest.fixture(scope="module")
def triaged(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    return triage_pairs(WORLD.train_pairs(200), WORLD, tmp_path_factory.mktemp("triage"))


def test_triage_matches_the_worlds_ground_truth_and_punish_gets_a_compliant_oracle_answer(triaged) -> None:
    assert all(r["category"] == r["expected_category"] for r in triaged)
    assert set(Counter(r["category"] for r in triaged)) == {"INVERT", "PUNISH", "RETAIN"}
    punish = [r for r in triaged if r["category"] == "PUNISH"]
    rules = WORLD.rules("new")
    assert punish and all(not rules.evaluate(r["prompt"], r["oracle_response"]).violating for r in punish)
    assert not any("oracle_response" in r for r in triaged if r["category"] != "PUNISH")


def test_oracle_judge_keeps_verdicts_of_the_rules_judge_and_names_itself() -> None:
    judge = SyntheticOracleJudge(WORLD)
    prompt = WORLD.train_pairs(1)[0].prompt
    outcome = asyncio.run(judge.rewrite(WORLD.policy("new"), prompt, "whatever"))
    assert outcome.text and not WORLD.rules("new").evaluate(prompt, outcome.text).violating
    assert judge.judge_id.startswith("rules:") and judge.judge_id.endswith("+synthetic-oracle")


def test_split_is_prompt_disjoint_stratified_and_covers_every_row(triaged) -> None:
    split = split_rows(triaged, 120, 30, seed=3)
    assert (len(split.train), len(split.val), len(split.test)) == (120, 30, 50)
    keys = [{prompt_key(r["prompt"]) for r in part} for part in (split.train, split.val, split.test)]
    assert not keys[0] & keys[1] and not keys[0] & keys[2] and not keys[1] & keys[2]
    share = Counter(r["category"] for r in split.train)
    total = Counter(r["category"] for r in triaged)
    assert all(abs(share[c] / 120 - total[c] / len(triaged)) < 0.02 for c in total)
    assert split.manifest["checks"]["train_test_prompt_overlap"] == 0
    assert split_rows(triaged, 120, 30, seed=3).train == split.train  # seeded


def test_triage_noise_is_nested_and_counted(triaged) -> None:
    clean, stats0 = add_triage_noise(triaged, 0.0, seed=1)
    assert clean == triaged and stats0["corrupted"] == 0
    ten, stats10 = add_triage_noise(triaged, 0.1, seed=1)
    twenty, stats20 = add_triage_noise(triaged, 0.2, seed=1)
    assert stats10["corrupted"] == 20 and stats20["corrupted"] == 40
    noisy10 = {r["id"] for r in ten if "noise" in r}
    noisy20 = {r["id"] for r in twenty if "noise" in r}
    assert len(noisy10) == 20 and noisy10 < noisy20
    flipped = [r for r in twenty if r.get("noise", {}).get("kind") == "category_flip"]
    assert flipped and all(r["category"] != r["noise"]["original_category"] for r in flipped)
    assert not any("oracle_response" in r for r in twenty if r["category"] != "PUNISH")


def _metric(value: float, low: float, high: float) -> dict:
    return {"value": value, "ci_low": low, "ci_high": high, "n": 10, "k": 5}


def test_summary_line_has_points_cis_and_categories() -> None:
    def result(v: float) -> dict:
        m = _metric(v, v / 2, (1 + v) / 2)
        return {"tpa": m, "retention": m, "asr": m, "over_refusal": m, "tpa_ood": m,
                "tpa_by_category": {"INVERT": m, "RETAIN": m}}

    s = summary_json(result(0.3), result(0.8), wall_s=12.34, variant="trace", eval_on="test")
    assert (s["tpa_before"], s["tpa_after"], s["tpa_after_ci"]) == (0.3, 0.8, [0.4, 0.9])
    assert s["tpa_by_category"]["INVERT"]["before_ci"] == [0.15, 0.65] and s["wall_s"] == 12.3
    table = format_summary(s)
    assert "TPA INVERT" in table and "80.0% [40.0, 90.0]" in table


def test_asr_on_the_synthetic_model_is_said_to_be_unmeasurable_not_printed_as_a_regression() -> None:
    def result(asr: float) -> dict:
        m = _metric(0.5, 0.4, 0.6)
        return {"tpa": m, "retention": m, "asr": _metric(asr, asr - 0.1, asr), "over_refusal": m, "tpa_ood": m,
                "tpa_by_category": {"INVERT": m}}

    s = summary_json(result(0.8), result(0.975), wall_s=1.0, variant="trace", eval_on="test")
    assert s["asr_after"] == 0.975 and "asr" in s["not_measurable"]  # the JSON keeps the numbers and says why
    table = format_summary(s)
    asr_line = next(line for line in table.splitlines() if line.startswith("ASR"))
    assert "not measurable" in asr_line and "97.5" not in table and "80.0%" not in asr_line
    assert "(*) asr: not measurable on the tiny synthetic model" in table
    measured = format_summary(summary_json(result(0.8), result(0.2), wall_s=1.0, variant="trace", eval_on="test",
                                           not_measurable={}))
    assert "20.0% [10.0, 20.0]" in measured and "not measurable" not in measured


def test_config_rejects_bad_settings_and_val_eval_uses_val_prompts(triaged, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="normalise"):
        PipelineConfig(out_dir=tmp_path, normalise="max").validate()
    with pytest.raises(ValueError, match="variant"):
        PipelineConfig(out_dir=tmp_path, variant="nope").validate()
    split = split_rows(triaged, 120, 30, seed=0)
    sets = eval_sets(WORLD, PipelineConfig(out_dir=tmp_path, n_test=30, n_asr=2, n_over_refusal=3), split.test)
    assert {p.prompt for p in sets.tpa} == {r["prompt"] for r in split.test}
    assert len(sets.tpa) == len({prompt_key(r["prompt"]) for r in split.test})  # one per distinct prompt
    assert {p.category for p in sets.tpa} <= {"INVERT", "PUNISH", "RETAIN"}
    assert len(sets.ood) == 30 and not {p.prompt for p in sets.ood} & {r["prompt"] for r in triaged}
