from __future__ import annotations

from trace_engine.config import TrainConfig
from trace_engine.schedule import count_steps, examples_reached


def test_count_steps_groups_micro_batches_and_caps_at_max_steps() -> None:
    assert count_steps(10, TrainConfig(batch_size=4, grad_accum=2, epochs=3)) == 6  # 3 micro-batches -> 2 steps
    assert count_steps(10, TrainConfig(batch_size=4, grad_accum=2, epochs=3, max_steps=4)) == 4
    assert count_steps(1, TrainConfig(batch_size=4)) == 1


def test_a_run_shorter_than_an_epoch_reaches_only_its_batches() -> None:
    cfg = TrainConfig(batch_size=2, seed=3)
    reached = examples_reached(10, None, cfg, count_steps(10, TrainConfig(batch_size=2, max_steps=2)))
    assert len(reached) == 4 and reached == sorted(reached)
