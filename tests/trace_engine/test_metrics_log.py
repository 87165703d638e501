from __future__ import annotations

import pytest

from trace_engine import metrics_log
from trace_engine.checkpoint import Position


def test_metrics_log_drops_a_torn_line_and_truncates_to_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with open(path, "w", encoding="utf-8") as log:
        for step in (1, 2, 3):
            metrics_log.append_metrics(log, {"step": step, "loss": 0.5})
        log.write('{"step": 4, "lo')  # the crash cut this line
    assert [row["step"] for row in metrics_log.logged_steps(path)] == [1, 2, 3]
    metrics_log.truncate_metrics(path, up_to_step=2)
    assert metrics_log.last_metrics(path) == {"step": 2, "loss": 0.5}
    assert metrics_log.last_metrics(tmp_path / "missing.jsonl") == {}


def test_step_metrics_are_means_over_the_examples_that_have_each_part():
    sums = {"loss_sum": 3.0, "pref_loss_sum": 1.0, "npo_loss_sum": 0.0, "kl_sum": 0.5, "reward_chosen_sum": 0.4,
            "reward_rejected_sum": -0.2, "accuracy_sum": 2.0, "npo_reward_sum": 0.0, "npo_responses": 0.0,
            "n_pref": 2, "n_npo": 0, "n_kl": 1, "examples": 3, "lr": 1e-4, "grad_norm": 0.7, "tokens": 60.0}
    line = metrics_log.step_metrics(sums, Position(step=4, epoch=1, batch_in_epoch=2), seconds=2.0)
    assert line["step"] == 5 and line["epoch"] == 1
    assert line["loss"] == pytest.approx(1.0) and line["loss_pref"] == pytest.approx(0.5)
    assert line["margin"] == pytest.approx(0.3) and line["accuracy"] == pytest.approx(1.0)
    assert line["loss_npo"] is None and line["npo_reward"] is None  # no example had an NPO part
    assert line["kl"] == pytest.approx(0.5) and line["tokens_per_s"] == pytest.approx(30.0)


def test_position_after_the_last_batch_of_an_epoch_starts_the_next():
    assert Position(3, 0, 2).after_step(4, 6) == Position(4, 0, 4)
    assert Position(3, 0, 4).after_step(6, 6) == Position(4, 1, 0)
