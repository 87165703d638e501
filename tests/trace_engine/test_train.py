from __future__ import annotations

import functools
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from trace_engine import schedule
from trace_engine import train as train_module
from trace_engine.config import ConfigError, LoraSettings, TrainConfig
from trace_engine.data.io import read_jsonl as iter_jsonl
from trace_engine.logprobs import sequence_logps
from trace_engine.modeling import ModelLoadError, ModelSource, load_causal_lm, load_tokenizer
from trace_engine.reference_cache import sequence_key
from trace_engine.tiny_models import DEFAULT_CORPUS, build_tiny_model, save_tiny, train_tokenizer
from trace_engine.tokenization import collate, encode_pairs
from trace_engine.train import train as train_on_device
from trace_engine.variants import VARIANTS, DataError, LossKind, prepare_examples

train = functools.partial(train_on_device, device="cpu")  # tests are CPU tests, GPU or not

SAFE = "Open settings and choose reset."
REFUSE = "Sorry, I can't assist with that."
CAVEAT = "Here is a careful answer with caveats; consult official sources."
ZERO_WEIGHT_TEXT = "The capital of France is Paris."


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tiny(request, tmp_path_factory) -> ModelSource:
    tok = train_tokenizer(DEFAULT_CORPUS)
    return ModelSource(str(save_tiny(build_tiny_model(tok, request.param), tok, tmp_path_factory.mktemp("m"))))


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> ModelSource:
    tok = train_tokenizer(DEFAULT_CORPUS)
    return ModelSource(str(save_tiny(build_tiny_model(tok, "llama"), tok, tmp_path_factory.mktemp("llama"))))


def triaged_rows(n: int = 12) -> list[dict]:
    """Triaged rows cycling INVERT / PUNISH / RETAIN, with impact scores and (for PUNISH) oracle answers."""
    rows = []
    for i in range(n):
        category = ("INVERT", "PUNISH", "RETAIN")[i % 3]
        row = {
            "id": f"r{i}",
            "prompt": f"How do I reset my password, case {i}?" if i % 2 else [{"role": "user", "content": f"Q{i}?"}],
            "chosen": SAFE if category != "PUNISH" else REFUSE,
            "rejected": REFUSE if category != "PUNISH" else CAVEAT,
            "original_chosen": REFUSE if category == "INVERT" else SAFE,
            "original_rejected": SAFE if category == "INVERT" else REFUSE,
            "category": category,
            "impact_score": 0.5 + 0.25 * (i % 4),
            "policy_sha256": "p" * 64,
            "judge_id": "rules:v1",
        }
        if category == "PUNISH":
            row["oracle_response"] = "Explain how firewalls work for a security class."
        rows.append(row)
    return rows


def small(**kw) -> TrainConfig:
    base = dict(batch_size=4, lr=5e-3, warmup_ratio=0.0, lora=LoraSettings(r=4, alpha=8, dropout=0.0))
    base.update(kw)
    return TrainConfig(**base)


def lora_b(adapter_dir) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(adapter_dir / "adapter_model.safetensors").items() if "lora_B" in k}


def test_training_reduces_loss_and_changes_adapter(tiny, tmp_path):
    result = train(triaged_rows(), small(epochs=6), base=tiny, output_dir=tmp_path)
    log = list(iter_jsonl(result.metrics_path))
    assert [m["step"] for m in log] == list(range(1, 19))  # 12 examples / 4 per step * 6 epochs

    def epoch_loss(epoch: int) -> float:
        ms = [m for m in log if m["epoch"] == epoch]
        return sum(m["loss"] * m["examples"] for m in ms) / sum(m["examples"] for m in ms)

    assert epoch_loss(5) < epoch_loss(0) - 0.05
    assert any(v.abs().max() > 0 for v in lora_b(result.output_dir).values())
    assert log[-1]["accuracy"] is None or log[-1]["accuracy"] >= 0
    files = {p.name for p in result.output_dir.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "realign.json"} <= files
    meta = json.loads((result.output_dir / "realign.json").read_text())
    assert meta["base_model"] == tiny.to_dict() and meta["variant"] == "trace"
    assert meta["policy_sha256"] == ["p" * 64] and meta["judge_id"] == ["rules:v1"]
    assert meta["counts"] == {"PREF": 4, "DUAL_NPO": 4, "KL": 4, "examples": 12}
    assert meta["steps"] == 18 and meta["final_metrics"]["step"] == 18


def test_metrics_have_every_component(llama, tmp_path):
    seen = []
    result = train(
        triaged_rows(), small(batch_size=12, epochs=2), base=llama, output_dir=tmp_path,
        progress=lambda step, total, m: seen.append((step, total, m)),
    )
    assert [(s, t) for s, t, _ in seen] == [(1, 2), (2, 2)]
    m = seen[-1][2]
    for key in ("loss", "loss_pref", "loss_npo", "kl", "reward_chosen", "reward_rejected", "margin", "accuracy",
                "lr", "grad_norm", "tokens_per_s"):
        assert isinstance(m[key], float) and math.isfinite(m[key]), key
    assert (m["n_pref"], m["n_npo"], m["n_kl"]) == (4, 4, 4)
    assert m["kl"] > 0  # after one update the policy has moved away from the reference
    first = next(iter_jsonl(result.metrics_path))
    assert first["kl"] == pytest.approx(0.0, abs=1e-7)  # step 1: policy == reference (B = 0)
    assert first["loss_pref"] == pytest.approx(math.log(2), abs=1e-5)
    assert first["reward_chosen"] == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_variant_runs_one_step(variant, llama, tmp_path):
    result = train(triaged_rows(6), small(variant=variant, max_steps=1, batch_size=6), base=llama, output_dir=tmp_path)
    [m] = list(iter_jsonl(result.metrics_path))
    assert math.isfinite(m["loss"]) and m["grad_norm"] > 0
    spec = VARIANTS[variant]
    if spec.every_row or spec.retain != "kl":
        assert m["n_kl"] == 0
    if variant in ("u2a", "npo", "no_triage"):
        assert m["n_pref"] == 0 and m["n_npo"] > 0


def test_variant_table_rows():
    rows = triaged_rows(6)
    no_triage = prepare_examples(rows, "no_triage").examples
    assert all(e.kind is LossKind.NPO_DISPREFERRED for e in no_triage)
    assert [e.dispreferred for e in no_triage] == [r["original_rejected"] for r in rows]  # not the swapped field
    dpo = prepare_examples(rows, "dpo").examples
    assert [(e.preferred, e.dispreferred) for e in dpo] == [(r["original_chosen"], r["original_rejected"]) for r in rows]
    oracle = prepare_examples(rows, "trace_oracle").examples
    punish = [e for e in oracle if e.category == "PUNISH"]
    assert all(e.kind is LossKind.PREF and e.preferred.startswith("Explain") and e.dispreferred == REFUSE
               for e in punish)
    rows[1].pop("oracle_response")
    fallback = prepare_examples(rows, "trace_oracle")
    assert fallback.counts["oracle_fallback_npo"] == 1
    assert [e.kind for e in fallback.examples if e.row_id == "r1"] == [LossKind.DUAL_NPO]
    with pytest.raises(DataError, match="needs an oracle_response for every PUNISH row; 1 lack one"):
        prepare_examples(rows, "dpo_gold")
    u2a = prepare_examples(rows, "u2a")
    assert {e.category for e in u2a.examples} == {"INVERT", "PUNISH"} and u2a.counts["unused_RETAIN"] == 2
    weighted = prepare_examples(rows, "trace").examples
    assert [e.weight for e in weighted if e.category != "RETAIN"] == [r["impact_score"] for r in rows
                                                                      if r["category"] != "RETAIN"]
    assert all(e.weight == 1.0 for e in prepare_examples(rows, "no_impact").examples)


def test_weight_zero_rows_never_reach_a_batch(llama, tmp_path, monkeypatch):
    rows = triaged_rows(6)
    for r in rows[:2]:  # one INVERT, one PUNISH
        r["impact_score"] = 0.0
        r["chosen"] = r["rejected"] = ZERO_WEIGHT_TEXT
    batches: list[torch.Tensor] = []

    def recording_collate(*args, **kwargs):
        batch = collate(*args, **kwargs)
        batches.append(batch.input_ids.clone())
        return batch

    monkeypatch.setattr(train_module, "collate", recording_collate)
    result = train(rows, small(batch_size=2, epochs=1), base=llama, output_dir=tmp_path)
    tok = load_tokenizer(llama)
    texts = [tok.decode(row) for b in batches for row in b]
    assert texts and not any(ZERO_WEIGHT_TEXT in t for t in texts)
    assert result.provenance["counts"]["skipped_zero_weight"] == 2
    assert sum(m["examples"] for m in iter_jsonl(result.metrics_path)) == 4


def test_gradient_accumulation_matches_one_big_batch(llama, tmp_path):
    one = train(triaged_rows(4), small(batch_size=4, max_steps=1), base=llama, output_dir=tmp_path / "a")
    two = train(triaged_rows(4), small(batch_size=2, grad_accum=2, max_steps=1), base=llama, output_dir=tmp_path / "b")
    a, b = lora_b(one.output_dir), lora_b(two.output_dir)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert one.final_metrics["loss"] == pytest.approx(two.final_metrics["loss"], abs=1e-6)


def test_gradient_checkpointing_gives_same_update(llama, tmp_path):
    plain = train(triaged_rows(3), small(batch_size=3, max_steps=1), base=llama, output_dir=tmp_path / "a")
    ckpt = train(
        triaged_rows(3), small(batch_size=3, max_steps=1, gradient_checkpointing=True), base=llama,
        output_dir=tmp_path / "b",
    )
    a, b = lora_b(plain.output_dir), lora_b(ckpt.output_dir)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_precomputed_reference_logps_are_used(llama, tmp_path):
    rows = [r for r in triaged_rows(6) if r["category"] == "INVERT"]
    tok, model = load_tokenizer(llama), load_causal_lm(llama, device="cpu")
    pairs, _ = encode_pairs(tok, [r["prompt"] for r in rows], [r["chosen"] for r in rows], [r["rejected"] for r in rows])
    cache = {}
    for r, p in zip(rows, pairs, strict=True):
        for text, seq in ((r["chosen"], p.preferred), (r["rejected"], p.dispreferred)):
            batch = collate([seq], tok.pad_token_id)
            with torch.no_grad():
                s = sequence_logps(model(input_ids=batch.input_ids).logits, batch.input_ids, batch.response_mask)
            cache[sequence_key(r["prompt"], text)] = s.item() + (1.0 if text == r["chosen"] else 0.0)
    # the cache claims the reference liked the preferred answer 1 nat more: step-1 reward_chosen = β (0 - 1)
    result = train(rows, small(variant="no_impact", batch_size=2, max_steps=1, beta=0.5), base=llama,
                   output_dir=tmp_path, reference_logps=cache)
    assert result.final_metrics["reward_chosen"] == pytest.approx(-0.5, abs=1e-4)
    assert result.final_metrics["reward_rejected"] == pytest.approx(0.0, abs=1e-4)


def test_full_finetune_without_kl(llama, tmp_path):
    result = train(triaged_rows(6), small(variant="no_kl", full_finetune=True, max_steps=1, lr=1e-3), base=llama,
                   output_dir=tmp_path)
    assert result.output_dir.name == "model" and (result.output_dir / "model.safetensors").exists()
    before = load_causal_lm(llama, device="cpu").state_dict()
    after = load_causal_lm(ModelSource(str(result.output_dir)), device="cpu").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ConfigError, match="full fine-tune"):
        train(triaged_rows(6), small(variant="trace", full_finetune=True), base=llama, output_dir=tmp_path / "x")


@pytest.mark.parametrize(
    ("mutate", "config", "error", "message"),
    [
        (lambda rows: rows[0].update(category="MAYBE"), {}, DataError, "unknown category 'MAYBE'"),
        (lambda rows: rows[0].pop("impact_score"), {}, DataError, "no numeric impact_score.*'no_impact'"),
        (lambda rows: [r.update(category="RETAIN") for r in rows], {}, DataError, "empty conflict set"),
        (lambda rows: None, {"variant": "rdpo", "rdpo_eps": 0.0}, ConfigError, "0 < rdpo_eps < 0.5"),
        (lambda rows: None, {"variant": "sft"}, ConfigError, "unknown variant 'sft'"),
        (lambda rows: None, {"pref_loss": "kto"}, ConfigError, "pref_loss must be one of"),
        (lambda rows: None, {"lora": LoraSettings(target_modules=("c_attn",))}, ModelLoadError, "c_attn.*available"),
    ],
)
def test_bad_input_stops_with_clear_message(llama, tmp_path, mutate, config, error, message):
    rows = triaged_rows(6)
    mutate(rows)
    with pytest.raises(error, match=message):
        train(rows, small(**config), base=llama, output_dir=tmp_path)
    assert not (tmp_path / "adapter").exists()


def test_hub_model_without_pinned_revision_is_refused_before_loading(tmp_path):
    with pytest.raises(ModelLoadError, match="pinned revision"):
        train(triaged_rows(3), small(), base=ModelSource("meta-llama/Llama-3.1-8B"), output_dir=tmp_path)


def test_data_order_is_seeded_and_reshuffled_each_epoch():
    from trace_engine.schedule import epoch_order

    assert epoch_order(20, seed=1, epoch=0) == epoch_order(20, seed=1, epoch=0)
    assert epoch_order(20, seed=1, epoch=0) != epoch_order(20, seed=1, epoch=1)
    assert epoch_order(20, seed=1, epoch=0) != epoch_order(20, seed=2, epoch=0)
    assert sorted(epoch_order(20, seed=1, epoch=3)) == list(range(20))


def test_warmup_then_cosine_schedule():
    from trace_engine.schedule import warmup_cosine

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, total_steps=10, warmup_ratio=0.2)
    lrs = []
    for _ in range(10):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])  # 2 warmup steps, then the peak
    assert lrs[2:] == sorted(lrs[2:], reverse=True) and lrs[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))


def test_training_starts_from_the_seeded_adapter_scoring_uses(llama, tmp_path):
    """Scoring takes g_J at attach_lora(seed=s); training with seed s starts from that very adapter.

    At step 0 B = 0, so A's gradient is exactly 0 and (weight decay 0) Adam leaves A unchanged by step 1: the saved
    A is the step-0 A.
    """
    from peft import get_peft_model_state_dict

    from trace_engine.modeling import attach_lora

    config = small(max_steps=1, weight_decay=0.0, seed=7)
    result = train(triaged_rows(6), config, base=llama, output_dir=tmp_path)
    trained = load_file(result.output_dir / "adapter_model.safetensors")
    scoring_state = get_peft_model_state_dict(attach_lora(load_causal_lm(llama, device="cpu"), config.lora, seed=7))
    other_seed = get_peft_model_state_dict(attach_lora(load_causal_lm(llama, device="cpu"), config.lora, seed=8))
    a_keys = [k for k in trained if "lora_A" in k]
    assert a_keys and set(a_keys) <= set(scoring_state)
    assert all(torch.equal(trained[k], scoring_state[k]) for k in a_keys)
    assert not any(torch.equal(trained[k], other_seed[k]) for k in a_keys)
    assert any(trained[k].abs().max() > 0 for k in trained if "lora_B" in k)  # the step did train B


def test_kl_on_preferred_only_never_forwards_the_retain_rejected(llama, tmp_path, monkeypatch):
    rows = triaged_rows(6)
    for r in rows:
        if r["category"] == "RETAIN":
            r["rejected"] = ZERO_WEIGHT_TEXT
    seen: dict[str, list[str]] = {}
    tok = load_tokenizer(llama)
    for mode in ("both", "preferred"):
        batches: list[torch.Tensor] = []

        def recording_collate(*args, _b=batches, **kwargs):
            batch = collate(*args, **kwargs)
            _b.append(batch.input_ids.clone())
            return batch

        monkeypatch.setattr(train_module, "collate", recording_collate)
        train(rows, small(batch_size=3, max_steps=2, kl_responses=mode), base=llama, output_dir=tmp_path / mode)
        seen[mode] = [tok.decode(row) for b in batches for row in b]
    assert any(ZERO_WEIGHT_TEXT in t for t in seen["both"])
    assert seen["preferred"] and not any(ZERO_WEIGHT_TEXT in t for t in seen["preferred"])


def test_kl_on_preferred_equals_both_when_the_two_responses_match(llama, tmp_path):
    """Token-mean KL over two identical responses is the KL over one: same metrics and same adapter after the
    second step (the first step's KL gradient is 0 at θ_ref, so two steps are needed to see it)."""
    rows = triaged_rows(6)
    for r in rows:
        if r["category"] == "RETAIN":
            r["rejected"] = r["chosen"]
    runs = {
        mode: train(rows, small(batch_size=6, epochs=2, kl_responses=mode, lr=5e-2), base=llama,
                    output_dir=tmp_path / mode)
        for mode in ("both", "preferred")
    }
    assert runs["both"].final_metrics["kl"] > 0
    assert runs["preferred"].final_metrics["kl"] == pytest.approx(runs["both"].final_metrics["kl"], rel=1e-4)
    a, b = lora_b(runs["both"].output_dir), lora_b(runs["preferred"].output_dir)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_unknown_kl_responses_and_fused_kernels_are_refused():
    with pytest.raises(ConfigError, match="kl_responses"):
        TrainConfig(kl_responses="rejected").validate()
    with pytest.raises(ConfigError, match="fused_kernels"):
        TrainConfig(fused_kernels="maybe").validate()


def test_micro_batches_grouped_by_length_cut_padding_and_keep_every_example():
    from trace_engine.schedule import micro_batches

    g = torch.Generator().manual_seed(0)
    lengths = (torch.rand(500, generator=g) ** 3 * 400 + 8).long().tolist()  # long-tailed, like real responses
    order = torch.randperm(500, generator=g).tolist()

    def padded(batches):
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    plain = micro_batches(order, None, 8, seed=1, epoch=0)
    grouped = micro_batches(order, lengths, 8, seed=1, epoch=0)
    assert plain == [order[i : i + 8] for i in range(0, 500, 8)]
    assert sorted(i for b in grouped for i in b) == list(range(500)) and all(len(b) <= 8 for b in grouped)
    assert padded(grouped) < 0.6 * padded(plain)  # sum(lengths) is the floor
    assert grouped == micro_batches(order, lengths, 8, seed=1, epoch=0)  # resumable: same batches again
    assert grouped != micro_batches(order, lengths, 8, seed=1, epoch=1)


@pytest.mark.parametrize("kl_responses", ["preferred", "both"])
def test_retain_kl_is_the_token_mean_kl_against_the_adapter_free_model(llama, kl_responses):
    """retain_kl on its own against the slow computation: full logits with the adapter on and off, token mean over
    the anchored responses of each example."""
    from trace_engine.head import policy_pass
    from trace_engine.logprobs import token_kl_sums
    from trace_engine.modeling import attach_lora
    from trace_engine.runtime import Runtime

    tok = load_tokenizer(llama)
    model = attach_lora(load_causal_lm(llama, device="cpu"), LoraSettings(r=4, alpha=8, dropout=0.0), seed=0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.3, generator=torch.Generator().manual_seed(1))
    rows = [r for r in triaged_rows(6) if r["category"] == "RETAIN"] * 2  # k = 4 RETAIN examples
    pairs, _ = encode_pairs(tok, [r["prompt"] for r in rows], [r["chosen"] for r in rows],
                            [r["rejected"] for r in rows])
    k = len(pairs)
    cfg = TrainConfig(kl_responses=kl_responses)
    seqs = [p.preferred for p in pairs] + [p.dispreferred for p in pairs]
    batch = collate(seqs, tok.pad_token_id)
    kl_rows = torch.arange(2 * k) if kl_responses == "both" else torch.arange(k)
    kl_batch = batch.select(kl_rows)
    rt = Runtime(torch.device("cpu"), torch.float32)
    reference = train_module.reference_for_kl(model, kl_batch, rt)
    got = train_module.retain_kl(policy_pass(model, batch), reference, kl_batch, kl_rows, k, rt, cfg)

    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        with model.disable_adapter():
            ref_logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    sums, counts = token_kl_sums(logits, ref_logits, batch.response_mask)
    if kl_responses == "both":
        want = (sums[:k] + sums[k:]) / (counts[:k] + counts[k:])
    else:
        want = sums[:k] / counts[:k]
    assert bool((want > 0).all())
    torch.testing.assert_close(got.detach(), want, rtol=1e-4, atol=1e-7)


def test_reference_only_for_examples_the_steps_reach(llama, tmp_path, monkeypatch):
    """max_steps shorter than an epoch: reference log-probs are computed only for the pairs those steps train on
    (TRL's per-step reference gets this for free; computing all of them made short runs pay for a whole epoch), and
    the first step's numbers equal a full-epoch run's, so the values land on the right examples."""
    sizes: list[int] = []
    original = train_module.reference_sequence_logps

    def counting(model, encoded, examples, rt, cfg, pad_id, cache=None):
        sizes.append(len(examples))
        return original(model, encoded, examples, rt, cfg, pad_id, cache)

    monkeypatch.setattr(train_module, "reference_sequence_logps", counting)
    rows = triaged_rows(12)
    short = train(rows, small(variant="no_impact", batch_size=2, max_steps=2), base=llama, output_dir=tmp_path / "a")
    full = train(rows, small(variant="no_impact", batch_size=2), base=llama, output_dir=tmp_path / "b")
    assert sizes == [4, 12]
    first = [next(iter_jsonl(r.metrics_path)) for r in (short, full)]
    assert first[0]["loss"] == pytest.approx(first[1]["loss"], rel=1e-6)
    for key in ("loss_pref", "loss_npo", "reward_chosen", "kl"):  # None where the first batch has no such example
        assert (first[0][key] is None) == (first[1][key] is None), key
        assert first[0][key] is None or first[0][key] == pytest.approx(first[1][key], rel=1e-6, abs=1e-7), key
    cut = schedule.examples_reached(12, [5] * 12, small(batch_size=2, grad_accum=2), 1)
    assert len(cut) == 4 and schedule.examples_reached(12, None, small(batch_size=5), 3) == list(range(12))
