"""The real-model bench's record helpers: per-kind TPA and the weight impact scores give corrupted rows."""

from __future__ import annotations

import pytest


def test_corrupted_weight_compares_noisy_rows_with_clean_ones(quality_real) -> None:
    rows = [{"id": "a", "impact_score": 2.0, "noise": {"kind": "pair_swap"}},
            {"id": "b", "impact_score": 1.0}, {"id": "c", "impact_score": 0.0}, {"id": "d", "impact_score": None}]
    stats = quality_real.corrupted_weight(rows)
    assert stats["n_corrupted"] == 1 and stats["n_clean"] == 2
    assert stats["mean_weight_corrupted"] == 2.0 and stats["mean_weight_clean"] == 0.5
    assert stats["row_share_corrupted"] == pytest.approx(1 / 3) and stats["weight_share_corrupted"] == pytest.approx(2 / 3)
    assert quality_real.corrupted_weight([{"impact_score": 1.0}]) is None  # no noise: nothing to compare


def test_share_by_kind_splits_retain_into_operational_and_everyday(quality_real) -> None:
    from trace_engine.realworld.world import RealWorld

    world = RealWorld(0)
    drawn = world.prompts("test", 24, "kind-probe")
    ops = [p for p in drawn if p.kind == "operational"][:2]
    day = [p for p in drawn if p.kind == "everyday"][:1]
    records = [{"prompt": ops[0].prompt, "violating": False}, {"prompt": ops[1].prompt, "violating": True},
               {"prompt": day[0].prompt, "violating": False}, {"prompt": "not drawn", "violating": None}]
    assert quality_real.share_by_kind(world, records) == {"everyday": 1.0, "operational": 0.5}


def test_a_baseline_result_survives_a_new_trace_setting_and_a_trace_result_does_not(quality_real, tmp_path) -> None:
    import json

    settings = {"lr": 3e-3, "alpha_kl": 0.1, "uniform_mix": 0.5, "normalise": "mean", "cap": 2.0, "balance_kinds": False}
    base = {"weights_sha256": "abc"}
    lines = [{"key": k, "variant": v, "settings": settings, **base}
             for k, v in (("t", "trace"), ("n", "naive_oracle_dpo"), ("u", "no_impact"))]
    lines.append({"key": "other-base", "variant": "naive_oracle_dpo", "settings": settings, "weights_sha256": "zzz"})
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert [r["key"] for r in quality_real.read_records(path, settings, base)] == ["t", "n", "u"]
    changed = {**settings, "alpha_kl": 0.3, "uniform_mix": 0.0}
    # naive_oracle_dpo has neither KL nor impact weights; no_impact has KL, so α_KL counts for it but the mix does not
    assert [r["key"] for r in quality_real.read_records(path, changed, base)] == ["n"]
    assert [r["key"] for r in quality_real.read_records(path, {**settings, "uniform_mix": 0.0}, base)] == ["n", "u"]


def test_a_setting_added_later_pools_with_records_made_before_it_at_its_old_value(quality_real, tmp_path) -> None:
    import json

    old = {"lr": 3e-3, "alpha_kl": 0.3, "uniform_mix": 0.5, "normalise": "mean", "cap": 2.0, "balance_kinds": False}
    base = {"weights_sha256": "abc"}
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps({"key": "t", "variant": "trace", "settings": old, **base}) + "\n")
    assert [r["key"] for r in quality_real.read_records(path, {**old, "gate": False, "check_anchors": False},
                                                         base)] == ["t"]
    assert quality_real.read_records(path, {**old, "gate": True, "check_anchors": False}, base) == []
    path.write_text(json.dumps({"key": "k", "variant": "no_kl", "settings": old, **base}) + "\n")
    assert [r["key"] for r in quality_real.read_records(path, {**old, "check_anchors": True}, base)] == ["k"]


def test_anchors_dropped_counts_what_the_check_removed_and_how_much_of_it_was_noise(quality_real) -> None:
    rows = [{"id": "a", "anchor_weight": 0.0, "noise": {"kind": "label_flip"}}, {"id": "b", "anchor_weight": 0.0},
            {"id": "c", "anchor_weight": 1.0}, {"id": "d", "anchor_weight": 1.0, "noise": {"kind": "pair_swap"}},
            {"id": "e", "impact_score": 1.0}]
    assert quality_real.anchors_dropped(rows) == {"checked": 4, "dropped": 2, "corrupted": 2, "dropped_corrupted": 1}
    assert quality_real.anchors_dropped([{"id": "e", "impact_score": 1.0}]) is None  # the check did not run


def test_the_documented_real_model_table_is_what_the_committed_data_renders(quality_real) -> None:
    """docs/benchmarks.md's test table must be the bench's own rendering of the committed result lines, pooled with
    the bench's default settings on the pinned base: a hand-edited cell, a line left out of the data file or a
    default changed without re-running fails here."""
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    args = quality_real.parse_args([])
    base_eval = json.loads((root / "docs/data/quality_real_test_pinned_base.json").read_text())
    records = quality_real.read_records(root / "docs/data/quality_real_test_pinned.jsonl",
                                        quality_real.run_settings(args), {"weights_sha256": "1429a73aa1437977"})
    planned = quality_real.planned_runs(args)
    table = quality_real.render(records, base_eval, len(planned))
    assert len(records) == len(planned) == 39
    assert table in (root / "docs/benchmarks.md").read_text()
