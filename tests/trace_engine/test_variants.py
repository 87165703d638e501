"""VARIANTS is the one table of what a variant needs; scoring selects rows with training's own selection."""

from __future__ import annotations

from trace_engine.scoring import conflict_samples
from trace_engine.variants import (
    SCORING_VARIANTS,
    VARIANTS,
    LossKind,
    SampleKind,
    prepare_examples,
    scored_as,
)


def rows() -> list[dict]:
    return [
        {"id": "r0", "category": "RETAIN", "prompt": "p0", "chosen": "good", "rejected": "meh"},
        {"id": "i0", "category": "INVERT", "prompt": "p1", "chosen": "now good", "rejected": "now bad",
         "original_chosen": "now bad", "original_rejected": "now good"},
        {"id": "p0", "category": "PUNISH", "prompt": "p2", "chosen": "bad1", "rejected": "bad2",
         "oracle_response": "fine"},
        {"id": "e0", "category": "ERROR", "prompt": "p3", "chosen": "a", "rejected": "b"},
    ]


def test_what_each_variant_needs_is_derived_from_its_losses() -> None:
    assert {n for n, s in VARIANTS.items() if s.needs_oracle} == {"trace_oracle", "dpo_gold"}
    assert {n for n, s in VARIANTS.items() if s.needs_scores} == {"trace", "trace_oracle", "no_kl"}
    assert {n for n, s in VARIANTS.items() if not s.needs_triage} == {"no_triage", "dpo"}
    assert set(SCORING_VARIANTS) == {"trace", "trace_oracle", "no_kl", "no_triage"}
    assert scored_as("no_kl") == "trace" and scored_as("trace_oracle") == "trace_oracle"
    assert scored_as("dpo") == "dpo"  # nothing scores like it: its own


def test_scoring_reads_the_rows_and_texts_training_weights() -> None:
    for variant in ("trace", "trace_oracle", "no_kl"):
        scored = {s.sample_id: s for s in conflict_samples(rows(), variant)}
        for e in prepare_examples([{**r, "impact_score": 1.0} for r in rows()], variant).examples:
            if e.kind is LossKind.KL:
                assert e.row_id not in scored
                continue
            s = scored[e.row_id]
            assert s.kind.loss is e.kind
            assert s.responses == (e.preferred, e.dispreferred)


def test_error_rows_are_never_trained_on_even_without_triage() -> None:
    for variant in ("no_triage", "dpo"):
        data = prepare_examples(rows(), variant)
        assert "e0" not in {e.row_id for e in data.examples} and data.counts["skipped_error_rows"] == 1
    assert [s.kind for s in conflict_samples(rows(), "no_triage")] == [SampleKind.NO_TRIAGE] * 3


def test_an_anchor_weight_from_scoring_weighs_a_retain_rows_kl_and_bad_values_are_refused() -> None:
    import pytest

    from trace_engine.variants import DataError

    scored = [{**r, "impact_score": 1.0} for r in rows()]
    weight_of = {e.row_id: e.weight for e in prepare_examples([{**scored[0], "anchor_weight": 0.5}, *scored[1:]],
                                                               "trace").examples}
    assert weight_of["r0"] == 0.5
    dropped = prepare_examples([{**scored[0], "anchor_weight": 0.0}, *scored[1:]], "trace")
    assert "r0" not in {e.row_id for e in dropped.examples} and dropped.counts["skipped_zero_weight"] == 1
    uniform = prepare_examples([{**rows()[0], "anchor_weight": 0.0}, *rows()[1:]], "no_impact")
    assert "r0" in {e.row_id for e in uniform.examples}  # a uniform variant ignores scoring's fields
    for bad in (-1.0, "1", True, float("nan")):
        with pytest.raises(DataError, match="anchor_weight"):
            prepare_examples([{**scored[0], "anchor_weight": bad}, *scored[1:]], "trace")
