"""`scoring.score` sizes its scoring passes like a training micro-batch (issue 17: a fixed 64 rows per pass
held 8.6 GB of SmolLM2-135M activations in the service's score stage)."""

from __future__ import annotations

from pathlib import Path

import pytest

import trace_engine.impact as impact
from trace_engine.config import TrainConfig
from trace_engine.modeling import decoder_layers
from trace_engine.scoring import score as score_rows
from trace_engine.scoring import score_rows_per_batch
from trace_engine.synthetic.offline_run import triage_pairs
from trace_engine.synthetic.world import make_world
from trace_engine.tiny_models import DEFAULT_CORPUS, build_tiny_model, save_tiny, train_tokenizer

WORLD = make_world(0)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    corpus = DEFAULT_CORPUS + [p.chosen for p in WORLD.train_pairs(60)] + [p.rejected for p in WORLD.train_pairs(60)]
    tokenizer = train_tokenizer(corpus)
    return save_tiny(build_tiny_model(tokenizer), tokenizer, tmp_path_factory.mktemp("tiny-base"))


def test_rows_per_pass_are_one_training_micro_batch() -> None:
    assert score_rows_per_batch(TrainConfig(batch_size=4)) == 8
    assert score_rows_per_batch(TrainConfig(batch_size=1)) == 2  # a preference sample reads two rows


@pytest.mark.parametrize("batch_size,checkpointing", [(2, False), (3, True)])
def test_scoring_passes_take_the_training_batch_rows_and_checkpointing(
        tiny_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch_size: int,
        checkpointing: bool) -> None:
    rows = triage_pairs(WORLD.train_pairs(40), WORLD, tmp_path / "triage")
    passes: list[tuple[int, bool]] = []
    real_pass = impact.directional_pass

    def recording_pass(model, ghost, sb, identity, amp):  # the real pass, with what it was given recorded
        passes.append((sb.batch.input_ids.shape[0], decoder_layers(model)[0].__dict__.get("forward")
                       is not None))
        return real_pass(model, ghost, sb, identity, amp)

    monkeypatch.setattr(impact, "directional_pass", recording_pass)
    config = TrainConfig(batch_size=batch_size, gradient_checkpointing=checkpointing, max_prompt_len=64, max_len=128,
                         lora=TrainConfig().lora)
    scored = score_rows(tiny_base, rows, "trace", config, normalise="sum", gold_size=6, seed=0)
    assert passes and max(n for n, _ in passes) <= 2 * batch_size
    assert all(checkpointed is checkpointing for _, checkpointed in passes)
    assert sum(r["impact_score"] is not None for r in scored.rows) > 0
