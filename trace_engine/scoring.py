"""Impact scoring from triaged rows: which samples get scored, their token rows, the gold batch, the whole pass,
and what comes out of it (normalised weights, shaping, a summary, the scored rows).

`score` is the one entry point (the service's score stage, `realign score`/`train`, the offline run, the
benchmarks). The math lives in `impact` (pure torch over token rows); this module picks the rows with training's
own selection (`variants.choose_row`), tokenizes them with the contract training uses, and returns everything the
next stage needs, including the reference log-probs (keyed by `reference_cache.sequence_key`) so training never
recomputes them.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from torch import nn

from trace_engine.categories import Category
from trace_engine.config import DEFAULT_CHECK_ANCHORS, DEFAULT_WEIGHT_CAP, LengthLimits, LossSettings
from trace_engine.data.io import write_json, write_jsonl
from trace_engine.data.pairs import Prompt
from trace_engine.gold import (
    GoldPair,
    GoldReport,
    GoldSource,
    build_gold_batch,
    gold_candidates,
)
from trace_engine.impact import ScoredSample, ScoringBatch, gold_gradient, score_batches
from trace_engine.modeling import ModelSource
from trace_engine.reference_cache import sequence_key
from trace_engine.runtime import Runtime
from trace_engine.tokenization import TruncationReport, collate, encode_sequences, pad_id_of
from trace_engine.variants import (
    SCORED_PREF_LOSSES,
    SCORING_VARIANTS,
    VARIANTS,
    SampleKind,
    choose_row,
    scored_as,
)

if TYPE_CHECKING:
    from trace_engine.config import TrainConfig



@dataclass(frozen=True)
class ConflictSample:
    """One scored sample: its loss kind and the responses that loss reads (`SampleKind.arity`, in loss order)."""

    sample_id: str
    kind: SampleKind
    prompt: Prompt
    responses: tuple[str, ...]


def conflict_samples(rows: Sequence[Mapping[str, Any]], variant: str) -> list[ConflictSample]:
    """The samples a variant weights by impact score, chosen by training's own row selection
    (`variants.choose_row`): the rows its `scores_weight` (INVERT/PUNISH; every row for an every-row variant),
    with the loss and texts training gives them. E.g. trace_oracle's PUNISH row with a usable oracle rewrite is
    ℓ_pref(oracle_response, chosen), else dual NPO; no_triage's row is NPO on its ORIGINAL rejected response.
    """
    spec = VARIANTS.get(variant)
    if spec is None or not spec.scorable:
        raise ValueError(f"unknown scoring variant {variant!r}: use one of {SCORING_VARIANTS}")
    out: list[ConflictSample] = []
    for i, row in enumerate(rows):
        choice = choose_row(dict(row), i, spec)
        e = choice.example
        if e is None or not spec.scores_weight(e.category):
            continue
        kind = choice.sample_kind
        responses = (e.dispreferred,) if kind.arity == 1 else (e.preferred, e.dispreferred)
        out.append(ConflictSample(e.row_id, kind, e.prompt, responses))
    return out


def pack_batches(
    tokenizer,
    samples: Sequence[ConflictSample],
    rows_per_batch: int,
    limits: LengthLimits | None = None,
) -> tuple[list[ScoringBatch], TruncationReport]:
    """Tokenise every response row, then pack whole samples (longest first, less padding) into batches."""
    if rows_per_batch < 2:
        raise ValueError("rows_per_batch must be >= 2 (a preference sample reads two rows)")
    for s in samples:
        if len(s.responses) != s.kind.arity:
            raise ValueError(f"sample {s.sample_id!r}: {s.kind.value} needs {s.kind.arity} responses")
    prompts = [s.prompt for s in samples for _ in s.responses]
    responses = [r for s in samples for r in s.responses]
    encoded, report = encode_sequences(tokenizer, prompts, responses, limits)
    spans, start = [], 0
    for s in samples:
        spans.append((start, start + len(s.responses)))
        start += len(s.responses)
    order = sorted(range(len(samples)), key=lambda k: -max(len(encoded[i]) for i in range(*spans[k])))
    pad_id = pad_id_of(tokenizer)
    batches: list[ScoringBatch] = []
    current: list[int] = []

    def flush() -> None:
        if not current:
            return
        seqs, rows = [], []
        for k in current:
            lo, hi = spans[k]
            rows.append(tuple(range(len(seqs), len(seqs) + hi - lo)))
            seqs.extend(encoded[lo:hi])
        batch = collate(seqs, pad_id, pad_to_multiple_of=8)
        ids = [samples[k].sample_id for k in current]
        batches.append(ScoringBatch(batch, ids, [samples[k].kind for k in current], rows))
        current.clear()

    n_rows = 0
    for k in order:
        width = spans[k][1] - spans[k][0]
        if n_rows + width > rows_per_batch:
            flush()
            n_rows = 0
        current.append(k)
        n_rows += width
    flush()
    return batches, report


def gold_samples(gold: Sequence[GoldPair]) -> list[ConflictSample]:
    """Gold pairs as (chosen, rejected) preference samples (ids made unique: a row can appear once per category)."""
    return [
        ConflictSample(f"gold{i}:{g.source_id}", SampleKind.INVERT, g.prompt, (g.chosen, g.rejected))
        for i, g in enumerate(gold)
    ]


@dataclass
class ImpactResult:
    scored: list[ScoredSample]
    weights: NormalisedWeights
    summary: dict[str, Any]
    gold_report: GoldReport
    truncation: TruncationReport
    reference_logps: dict[str, float]  # sequence_key(prompt, response) -> s_ref
    rows: list[dict[str, Any]]  # the input rows with impact_raw / impact_score / impact_kind attached


def score_conflicts(
    model: nn.Module,
    tokenizer,
    rows: Sequence[Mapping[str, Any]],
    *,
    variant: str = "trace",
    settings: LossSettings | None = None,
    gold_size: int = 64,
    seed: int = 0,
    mode: NormaliseMode = "sum",
    rows_per_batch: int = 16,
    limits: LengthLimits | None = None,
    checkpoint: bool = False,
    runtime: Runtime | None = None,
    progress: Callable[[int, int], None] | None = None,
    gold_from: GoldSource = "all",
    shaping: WeightShaping | None = None,
) -> ImpactResult:
    """Gold batch -> g_J at the model's current adapter (θ_ref when fresh) -> raw scores -> normalised weights.

    runtime: with several processes (accelerate launch), each rank takes the gradient of a contiguous shard of the
    gold batches (summed over ranks: the same g_J everywhere) and scores every world_size-th conflict batch; the
    scores are gathered so every rank returns the same, complete result in input order.
    progress: (conflict batches done, total) on this rank, after each batch; it may raise to stop scoring.
    gold_from: which rows the gold batch is drawn from (`gold.gold_candidates`); shaping: cap / uniform mix applied
    after clamping and normalising (`WeightShaping`; None = `DEFAULT_SHAPING`, `WeightShaping()` = none).
    """
    settings = settings or LossSettings()
    if settings.preference_loss not in SCORED_PREF_LOSSES:  # g_J is a DPO gradient; never score one loss, train another
        raise ValueError(f"impact scores support preference_loss {' or '.join(SCORED_PREF_LOSSES)}, "
                         f"not {settings.preference_loss!r}")
    shaping = DEFAULT_SHAPING if shaping is None else shaping
    gold, gold_report = build_gold_batch(gold_candidates(rows, gold_from), gold_size, seed)
    if not gold:
        raise ValueError(
            "the gold batch is empty (no RETAIN/INVERT pairs, and no PUNISH pair with a compliant response): "
            "impact scores need at least one gold pair; use uniform weights (no_impact) instead"
        )
    samples = conflict_samples(rows, variant)
    if not samples:
        raise ValueError(f"no conflicting samples to score for variant {variant!r} (empty conflict set)")
    ids = [s.sample_id for s in samples]
    if len(set(ids)) != len(ids):
        raise ValueError("row ids must be unique to attach scores to rows")
    gold_batches, _ = pack_batches(tokenizer, gold_samples(gold), rows_per_batch, limits)
    batches, truncation = pack_batches(tokenizer, samples, rows_per_batch, limits)
    if runtime is None or runtime.world_size == 1:
        g_j = gold_gradient(model, gold_batches, settings.beta, checkpoint)
        results = score_batches(model, batches, g_j, settings, checkpoint, _batch_progress(progress, len(batches)))
    else:
        g_j = gold_gradient(model, runtime.shard(gold_batches), settings.beta, checkpoint, total=len(gold))
        runtime.all_reduce_sum_(list(g_j.values()))
        mine = batches[runtime.rank :: runtime.world_size]  # batches are sorted by length: strided balances work
        mine_scored = score_batches(model, mine, g_j, settings, checkpoint, _batch_progress(progress, len(mine)))
        results = [s for part in runtime.gather_objects(mine_scored) for s in part]
    check_anchors = shaping.check_anchors and VARIANTS[variant].anchors_retain  # no anchor, nothing to check
    anchors = (anchor_scores(model, tokenizer, rows, gold, settings, rows_per_batch, limits, checkpoint)
               if check_anchors else {})
    by_id = {s.sample_id: s for s in results}
    scored = [by_id[s.sample_id] for s in samples]  # input order
    weights = shape_weights(normalise_scores([s.raw_score for s in scored], mode), shaping,
                            [str(s.kind) for s in scored])
    ref: dict[str, float] = {}
    for sample, result in zip(samples, scored, strict=True):
        for text, value in zip(sample.responses, result.reference_logps, strict=True):
            ref[sequence_key(sample.prompt, text)] = value
    summary = {
        **summarize_scores(scored, weights),
        "variant": variant,
        "gold": {**gold_report.__dict__, "size": gold_report.size, "source": gold_from},
        "shaping": shaping.to_dict(),
        "concentration": weight_concentration(weights.weights),
        "truncation": truncation.to_dict(),
    }
    if check_anchors:
        summary["anchors"] = {"checked": len(anchors), "dropped": sum(1 for v in anchors.values() if v <= 0.0)}
    out_rows = attach_scores(rows, scored, weights)
    for row in out_rows:
        if str(row.get("id")) in anchors:
            row["anchor_raw"] = anchors[str(row.get("id"))]
            row["anchor_weight"] = 1.0 if row["anchor_raw"] > 0.0 else 0.0
    return ImpactResult(scored, weights, summary, gold_report, truncation, ref, out_rows)


def retain_preference_samples(rows: Sequence[Mapping[str, Any]]) -> list[ConflictSample]:
    """RETAIN rows as (chosen, rejected) preference samples, on the texts training anchors: what the anchor check
    scores."""
    samples = []
    for i, row in enumerate(rows):
        e = choose_row(dict(row), i, VARIANTS["trace"]).example
        if e is not None and e.category == Category.RETAIN:
            samples.append(ConflictSample(e.row_id, SampleKind.INVERT, e.prompt, (e.preferred, e.dispreferred)))
    return samples


def anchor_scores(
    model: nn.Module,
    tokenizer,
    rows: Sequence[Mapping[str, Any]],
    gold: Sequence[GoldPair],
    settings: LossSettings,
    rows_per_batch: int,
    limits: LengthLimits | None,
    checkpoint: bool,
) -> dict[str, float]:
    """Raw score of each RETAIN row's preference (chosen over rejected) against the gradient of the gold RETAIN
    pairs (`WeightShaping.check_anchors`); {} when the gold batch has no RETAIN pair (nothing to check against).
    Every rank computes it whole (a few RETAIN rows; no gather needed)."""
    gold_retain = [g for g in gold if g.category == Category.RETAIN]
    samples = retain_preference_samples(rows)
    if not gold_retain or not samples:
        return {}
    gold_batches, _ = pack_batches(tokenizer, gold_samples(gold_retain), rows_per_batch, limits)
    direction = gold_gradient(model, gold_batches, settings.beta, checkpoint)
    batches, _ = pack_batches(tokenizer, samples, rows_per_batch, limits)
    return {s.sample_id: s.raw_score for s in score_batches(model, batches, direction, settings, checkpoint)}


def score_rows_per_batch(config: TrainConfig) -> int:
    """Rows per scoring pass: those of one training micro-batch (2 x batch_size). A scoring pass is a forward and a
    backward like a training step (and takes the same activation checkpointing), so it fits the memory the user
    sized for training. A fixed 64 rows held 8.6 GB of SmolLM2-135M activations (~1.1 MB a token over 30 layers)."""
    return max(2, 2 * config.batch_size)


def score(
    base: ModelSource | str | Path,
    rows: Sequence[Mapping[str, Any]],
    variant: str,
    config: TrainConfig,
    *,
    normalise: NormaliseMode,
    gold_size: int,
    seed: int,
    device: str | None = "cpu",
    dtype: str | None = None,
    runtime: Runtime | None = None,
    progress: Callable[[int, int], None] | None = None,
    gold_from: GoldSource = "all",
    shaping: WeightShaping | None = None,
) -> ImpactResult:
    """The one scoring entry point (service stage, `realign score`/`train`, offline run, benchmarks): load the base
    model with LoRA A seeded like training's (θ_ref), score `variant`'s rows with the loss `config` trains with, free
    the model. Passes are sized and checkpointed like a training micro-batch (`score_rows_per_batch`).

    device: None picks CUDA when present (bf16 there, fp32 on CPU); a `runtime` supplies device, dtype and ranks.
    Scores are taken for `config.loss`, the loss training uses; one scoring does not support is refused (never a
    silent DPO stand-in).
    """
    import torch

    from trace_engine.modeling import attach_lora, load_causal_lm, load_tokenizer

    source = base if isinstance(base, ModelSource) else ModelSource(str(base))
    settings = config.loss
    if runtime is not None:
        device, dtype = runtime.device, runtime.dtype  # type: ignore[assignment]
    tokenizer = load_tokenizer(source)
    model = attach_lora(load_causal_lm(source, device, dtype, config.fused_kernels), config.lora, seed=seed)
    try:
        return score_conflicts(
            model, tokenizer, rows, variant=scored_as(variant), settings=settings, gold_size=gold_size, seed=seed,
            mode=normalise, rows_per_batch=score_rows_per_batch(config),
            limits=LengthLimits(config.max_prompt_len, config.max_len), checkpoint=config.gradient_checkpointing,
            runtime=runtime, progress=progress, gold_from=gold_from, shaping=shaping,
        )
    finally:
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _batch_progress(progress: Callable[[int, int], None] | None, total: int) -> Callable[[int], None] | None:
    return None if progress is None else (lambda done: progress(done, total))


# ---------------------------------------------------------------- normalisation


NormaliseMode = Literal["sum", "mean"]


@dataclass(frozen=True)
class NormalisedWeights:
    """weights: clamped-then-normalised scores; uniform_fallback: no score was positive (see `normalise_scores`)."""

    weights: list[float]
    mode: NormaliseMode
    share_clamped: float
    uniform_fallback: bool


def normalise_scores(raw: Sequence[float], mode: NormaliseMode) -> NormalisedWeights:
    """Clamp at 0, then normalise over the conflict set: `sum` -> weights sum to 1 (published), `mean` -> average 1.

    No damping γ: dividing by γ before the clamp and the normalisation cancels exactly, so it would be a no-op.
    If no score is positive (the gold batch gives no signal), fall back to uniform weights (1/n for `sum`, 1 for
    `mean`) and say so via `uniform_fallback`, rather than silently zeroing every conflict loss.
    """
    if mode not in ("sum", "mean"):
        raise ValueError(f"normalisation mode must be 'sum' or 'mean', got {mode!r}")
    if any(not math.isfinite(r) for r in raw):
        raise ValueError("impact scores contain NaN or inf: refusing to normalise")
    n = len(raw)
    if n == 0:
        return NormalisedWeights([], mode, 0.0, False)
    clamped = [max(0.0, float(r)) for r in raw]
    share = sum(1 for r in raw if r <= 0) / n
    total = math.fsum(clamped)
    if total <= 0.0:
        return NormalisedWeights([1.0 / n if mode == "sum" else 1.0] * n, mode, share, True)
    scale = 1.0 / total if mode == "sum" else n / total
    return NormalisedWeights([c * scale for c in clamped], mode, share, False)


# ---------------------------------------------------------------- output


def summarize_scores(
    scored: Sequence[ScoredSample], weights: NormalisedWeights, top_k: int = 10
) -> dict[str, Any]:
    """Distribution quantiles, share clamped to zero, per-kind counts and the top samples by raw score."""
    raw = sorted(s.raw_score for s in scored)
    by_kind: dict[str, dict[str, float]] = {}
    for kind in SampleKind:
        ks = [s.raw_score for s in scored if s.kind is kind]
        if ks:
            by_kind[kind.value] = {
                "n": len(ks),
                "mean_raw": math.fsum(ks) / len(ks),
                "share_clamped": sum(1 for r in ks if r <= 0) / len(ks),
            }
    order = sorted(range(len(scored)), key=lambda i: scored[i].raw_score, reverse=True)[:top_k]
    return {
        "n_scored": len(scored),
        "mode": weights.mode,
        "share_clamped_to_zero": weights.share_clamped,
        "uniform_fallback": weights.uniform_fallback,
        "raw_quantiles": {f"p{int(q * 100)}": _quantile(raw, q) for q in (0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)},
        "by_kind": by_kind,
        "top": [
            {
                "id": scored[i].sample_id,
                "kind": scored[i].kind.value,
                "raw": scored[i].raw_score,
                "weight": weights.weights[i],
            }
            for i in order
        ],
    }


def _quantile(sorted_values: Sequence[float], q: float) -> float | None:
    """Linear-interpolation quantile of an already sorted list; None when empty."""
    if not sorted_values:
        return None
    pos = q * (len(sorted_values) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def attach_scores(
    rows: Sequence[Mapping[str, Any]], scored: Sequence[ScoredSample], weights: NormalisedWeights
) -> list[dict[str, Any]]:
    """Copy of `rows` with the score fields added (matched by `id`)."""
    by_id = {s.sample_id: (s, w) for s, w in zip(scored, weights.weights, strict=True)}
    out = []
    for row in rows:
        new = dict(row)
        hit = by_id.get(str(row.get("id")))
        new["impact_raw"] = hit[0].raw_score if hit else None
        new["impact_score"] = hit[1] if hit else None
        new["impact_kind"] = hit[0].kind.value if hit else None
        out.append(new)
    return out


def write_scored(path: str | Path, result: ImpactResult) -> None:
    """Write `path` (the scored rows as training reads them, anchor weights included) and `path` with suffix
    `.summary.json` (the result's summary)."""
    write_jsonl(path, result.rows)
    write_json(Path(path).with_suffix(".summary.json"), result.summary)


# ---------------------------------------------------------------- weight shaping (after clamp + normalise)


@dataclass(frozen=True)
class WeightShaping:
    """What happens to the clamped, normalised impact weights before training (issue 12: noise robustness).

    cap: no row may weigh more than `cap` times the uniform weight (total / n); the excess goes to the other
         positive rows in proportion (water-filling), so one noisy row cannot carry the whole conflict loss.
    uniform_mix: λ in [0, 1]; w <- (1 - λ) w + λ · total / n, i.e. a floor under every conflict row.
    cap_per_kind: apply the cap within each sample kind (INVERT, PUNISH, ...) against that kind's own uniform weight,
         so capping a kind's outliers never moves weight to another kind (whose losses have another scale).
    balance_kinds: impact ranks rows within a kind but never moves weight between kinds: each kind keeps the share
         of the total that uniform weights give it (n_kind / n), and a kind whose rows all clamp to 0 gets that share
         evenly (the cap then applies per kind). Why: on the real-text world every PUNISH row's first-order impact is
         negative (its answer shares its first sentences with the INVERT targets), yet PUNISH is what teaches the
         caveat; dropping it lost INVERT too (docs/benchmarks.md).
    gate: the score decides WHICH rows train, not how much: a row scoring > 0 keeps the uniform weight (1 for
         `mean`, 1/n for `sum`), the others 0; a kind none of whose rows scores > 0 keeps uniform weights (impact
         gives that kind no signal). The cap then has nothing to do. Why: on the real-text world the signs of the
         scores find every corrupted INVERT row (AUC 1.0 at 10% and 20% triage noise) while their magnitudes lost
         to uniform weights (docs/benchmarks.md, bench/quality_real_noise_probe.py).
    check_anchors: also score each RETAIN row as a preference (chosen over rejected) against the gradient of the
         gold batch's RETAIN pairs, and drop the KL anchor of a row that scores <= 0 (its preference contradicts
         the gold RETAIN pairs: a swapped pair would anchor the wrong response). The anchor's own gradient is 0 at
         θ_ref, so first-order impact cannot weigh it otherwise.
    Both keep the total (the `sum`/`mean` scale), except that a cap cannot hand weight to rows clamped at 0: with
    fewer than n / cap positive rows the total shrinks (said by `weight_concentration`'s `total`).
    """

    cap: float | None = None
    uniform_mix: float = 0.0
    cap_per_kind: bool = False
    balance_kinds: bool = False
    gate: bool = False
    check_anchors: bool = False

    def __post_init__(self) -> None:
        if self.cap is not None and not (math.isfinite(self.cap) and self.cap >= 1.0):
            raise ValueError(f"weight cap must be a finite multiple of the uniform weight >= 1, got {self.cap}")
        if not (math.isfinite(self.uniform_mix) and 0.0 <= self.uniform_mix <= 1.0):
            raise ValueError(f"uniform mix must be in [0, 1], got {self.uniform_mix}")

    @property
    def active(self) -> bool:
        return self.cap is not None or self.uniform_mix > 0.0 or self.balance_kinds or self.gate

    def to_dict(self) -> dict[str, Any]:
        return {"cap": self.cap, "uniform_mix": self.uniform_mix, "cap_per_kind": self.cap_per_kind,
                "balance_kinds": self.balance_kinds, "gate": self.gate, "check_anchors": self.check_anchors}


DEFAULT_SHAPING = WeightShaping(cap=DEFAULT_WEIGHT_CAP, check_anchors=DEFAULT_CHECK_ANCHORS)


def cap_weights(weights: Sequence[float], cap: float) -> list[float]:
    """Water-filling cap at `cap` × mean weight; the excess is spread over uncapped positive rows pro rata."""
    n = len(weights)
    if n == 0:
        return []
    total = math.fsum(weights)
    if total <= 0.0:
        return [float(w) for w in weights]
    limit = cap * total / n
    out = [float(w) for w in weights]
    capped: set[int] = set()
    while True:
        over = [i for i, w in enumerate(out) if i not in capped and w > limit]
        if not over:
            return out
        excess = math.fsum(out[i] - limit for i in over)
        for i in over:
            out[i] = limit
            capped.add(i)
        free = [i for i, w in enumerate(out) if i not in capped and w > 0.0]
        free_total = math.fsum(out[i] for i in free)
        if free_total <= 0.0:
            return out  # nobody left to take the excess: the total shrinks
        for i in free:
            out[i] += excess * out[i] / free_total


def mix_uniform(weights: Sequence[float], lam: float) -> list[float]:
    """(1 - λ) w + λ · mean(w): the same total, every row at least λ · mean."""
    if not weights:
        return []
    mean = math.fsum(weights) / len(weights)
    return [(1.0 - lam) * float(w) + lam * mean for w in weights]


def group_indices(groups: Sequence[str]) -> list[list[int]]:
    """The positions of each group's rows, one list per group."""
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    return list(by_group.values())


def cap_weights_by_group(weights: Sequence[float], groups: Sequence[str], cap: float) -> list[float]:
    """`cap_weights` within each group (its own uniform weight, its own excess): group totals are kept."""
    out = [float(w) for w in weights]
    for index in group_indices(groups):
        for i, w in zip(index, cap_weights([out[i] for i in index], cap), strict=True):
            out[i] = w
    return out


def balance_kinds(weights: Sequence[float], groups: Sequence[str]) -> list[float]:
    """Rescale within each group so it carries n_group / n of the total (uniform weights' share); a group whose
    weights are all 0 gets its share spread evenly."""
    n, total = len(weights), math.fsum(weights)
    out = [float(w) for w in weights]
    if n == 0 or total <= 0.0:
        return out
    for index in group_indices(groups):
        target, have = total * len(index) / n, math.fsum(out[i] for i in index)
        for i in index:
            out[i] = out[i] * target / have if have > 0.0 else target / len(index)
    return out


def gate_weights(weights: Sequence[float], groups: Sequence[str], uniform: float) -> list[float]:
    """`uniform` for every row with a positive weight, 0 for the rest; a group with no positive row gets `uniform`
    everywhere (no signal there, so no row of it is dropped)."""
    out = [0.0] * len(weights)
    for index in group_indices(groups):
        keep_all = not any(weights[i] > 0.0 for i in index)
        for i in index:
            out[i] = uniform if keep_all or weights[i] > 0.0 else 0.0
    return out


def shape_weights(weights: NormalisedWeights, shaping: WeightShaping,
                  groups: Sequence[str] | None = None) -> NormalisedWeights:
    """Gate, or balance kinds then cap (it reads the impact ranking); then mix with uniform. `groups`: each weight's
    sample kind, needed for `gate`, `balance_kinds` and `cap_per_kind`."""
    values = list(weights.weights)
    per_kind = shaping.balance_kinds or shaping.cap_per_kind or shaping.gate
    if per_kind and (groups is None or len(groups) != len(values)):
        raise ValueError("per-kind weight shaping needs each weight's kind")
    if shaping.gate:  # 0 or the uniform weight: nothing for balancing or a cap to do
        uniform = 1.0 if weights.mode == "mean" else 1.0 / max(1, len(values))
        values = gate_weights(values, groups, uniform)  # type: ignore[arg-type]
    else:
        if shaping.balance_kinds:
            values = balance_kinds(values, groups)  # type: ignore[arg-type]
        if shaping.cap is not None and per_kind:
            values = cap_weights_by_group(values, groups, shaping.cap)  # type: ignore[arg-type]
        elif shaping.cap is not None:
            values = cap_weights(values, shaping.cap)
    if shaping.uniform_mix > 0.0:
        values = mix_uniform(values, shaping.uniform_mix)
    return replace(weights, weights=values)


def weight_concentration(weights: Sequence[float], top_k: int = 5) -> dict[str, float]:
    """How few rows carry the weight: share of the top-k rows, the largest row's share, and the effective sample
    size (Σw)² / Σw² (n for uniform weights, 1 when one row has everything) also as a share of n."""
    n = len(weights)
    total = math.fsum(weights)
    if n == 0 or total <= 0.0:
        return {"n": n, "total": total, "top_k": top_k, "top_k_share": 0.0, "max_share": 0.0, "ess": 0.0,
                "ess_share": 0.0, "share_zero": 1.0 if n else 0.0}
    ranked = sorted(weights, reverse=True)
    ess = total * total / math.fsum(w * w for w in weights)
    return {
        "n": n, "total": total, "top_k": top_k,
        "top_k_share": math.fsum(ranked[:top_k]) / total,
        "max_share": ranked[0] / total,
        "ess": ess,
        "ess_share": ess / n,
        "share_zero": sum(1 for w in weights if w <= 0.0) / n,
    }
