"""Impact scores: the one-pass ghost path against explicit per-sample autograd (the slow, obvious computation)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model

from trace_engine.config import LossSettings
from trace_engine.gold import GoldReport
from trace_engine.impact import ScoringBatch, gold_gradient, score_batches
from trace_engine.logprobs import SequenceBatch, sequence_logps
from trace_engine.modeling import adapter_is_identity, seed_lora_
from trace_engine.scoring import ImpactResult, attach_scores, normalise_scores, summarize_scores, write_scored
from trace_engine.tiny_models import DEFAULT_CORPUS, build_tiny_model, train_tokenizer
from trace_engine.tokenization import TruncationReport
from trace_engine.variants import SampleKind

QV = ["q_proj", "v_proj"]
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
K = SampleKind


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(DEFAULT_CORPUS, vocab_size=300)


def make_model(tokenizer, arch: str, targets: list[str], seed: int = 0):
    base = build_tiny_model(tokenizer, arch=arch, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=targets))
    seed_lora_(model, seed)
    return model


def random_batch(n_rows: int, vocab: int, seed: int) -> SequenceBatch:
    """Right-padded rows of random ids (no special tokens), prompts 3-6 and responses 2-8 tokens."""
    g = torch.Generator().manual_seed(seed)
    lengths = [
        (int(torch.randint(3, 7, (1,), generator=g)), int(torch.randint(2, 9, (1,), generator=g)))
        for _ in range(n_rows)
    ]
    width = max(p + r for p, r in lengths)
    ids = torch.zeros((n_rows, width), dtype=torch.long)
    attn = torch.zeros((n_rows, width), dtype=torch.long)
    resp = torch.zeros((n_rows, width), dtype=torch.bool)
    for i, (p, r) in enumerate(lengths):
        ids[i, : p + r] = torch.randint(7, vocab, (p + r,), generator=g)
        attn[i, : p + r] = 1
        resp[i, p : p + r] = True
    return SequenceBatch(ids, attn, resp)


def gold_batch(vocab: int) -> ScoringBatch:
    batch = random_batch(6, vocab, seed=11)
    return ScoringBatch(batch, ["g0", "g1", "g2"], [K.INVERT] * 3, [(0, 3), (1, 4), (2, 5)])


def conflict_batch(vocab: int) -> ScoringBatch:
    """Every sample kind in one batch, rows deliberately not in sample order."""
    batch = random_batch(9, vocab, seed=5)
    return ScoringBatch(
        batch,
        ["inv", "npo", "oracle", "notriage", "inv2"],
        [K.INVERT, K.PUNISH_NPO, K.PUNISH_ORACLE, K.NO_TRIAGE, K.INVERT],
        [(0, 1), (2, 3), (4, 5), (6,), (8, 7)],
    )


def perturb_adapter(model, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.add_(0.05 * torch.randn(p.shape, generator=g))


# ---------------------------------------------------------------- the slow, obvious computation


def explicit_logps(model, batch: SequenceBatch, rows: list[int]) -> torch.Tensor:
    sub = SequenceBatch(batch.input_ids[rows], batch.attention_mask[rows], batch.response_mask[rows])
    logits = model(input_ids=sub.input_ids, attention_mask=sub.attention_mask).logits
    return sequence_logps(logits, sub.input_ids, sub.response_mask)


def explicit_loss(kind: SampleKind, s, ref, n_tok, st: LossSettings) -> torch.Tensor:
    b = st.beta
    npo_scale = 2.0 / b if st.npo_two_over_beta else 1.0
    r = s - ref
    if kind in (K.INVERT, K.PUNISH_ORACLE):
        if st.preference_loss == "dpo":
            return -F.logsigmoid(b * (r[0] - r[1]))
        return (r[0] / n_tok[0] - r[1] / n_tok[1] - 1.0 / (2.0 * b)) ** 2
    if kind is K.PUNISH_NPO:
        return npo_scale * (-F.logsigmoid(-b * r[0]) - F.logsigmoid(-b * r[1]))
    return npo_scale * -F.logsigmoid(-b * r[0])


def flat_grad(model, loss: torch.Tensor) -> torch.Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])


def explicit_scores(model, sb: ScoringBatch, g_flat: torch.Tensor, st: LossSettings) -> list[float]:
    out = []
    for kind, rows in zip(sb.kinds, sb.rows, strict=True):
        rows = list(rows)
        with torch.no_grad(), model.disable_adapter():
            ref = explicit_logps(model, sb.batch, rows)
        s = explicit_logps(model, sb.batch, rows)
        n_tok = sb.batch.response_mask[rows].sum(1).float()
        out.append(float(flat_grad(model, explicit_loss(kind, s, ref, n_tok, st)) @ g_flat))
    return out


def explicit_gold_gradient(model, gb: ScoringBatch, beta: float) -> torch.Tensor:
    total = None
    for rows in gb.rows:
        with torch.no_grad(), model.disable_adapter():
            ref = explicit_logps(model, gb.batch, list(rows))
        s = explicit_logps(model, gb.batch, list(rows))
        g = flat_grad(model, -F.logsigmoid(beta * ((s[0] - ref[0]) - (s[1] - ref[1]))) / len(gb.rows))
        total = g if total is None else total + g
    return total


def flatten(model, grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([grads[n].reshape(-1) for n, p in model.named_parameters() if p.requires_grad])


def assert_rel_close(fast: list[float], slow: list[float], rel: float = 1e-4) -> None:
    fast_t, slow_t = torch.tensor(fast, dtype=torch.float64), torch.tensor(slow, dtype=torch.float64)
    scale = slow_t.abs().max().item()
    assert scale > 0, "degenerate test: every explicit score is zero"
    err = (fast_t - slow_t).abs().max().item()
    assert err <= rel * scale, f"max abs error {err:.3e} > {rel} x {scale:.3e}\nfast={fast}\nslow={slow}"


# ---------------------------------------------------------------- parity

SETTINGS = [
    LossSettings(beta=0.3, preference_loss="dpo", npo_two_over_beta=False),
    LossSettings(beta=0.5, preference_loss="ipo", npo_two_over_beta=True),
]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("targets", [QV, ALL_LINEAR], ids=["qv", "all_linear"])
@pytest.mark.parametrize("state", ["theta_ref", "non_initial"])
def test_scores_match_explicit_per_sample_autograd(tokenizer, arch, targets, state):
    model = make_model(tokenizer, arch, targets)
    if state == "non_initial":
        perturb_adapter(model, seed=3)
        assert not adapter_is_identity(model)
    else:
        assert adapter_is_identity(model)
    vocab = len(tokenizer)
    gb, sb = gold_batch(vocab), conflict_batch(vocab)
    model.train()  # scoring must switch dropout off itself and restore the mode
    g_j = gold_gradient(model, [gb], beta=0.3)
    assert model.training
    model.eval()
    g_flat = flatten(model, g_j)
    torch.testing.assert_close(g_flat, explicit_gold_gradient(model, gb, 0.3), rtol=1e-5, atol=1e-7)
    if state == "theta_ref":  # PEFT's B = 0 makes every A-gradient zero at θ_ref
        assert all(float(g.abs().max()) == 0.0 for n, g in g_j.items() if "lora_A" in n)
    for st in SETTINGS:
        model.train()
        fast = score_batches(model, [sb], g_j, st)
        assert model.training
        model.eval()
        assert [s.sample_id for s in fast] == sb.sample_ids
        assert_rel_close([s.raw_score for s in fast], explicit_scores(model, sb, g_flat, st))


def test_scores_from_non_initial_adapter_with_gold_gradient_taken_at_theta_ref(tokenizer):
    """The realistic re-scoring case: g_J fixed at θ_ref (A-block zero), σ factors from the current adapter."""
    model = make_model(tokenizer, "qwen2", QV)
    vocab = len(tokenizer)
    g_j = gold_gradient(model, [gold_batch(vocab)], beta=0.3)
    perturb_adapter(model, seed=4)
    model.eval()
    sb = conflict_batch(vocab)
    fast = score_batches(model, [sb], g_j, SETTINGS[0])
    assert_rel_close([s.raw_score for s in fast], explicit_scores(model, sb, flatten(model, g_j), SETTINGS[0]))


def test_layer_checkpointing_keeps_scores_and_gold_gradient_exact(tokenizer):
    """Scoring in eval mode with every decoder layer recomputed in the backward (the memory-saving path)."""
    model = make_model(tokenizer, "llama", ALL_LINEAR)
    perturb_adapter(model, seed=5)
    vocab = len(tokenizer)
    gb, sb = gold_batch(vocab), conflict_batch(vocab)
    plain_g = gold_gradient(model, [gb], beta=0.3)
    ckpt_g = gold_gradient(model, [gb], beta=0.3, checkpoint=True)
    torch.testing.assert_close(flatten(model, ckpt_g), flatten(model, plain_g), rtol=1e-5, atol=1e-7)
    fast = score_batches(model, [sb], ckpt_g, SETTINGS[1], checkpoint=True)
    model.eval()
    assert_rel_close([s.raw_score for s in fast], explicit_scores(model, sb, flatten(model, ckpt_g), SETTINGS[1]))
    assert "forward" not in model.get_base_model().model.layers[0].__dict__  # patched forward removed again


def test_reference_logps_from_the_pass_are_the_models_and_cached_ones_are_used(tokenizer):
    model = make_model(tokenizer, "llama", QV)
    vocab = len(tokenizer)
    sb = conflict_batch(vocab)
    g_j = gold_gradient(model, [gold_batch(vocab)], beta=0.3)
    fast = score_batches(model, [sb], g_j, SETTINGS[0])
    model.eval()
    with torch.no_grad():
        for s, rows in zip(fast, sb.rows, strict=True):
            expected = explicit_logps(model, sb.batch, list(rows)).tolist()
            assert s.reference_logps == pytest.approx(expected, rel=1e-5, abs=1e-5)
            assert s.policy_logps == pytest.approx(expected, rel=1e-5, abs=1e-5)
    # A cached reference that differs from the policy changes the σ factors: NPO coefficient β σ(β r) ≠ β/2.
    shifted = ScoringBatch(sb.batch, sb.sample_ids, sb.kinds, sb.rows, reference_logps=torch.full((9,), -1e3))
    again = score_batches(model, [shifted], g_j, SETTINGS[0])
    assert again[3].reference_logps == (-1e3,)
    assert again[3].raw_score != pytest.approx(fast[3].raw_score)


def test_theta_ref_scores_are_the_closed_form_combination(tokenizer):
    """At θ_ref: w_DPO = -(β/2)(d+ - d-), w_dualNPO = (β/2)(d_w + d_l); checks the chain-rule factors by hand."""
    model = make_model(tokenizer, "llama", QV)
    vocab = len(tokenizer)
    g_j = gold_gradient(model, [gold_batch(vocab)], beta=0.3)
    sb = conflict_batch(vocab)
    beta = 0.3
    scores = {s.sample_id: s.raw_score for s in score_batches(model, [sb], g_j, LossSettings(beta=beta))}
    # d(y) for single rows = NPO score / (β/2)
    single = ScoringBatch(sb.batch, [f"r{i}" for i in range(9)], [K.NO_TRIAGE] * 9, [(i,) for i in range(9)])
    d = [s.raw_score / (beta / 2) for s in score_batches(model, [single], g_j, LossSettings(beta=beta))]
    assert scores["inv"] == pytest.approx(-(beta / 2) * (d[0] - d[1]), rel=1e-6)
    assert scores["inv2"] == pytest.approx(-(beta / 2) * (d[8] - d[7]), rel=1e-6)
    assert scores["npo"] == pytest.approx((beta / 2) * (d[2] + d[3]), rel=1e-6)
    scaled = score_batches(model, [sb], g_j, LossSettings(beta=beta, npo_two_over_beta=True))
    assert scaled[1].raw_score == pytest.approx(d[2] + d[3], rel=1e-6)  # (2/β)(β/2) = 1


def test_seed_lora_is_reproducible_and_leaves_global_rng_alone(tokenizer):
    a, b = make_model(tokenizer, "llama", QV, seed=7), make_model(tokenizer, "llama", QV, seed=7)
    c = make_model(tokenizer, "llama", QV, seed=8)
    pa = {n: p for n, p in a.named_parameters() if "lora_A" in n}
    pb = {n: p for n, p in b.named_parameters() if "lora_A" in n}
    pc = {n: p for n, p in c.named_parameters() if "lora_A" in n}
    assert all(torch.equal(pa[n], pb[n]) for n in pa)
    assert not all(torch.equal(pa[n], pc[n]) for n in pa)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    seed_lora_(a, 1)
    assert torch.equal(torch.rand(3), expected)


def test_untrainable_by_ghost_parameters_are_refused(tokenizer):
    model = make_model(tokenizer, "llama", QV)
    model.get_input_embeddings().weight.requires_grad_(True)
    direction = {n: torch.zeros_like(p) for n, p in model.named_parameters() if p.requires_grad}
    with pytest.raises(ValueError, match="nn.Linear"):
        score_batches(model, [conflict_batch(len(tokenizer))], direction, LossSettings())


def test_bad_sample_layout_is_refused():
    batch = random_batch(3, 50, seed=0)
    with pytest.raises(ValueError, match="reads 2 rows"):
        ScoringBatch(batch, ["a"], [K.INVERT], [(0,)])
    with pytest.raises(ValueError, match="shared"):
        ScoringBatch(batch, ["a", "b"], [K.NO_TRIAGE, K.NO_TRIAGE], [(0,), (0,)])


# ---------------------------------------------------------------- normalisation and output


def test_normalise_sum_and_mean_by_hand():
    raw = [2.0, -1.0, 0.0, 6.0]
    s = normalise_scores(raw, "sum")
    assert s.weights == [0.25, 0.0, 0.0, 0.75]
    assert math.isclose(sum(s.weights), 1.0)
    assert s.share_clamped == 0.5 and not s.uniform_fallback
    m = normalise_scores(raw, "mean")
    assert m.weights == [1.0, 0.0, 0.0, 3.0]
    assert math.isclose(sum(m.weights) / len(raw), 1.0)


def test_normalise_all_nonpositive_falls_back_to_uniform():
    s = normalise_scores([-1.0, 0.0], "sum")
    assert s.weights == [0.5, 0.5] and s.uniform_fallback and s.share_clamped == 1.0
    assert normalise_scores([-3.0, -1.0], "mean").weights == [1.0, 1.0]
    assert normalise_scores([], "sum").weights == []


def test_normalise_rejects_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        normalise_scores([1.0, float("nan")], "sum")
    with pytest.raises(ValueError, match="mode"):
        normalise_scores([1.0], "max")  # type: ignore[arg-type]


def test_write_scored_jsonl_and_summary(tmp_path):
    from trace_engine.impact import ScoredSample

    scored = [
        ScoredSample("a", K.INVERT, 3.0, (-1.0, -2.0), (-1.0, -2.0)),
        ScoredSample("b", K.PUNISH_NPO, -1.0, (-1.0, -2.0), (-1.0, -2.0)),
        ScoredSample("c", K.INVERT, 1.0, (-1.0, -2.0), (-1.0, -2.0)),
    ]
    weights = normalise_scores([s.raw_score for s in scored], "mean")
    rows = [{"id": "a", "category": "INVERT"}, {"id": "r", "category": "RETAIN"}, {"id": "b"}, {"id": "c"}]
    path = tmp_path / "scored.jsonl"
    summary = {**summarize_scores(scored, weights), "variant": "trace"}
    result = ImpactResult(scored, weights, summary, GoldReport(3, 1, 1, 1, 1, 0), TruncationReport(), {},
                          [{**r, "anchor_weight": 0.0} if r["id"] == "r" else r for r in attach_scores(rows, scored,
                                                                                                          weights)])
    write_scored(path, result)
    back = [json.loads(line) for line in path.read_text().splitlines()]
    assert back[1]["anchor_weight"] == 0.0  # what scoring added to a row reaches the file training reads
    assert [r["id"] for r in back] == ["a", "r", "b", "c"]
    assert back[0]["impact_score"] == 2.25 and back[0]["impact_raw"] == 3.0
    assert back[1]["impact_score"] is None  # RETAIN is not scored
    assert back[2]["impact_score"] == 0.0 and back[2]["impact_raw"] == -1.0
    assert back[3]["impact_score"] == 0.75  # mean mode: 3 * clamp(1) / (3 + 0 + 1)
    assert summary["share_clamped_to_zero"] == pytest.approx(1 / 3)
    assert [t["id"] for t in summary["top"]] == ["a", "c", "b"]
    assert summary["raw_quantiles"]["p50"] == 1.0 and summary["raw_quantiles"]["p0"] == -1.0
    assert json.loads(path.with_suffix(".summary.json").read_text()) == summary
    assert summarize_scores([], normalise_scores([], "sum"))["raw_quantiles"]["p50"] is None
