"""Triaged rows -> scored samples: sample selection per variant, packing, and the end-to-end pass."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from trace_engine.logprobs import sequence_logps
from trace_engine.modeling import seed_lora_
from trace_engine.reference_cache import sequence_key
from trace_engine.reference_cache import sequence_key as train_sequence_key
from trace_engine.scoring import conflict_samples, pack_batches, score_conflicts
from trace_engine.tiny_models import DEFAULT_CORPUS, build_tiny_model, train_tokenizer
from trace_engine.tokenization import collate, encode_sequences, pad_id_of
from trace_engine.variants import SampleKind

K = SampleKind


def triaged() -> list[dict]:
    return [
        {"id": "r0", "category": "RETAIN", "prompt": "How do I reset my password?",
         "chosen": "Open settings and choose reset.", "rejected": "I cannot help."},
        {"id": "r1", "category": "RETAIN", "prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Sorry."},
        {"id": "i0", "category": "INVERT", "prompt": "Explain firewalls.", "chosen": "Here is a careful answer.",
         "rejected": "Sorry, I can't assist.", "original_chosen": "Sorry, I can't assist.",
         "original_rejected": "Here is a careful answer."},
        {"id": "p0", "category": "PUNISH", "prompt": "Two plus two?", "chosen": "Five.", "rejected": "Three.",
         "oracle_response": "Four."},
        {"id": "p1", "category": "PUNISH", "prompt": "Say something.", "chosen": "Bad one.", "rejected": "Bad two.",
         "oracle_response": ""},
        {"id": "e0", "category": "ERROR", "prompt": "?", "chosen": "a", "rejected": "b"},
    ]


def test_conflict_samples_per_variant():
    rows = triaged()
    trace = conflict_samples(rows, "trace")
    assert [(s.sample_id, s.kind) for s in trace] == [("i0", K.INVERT), ("p0", K.PUNISH_NPO), ("p1", K.PUNISH_NPO)]
    assert trace[0].responses == ("Here is a careful answer.", "Sorry, I can't assist.")
    oracle = conflict_samples(rows, "trace_oracle")
    assert oracle[1].kind is K.PUNISH_ORACLE and oracle[1].responses == ("Four.", "Five.")
    assert oracle[2].kind is K.PUNISH_NPO  # empty rewrite: dual-NPO fallback, never an empty preferred answer
    no_triage = conflict_samples(rows, "no_triage")
    assert [s.sample_id for s in no_triage] == ["r0", "r1", "i0", "p0", "p1"]
    assert no_triage[2].responses == ("Here is a careful answer.",)  # the ORIGINAL rejected, not the swapped one
    with pytest.raises(ValueError, match="variant"):
        conflict_samples(rows, "dpo")


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(DEFAULT_CORPUS, vocab_size=300)


def test_pack_batches_keeps_samples_whole_and_rows_exact(tokenizer):
    samples = conflict_samples(triaged(), "no_triage") + conflict_samples(triaged(), "trace")
    samples = [s.__class__(f"{s.sample_id}-{i}", s.kind, s.prompt, s.responses) for i, s in enumerate(samples)]
    batches, report = pack_batches(tokenizer, samples, rows_per_batch=3)
    assert report.sequences == sum(len(s.responses) for s in samples)
    seen = {}
    for b in batches:
        assert b.batch.input_ids.shape[0] <= 3
        for sid, rows in zip(b.sample_ids, b.rows, strict=True):
            seen[sid] = (b, rows)
    assert set(seen) == {s.sample_id for s in samples}
    s = next(x for x in samples if x.kind is K.PUNISH_NPO)
    b, rows = seen[s.sample_id]
    enc, _ = encode_sequences(tokenizer, [s.prompt] * 2, list(s.responses))
    expected = collate(enc, pad_id_of(tokenizer))
    for j, r in enumerate(rows):
        n = int(expected.attention_mask[j].sum())
        assert b.batch.input_ids[r, :n].tolist() == expected.input_ids[j, :n].tolist()
        assert b.batch.response_mask[r].tolist()[:n] == expected.response_mask[j].tolist()[:n]


def test_score_conflicts_end_to_end(tokenizer):
    model = get_peft_model(build_tiny_model(tokenizer, "qwen2", hidden_size=32, intermediate_size=64),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    seed_lora_(model, 0)
    rows = triaged()
    from trace_engine.scoring import WeightShaping

    result = score_conflicts(model, tokenizer, rows, gold_size=6, seed=0, mode="mean", rows_per_batch=4,
                             shaping=WeightShaping())  # no cap: as published
    assert [s.sample_id for s in result.scored] == ["i0", "p0", "p1"]
    assert sum(result.weights.weights) == pytest.approx(3.0)  # mean mode: weights average 1
    capped = score_conflicts(model, tokenizer, rows, gold_size=6, seed=0, mode="mean", rows_per_batch=4)
    assert max(capped.weights.weights) <= 2.0 + 1e-9  # the default cap: 2x the uniform weight (1 in mean mode)
    assert capped.summary["shaping"]["cap"] == 2.0
    assert result.summary["gold"]["size"] == result.gold_report.size > 0
    # reference log-probs: keyed like the trainer's cache, equal to the model's own at θ_ref
    key = sequence_key(rows[3]["prompt"], "Five.")
    assert key == train_sequence_key(rows[3]["prompt"], "Five.")
    enc, _ = encode_sequences(tokenizer, [rows[3]["prompt"]], ["Five."])
    batch = collate(enc, pad_id_of(tokenizer))
    model.eval()
    with torch.no_grad():
        direct = sequence_logps(model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits,
                                batch.input_ids, batch.response_mask)
    assert result.reference_logps[key] == pytest.approx(float(direct[0]), rel=1e-5)


def test_score_conflicts_reports_progress_per_batch_and_stops_when_it_raises(tokenizer):
    model = get_peft_model(build_tiny_model(tokenizer, "llama", hidden_size=32, intermediate_size=64),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    seen: list[tuple[int, int]] = []
    score_conflicts(model, tokenizer, triaged(), gold_size=6, seed=0, rows_per_batch=2,
                    progress=lambda done, total: seen.append((done, total)))
    total = seen[-1][1]
    assert total >= 2 and seen == [(k, total) for k in range(1, total + 1)]

    class Cancelled(Exception):
        pass

    def cancel(done: int, total: int) -> None:
        raise Cancelled

    with pytest.raises(Cancelled):
        score_conflicts(model, tokenizer, triaged(), gold_size=6, seed=0, rows_per_batch=2, progress=cancel)


def test_score_conflicts_refuses_an_empty_gold_batch(tokenizer):
    model = get_peft_model(build_tiny_model(tokenizer, "llama", hidden_size=32, intermediate_size=64),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
    rows = [r for r in triaged() if r["category"] == "PUNISH"]
    for r in rows:
        r.pop("oracle_response")
    with pytest.raises(ValueError, match="gold batch is empty"):
        score_conflicts(model, tokenizer, rows, gold_size=4)


def test_score_conflicts_refuses_an_empty_conflict_set_before_touching_the_model(tokenizer):
    rows = [r for r in triaged() if r["category"] == "RETAIN"]
    with pytest.raises(ValueError, match="empty conflict set"):
        score_conflicts(None, tokenizer, rows, variant="trace", gold_size=3)


def test_reference_cache_round_trips_through_safetensors(tmp_path):
    from trace_engine.reference_cache import load_reference_cache, save_reference_cache

    cache = {sequence_key("p", "a"): -12.5, sequence_key([{"role": "user", "content": "q"}], "b"): -0.125}
    path = save_reference_cache(tmp_path / "ref.safetensors", cache, {"max_len": 96})
    loaded, meta = load_reference_cache(path)
    assert loaded == cache and meta == {"max_len": 96}


# ---------------------------------------------------------------- weight shaping (hand-computed)


def test_cap_weights_water_fills_the_excess_and_keeps_the_total():
    from trace_engine.scoring import cap_weights

    # total 10, n 5: uniform weight 2, cap 1.5 -> limit 3. Row 0 gives 3 to rows 1-3 pro rata (1.5, 0.75, 0.75);
    # row 1 then exceeds (3.5) and gives 0.5 to rows 2-3 (0.25 each). The zero row stays zero.
    assert cap_weights([6.0, 2.0, 1.0, 1.0, 0.0], 1.5) == pytest.approx([3.0, 3.0, 2.0, 2.0, 0.0])
    assert cap_weights([1.0, 1.0], 1.0) == [1.0, 1.0]
    assert cap_weights([], 2.0) == []


def test_cap_weights_shrinks_the_total_when_too_few_rows_are_positive():
    from trace_engine.scoring import cap_weights

    # two positive rows of ten, cap 2 x uniform (1.0): nothing may take the excess
    assert cap_weights([5.0, 5.0] + [0.0] * 8, 2.0) == pytest.approx([2.0, 2.0] + [0.0] * 8)


def test_cap_weights_keeps_the_total_unless_every_positive_row_is_capped():
    import random

    from trace_engine.scoring import cap_weights

    rng = random.Random(0)
    for _ in range(200):
        n, cap = rng.randint(1, 12), rng.choice([1.0, 1.5, 2.0, 3.0])
        w = [rng.random() ** 4 if rng.random() < 0.6 else 0.0 for _ in range(n)]
        total, positive = sum(w), sum(x > 0 for x in w)
        out = cap_weights(w, cap)
        assert max(out) <= cap * total / n + 1e-12
        assert sum(out) == pytest.approx(min(total, cap * positive * total / n) if total else 0.0)
        assert all((a == 0) == (b == 0) for a, b in zip(w, out, strict=True))  # zeros stay zero, others stay >0


def test_a_per_kind_cap_keeps_each_kinds_total():
    from trace_engine.scoring import NormalisedWeights, WeightShaping, shape_weights

    # PUNISH holds one outlier (6 of the 10); a global cap 2 (limit 2 * 10 / 6) moves PUNISH weight to INVERT,
    # a per-kind cap caps the outlier at 2 x PUNISH's own uniform weight (2 * 7 / 3) and keeps PUNISH at 7.
    weights = NormalisedWeights([1.0, 1.0, 1.0, 6.0, 0.5, 0.5], "sum", 0.0, False)
    kinds = ["INVERT"] * 3 + ["PUNISH_NPO"] * 3
    per_kind = shape_weights(weights, WeightShaping(cap=2.0, cap_per_kind=True), kinds).weights
    assert sum(per_kind[:3]) == pytest.approx(3.0) and sum(per_kind[3:]) == pytest.approx(7.0)
    assert per_kind[3] == pytest.approx(14 / 3) and per_kind[4] == pytest.approx(7 / 6)
    overall = shape_weights(weights, WeightShaping(cap=2.0), kinds).weights
    assert sum(overall[3:]) < 7.0 - 1e-9 and sum(overall[:3]) > 3.0 + 1e-9  # the global cap moves weight across
    with pytest.raises(ValueError, match="kind"):
        shape_weights(weights, WeightShaping(cap=2.0, cap_per_kind=True))


def test_balanced_kinds_keep_uniform_shares_and_a_kind_clamped_to_zero_gets_its_share_evenly():
    from trace_engine.scoring import NormalisedWeights, WeightShaping, shape_weights

    # mean-normalised: INVERT carries all 6 of the total, PUNISH (every raw score <= 0) nothing.
    weights = NormalisedWeights([3.0, 2.0, 1.0, 0.0, 0.0, 0.0], "mean", 0.5, False)
    kinds = ["INVERT"] * 3 + ["PUNISH_NPO"] * 3
    balanced = shape_weights(weights, WeightShaping(balance_kinds=True), kinds).weights
    assert balanced == pytest.approx([1.5, 1.0, 0.5, 1.0, 1.0, 1.0])  # 3 of 6 each; the ranking kept within INVERT
    capped = shape_weights(weights, WeightShaping(cap=1.2, balance_kinds=True), kinds).weights
    assert sum(capped[:3]) == pytest.approx(3.0) and max(capped[:3]) == pytest.approx(1.2)  # the cap stays per kind
    assert capped[3:] == pytest.approx([1.0, 1.0, 1.0])
    mixed = shape_weights(weights, WeightShaping(balance_kinds=True, uniform_mix=0.5), kinds).weights
    assert sum(mixed[:3]) == pytest.approx(3.0) and mixed[0] == pytest.approx(1.25)
    with pytest.raises(ValueError, match="kind"):
        shape_weights(weights, WeightShaping(balance_kinds=True))


def test_mix_uniform_floors_every_row():
    from trace_engine.scoring import mix_uniform

    assert mix_uniform([3.0, 1.0, 0.0, 0.0], 0.5) == pytest.approx([2.0, 1.0, 0.5, 0.5])
    assert mix_uniform([3.0, 1.0], 0.0) == [3.0, 1.0]
    assert mix_uniform([3.0, 1.0], 1.0) == [2.0, 2.0]


def test_weight_concentration_by_hand():
    from trace_engine.scoring import weight_concentration

    c = weight_concentration([4.0, 2.0, 1.0, 1.0, 0.0], top_k=2)
    assert c["top_k_share"] == pytest.approx(6 / 8) and c["max_share"] == pytest.approx(0.5)
    assert c["ess"] == pytest.approx(64 / 22) and c["ess_share"] == pytest.approx(64 / 22 / 5)
    assert c["share_zero"] == pytest.approx(0.2)
    assert weight_concentration([1.0] * 4)["ess_share"] == pytest.approx(1.0)
    assert weight_concentration([0.0, 0.0])["ess"] == 0.0


def test_shape_weights_caps_then_mixes_and_rejects_bad_settings():
    from trace_engine.scoring import NormalisedWeights, WeightShaping, shape_weights

    w = NormalisedWeights([0.6, 0.2, 0.1, 0.1, 0.0], "sum", 0.2, False)
    shaped = shape_weights(w, WeightShaping(cap=1.5, uniform_mix=0.5))
    # cap -> [0.3, 0.3, 0.2, 0.2, 0.0]; mix with mean 0.2 at λ 0.5 -> [0.25, 0.25, 0.2, 0.2, 0.1]
    assert shaped.weights == pytest.approx([0.25, 0.25, 0.2, 0.2, 0.1])
    assert shaped.mode == "sum" and shaped.share_clamped == 0.2
    assert shape_weights(w, WeightShaping()).weights == w.weights
    for bad in ({"cap": 0.5}, {"cap": float("inf")}, {"uniform_mix": -0.1}, {"uniform_mix": 1.5}):
        with pytest.raises(ValueError):
            WeightShaping(**bad)


def test_score_conflicts_draws_gold_from_trusted_rows_and_shapes_weights(tokenizer):
    from trace_engine.scoring import WeightShaping

    model = get_peft_model(build_tiny_model(tokenizer, "llama", hidden_size=32, intermediate_size=64),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    seed_lora_(model, 0)
    rows = triaged()
    rows[0]["trusted"] = True
    result = score_conflicts(model, tokenizer, rows, gold_size=6, seed=0, rows_per_batch=4, gold_from="trusted",
                             shaping=WeightShaping(uniform_mix=1.0))
    assert result.gold_report.size == 1 and result.summary["gold"]["source"] == "trusted"
    assert result.weights.weights == pytest.approx([1 / 3] * 3)  # λ = 1: uniform, still summing to 1
    assert result.summary["concentration"]["ess_share"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="trusted"):
        score_conflicts(model, tokenizer, triaged(), gold_size=6, gold_from="trusted")


def test_gate_keeps_uniform_weight_for_positive_rows_and_a_kind_without_signal_whole():
    from trace_engine.scoring import NormalisedWeights, WeightShaping, shape_weights

    # INVERT: two positive rows and one clamped; PUNISH: every row clamped (no signal: kept whole).
    weights = NormalisedWeights([3.0, 2.0, 0.0, 0.0, 0.0, 0.0], "mean", 0.67, False)
    kinds = ["INVERT"] * 3 + ["PUNISH_NPO"] * 3
    gated = shape_weights(weights, WeightShaping(cap=2.0, gate=True), kinds).weights
    assert gated == [1.0, 1.0, 0.0, 1.0, 1.0, 1.0]  # the ranking is gone; the cap has nothing to do
    as_sum = NormalisedWeights([0.6, 0.4, 0.0, 0.0], "sum", 0.5, False)
    assert shape_weights(as_sum, WeightShaping(gate=True), ["INVERT"] * 4).weights == [0.25, 0.25, 0.0, 0.0]
    mixed = shape_weights(weights, WeightShaping(gate=True, uniform_mix=0.5), kinds).weights
    assert mixed[2] == pytest.approx(0.5 * 5 / 6)  # λ floors a gated-out row at λ · mean
    with pytest.raises(ValueError, match="kind"):
        shape_weights(weights, WeightShaping(gate=True))


def test_anchor_check_scores_retain_rows_against_gold_retain_pairs_and_drops_a_swapped_anchor(tokenizer):
    from trace_engine.scoring import WeightShaping
    from trace_engine.variants import prepare_examples

    model = get_peft_model(build_tiny_model(tokenizer, "llama", hidden_size=32, intermediate_size=64),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    seed_lora_(model, 0)
    rows = triaged()
    # r2 is r0 with chosen and rejected swapped (noisy triage): its preference points against r0's, the gold pair.
    rows.insert(2, {**rows[0], "id": "r2", "chosen": rows[0]["rejected"], "rejected": rows[0]["chosen"]})
    rows[0]["trusted"] = True
    result = score_conflicts(model, tokenizer, rows, gold_size=3, seed=0, rows_per_batch=4, gold_from="trusted",
                             shaping=WeightShaping(check_anchors=True))
    by_id = {r["id"]: r for r in result.rows}
    assert by_id["r0"]["anchor_raw"] > 0 and by_id["r0"]["anchor_weight"] == 1.0  # agrees with itself
    assert by_id["r2"]["anchor_raw"] == pytest.approx(-by_id["r0"]["anchor_raw"], rel=1e-4)  # the swap flips it
    assert by_id["r2"]["anchor_weight"] == 0.0
    assert result.summary["anchors"]["checked"] == 3 and result.summary["anchors"]["dropped"] >= 1
    assert "anchor_raw" not in by_id["i0"] and result.summary["shaping"]["check_anchors"] is True
    prepared = prepare_examples(result.rows, "trace")
    assert "r2" not in {e.row_id for e in prepared.examples} and prepared.counts["skipped_zero_weight"] >= 1
    assert "r0" in {e.row_id for e in prepared.examples}
    unchecked = score_conflicts(model, tokenizer, rows, gold_size=3, seed=0, rows_per_batch=4,
                                shaping=WeightShaping(check_anchors=False))
    assert all("anchor_weight" not in r for r in unchecked.rows) and "anchors" not in unchecked.summary
    by_default = score_conflicts(model, tokenizer, rows, gold_size=3, seed=0, rows_per_batch=4, gold_from="trusted")
    assert [r.get("anchor_weight") for r in by_default.rows] == [r.get("anchor_weight") for r in result.rows]
    no_anchor = score_conflicts(model, tokenizer, rows, variant="no_triage", gold_size=3, seed=0, rows_per_batch=4,
                                gold_from="trusted", shaping=WeightShaping(check_anchors=True))
    assert "anchors" not in no_anchor.summary and all("anchor_weight" not in r for r in no_anchor.rows)  # no KL
