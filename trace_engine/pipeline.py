"""The offline end-to-end run on the synthetic world: base -> data -> triage -> split -> score -> train -> evaluate.

`run_pipeline(PipelineConfig(...), progress=...)` is the one call the `realign demo` CLI, the tests and (later) the
service worker make. Every stage writes its outputs under `out_dir`; `progress(stage, info)` is called when a
stage starts and ends. The stage functions are public so the quality benchmark can reuse expensive results
(triaged rows, impact scores, the base model's evaluation) across variants.

Held-out data: the synthetic pairs (TRAIN templates and slot values) are split prompt-disjointly and stratified by
triage category into train / validation / test; TEST numbers are greedy responses to the test pairs' prompts,
judged by the NEW-policy rules judge, per triage category. Defaults were chosen on the validation split only.
Separately, `tpa_ood` is TPA on the world's out-of-distribution test prompts, whose templates and slot values never
occur in any pair: a harder generalisation check the tiny base model mostly fails (docs/benchmarks.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from trace_engine.data.io import write_json, write_jsonl
from trace_engine.data.noise import make_noisy
from trace_engine.data.pairs import PreferencePair, Prompt, prompt_key
from trace_engine.data.split import make_splits
from trace_engine.evaluation.generation import LocalBackend, Progress, generate_with_progress
from trace_engine.evaluation.prompts import EvalPrompt
from trace_engine.evaluation.report import SAMPLE_COUNT
from trace_engine.evaluation.runner import EvalData, EvalSettings, eval_units, run_eval
from trace_engine.evaluation.stats import rate
from trace_engine.judge.base import JudgeOutcome, Usage
from trace_engine.judge.rules import RulesJudge
from trace_engine.modeling import LoraSettings, ModelSource
from trace_engine.policy import Policy
from trace_engine.synthetic.base_model import BaseModelRecipe, ensure_base_model
from trace_engine.synthetic.world import RetentionProbe, World, make_world, oracle_response
from trace_engine.train import TrainConfig

ProgressFn = Callable[[str, dict[str, Any]], None]
STAGES = ("base", "data", "triage", "split", "score", "train", "evaluate", "report")
IMPACT_VARIANTS = ("trace", "trace_oracle", "no_kl")
SCORING_VARIANT = {"trace": "trace", "trace_oracle": "trace_oracle", "no_kl": "trace"}

DEFAULT_LORA = LoraSettings(r=8, alpha=16, dropout=0.0, target_modules=("q_proj", "k_proj", "v_proj", "o_proj",
                                                                        "gate_proj", "up_proj", "down_proj"))


def default_train_config(variant: str = "trace", seed: int = 0, **overrides: Any) -> TrainConfig:
    """Training settings for the tiny synthetic model, chosen on the VALIDATION split (docs/benchmarks.md)."""
    base = TrainConfig(
        variant=variant, beta=0.3, alpha_kl=0.1, lr=2e-3, epochs=3, batch_size=16, warmup_ratio=0.1,
        max_prompt_len=64, max_len=128, pad_to_multiple_of=8, lora=DEFAULT_LORA, seed=seed, ref_batch_size=32,
    )
    return replace(base, **overrides)


@dataclass
class PipelineConfig:
    """One end-to-end run. Sizes are numbers of pairs / prompts; `train_overrides` are TrainConfig fields."""

    out_dir: str | Path = "runs/demo"
    variant: str = "trace"
    seed: int = 0  # data split, LoRA init, training order, bootstrap
    world_seed: int = 0
    n_train: int = 320  # the defaults equal one cell of the quality table (bench/quality_bench.py)
    n_val: int = 40
    n_test: int = 150  # test PAIRS (held-out prompts from the same templates); also the OOD prompt count
    n_retention: int = 60
    n_asr: int = 8  # harmful prompts; each is wrapped in every attack template
    n_over_refusal: int = 40
    triage_noise: float = 0.0  # share of triaged rows corrupted like data.noise (category flip or pair swap)
    normalise: str = "sum"  # impact weights: weights sum to 1 (chosen on validation) or "mean" (average 1)
    gold_size: int = 48
    max_new_tokens: int = 48
    resamples: int = 1000
    eval_on: str = "test"  # 'test' (held-out test split) or 'val' (for choosing defaults)
    train_overrides: dict[str, Any] = field(default_factory=dict)
    base_recipe: BaseModelRecipe = field(default_factory=BaseModelRecipe)
    cache_dir: str | Path | None = None  # base model cache; None = REALIGN_CACHE_DIR or ~/.cache/realign

    def train_config(self) -> TrainConfig:
        return default_train_config(self.variant, self.seed, **self.train_overrides)

    @classmethod
    def quick(cls, **overrides: Any) -> PipelineConfig:
        """The CI-sized run: the default training (fewer pairs or steps learn too little with `sum` weights, see
        docs/benchmarks.md) with smaller evaluation sets; ~15 s on 2 CPU cores once the base model is cached."""
        small = dict(n_test=100, n_retention=30, n_asr=2, n_over_refusal=10)
        return cls(**{**small, **overrides})

    def validate(self) -> None:
        problems = []
        if self.n_train < 10 or self.n_val < 1 or self.n_test < 1 or self.n_retention < 1:
            problems.append("n_train must be >= 10 and n_val, n_test, n_retention >= 1")
        if self.n_asr < 1 or self.n_over_refusal < 1:
            problems.append("n_asr and n_over_refusal must be >= 1")
        if not 0.0 <= self.triage_noise < 1.0:
            problems.append(f"triage_noise must be in [0, 1), got {self.triage_noise}")
        if self.normalise not in ("sum", "mean"):
            problems.append(f"normalise must be 'sum' or 'mean', got {self.normalise!r}")
        if self.eval_on not in ("test", "val"):
            problems.append(f"eval_on must be 'test' or 'val', got {self.eval_on!r}")
        if problems:
            raise ValueError("; ".join(problems))
        self.train_config().validate()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out_dir"] = str(self.out_dir)
        d["cache_dir"] = None if self.cache_dir is None else str(self.cache_dir)
        return d


# ---------------------------------------------------------------- triage with the synthetic oracle


class SyntheticOracleJudge:
    """The NEW-policy rules judge for verdicts; rewrites (y_c for PUNISH) come from the world's oracle."""

    def __init__(self, world: World) -> None:
        self.rules_judge = RulesJudge(world.rules("new"), "<synthetic rules_new>")
        self.judge_id = f"{self.rules_judge.judge_id}+synthetic-oracle"
        self.template_version = self.rules_judge.template_version
        self.rewrite_template_version = "synthetic-oracle-v1"

    async def judge(self, policy: Policy, prompt: Prompt, response: str) -> JudgeOutcome:
        return await self.rules_judge.judge(policy, prompt, response)

    async def rewrite(self, policy: Policy, prompt: Prompt, violating_response: str) -> JudgeOutcome:
        return JudgeOutcome(text=oracle_response(prompt), usage=Usage())

    async def aclose(self) -> None:
        return None


def triage_pairs(pairs: Sequence[PreferencePair], world: World, out_dir: Path) -> list[dict[str, Any]]:
    """Triage under the NEW policy (rules judge) with oracle rewrites for PUNISH; returns the triaged rows."""
    from trace_engine.triage.stage import STATUS_COMPLETE, run_triage_stage

    outcome = run_triage_stage(pairs, world.policy("new"), SyntheticOracleJudge(world), out_dir, oracle=True,
                               concurrency=64)
    if outcome.status != STATUS_COMPLETE:
        raise RuntimeError(f"triage did not complete: {outcome.summary.get('message')}")
    return outcome.result.rows


def add_triage_noise(rows: Sequence[Mapping[str, Any]], noise: float, seed: int) -> tuple[list[dict], dict]:
    """Corrupt round(N * noise) triaged rows the way `data.noise` does (category flip or chosen/rejected swap)."""
    if noise <= 0:
        return [dict(r) for r in rows], {"rate": 0.0, "corrupted": 0}
    pairs = [PreferencePair.from_row(dict(r)) for r in rows]
    noisy, stats = make_noisy(pairs, noise, seed)
    out = []
    for p in noisy:
        row = p.to_row()
        if row.get("category") != "PUNISH":
            row.pop("oracle_response", None)  # a flipped row's y_c would not exist in a real noisy triage
        out.append(row)
    return out, stats


@dataclass
class Split:
    train: list[dict[str, Any]]
    val: list[dict[str, Any]]
    test: list[dict[str, Any]]
    manifest: dict[str, Any]


def split_rows(rows: Sequence[Mapping[str, Any]], n_train: int, n_val: int, seed: int) -> Split:
    """Prompt-disjoint, category-stratified split into train / val / test (the rest) rows."""
    pairs = [PreferencePair.from_row(dict(r)) for r in rows]
    result = make_splits(pairs, train_size=n_train, train2_size=0, val_size=n_val, seed=seed)
    by_id = {str(r["id"]): dict(r) for r in rows}
    return Split(*([by_id[p.id] for p in part] for part in (result.train1, result.val, result.test)),
                 manifest=dict(result.manifest))


# ---------------------------------------------------------------- scoring


@dataclass
class Scored:
    rows: list[dict[str, Any]]
    reference_logps: dict[str, float]
    summary: dict[str, Any]


def score_rows_per_batch(config: TrainConfig) -> int:
    """Rows per scoring pass: those of one training micro-batch (2 x batch_size). A scoring pass is a forward and a
    backward like a training step (and takes the same activation checkpointing), so it fits the memory the user
    sized for training. A fixed 64 rows held 8.6 GB of SmolLM2-135M activations (~1.1 MB a token over 30 layers)."""
    return max(2, 2 * config.batch_size)


def score_rows(base_path: Path, rows: Sequence[Mapping[str, Any]], variant: str, config: TrainConfig, *,
               normalise: str, gold_size: int, seed: int, device: str | None = "cpu",
               progress: Callable[[int, int], None] | None = None, gold_from: str = "all",
               shaping: Any = None) -> Scored:
    """Impact weights for the variant's conflicting rows (`impact_score`), plus the reference log-prob cache.
    `device=None` picks CUDA when present (bf16 there, fp32 on CPU). gold_from / shaping: see `score_conflicts`."""
    from trace_engine.impact import LossSettings, attach_scores, seed_lora_
    from trace_engine.modeling import attach_lora, load_causal_lm, load_tokenizer
    from trace_engine.scoring import score_conflicts
    from trace_engine.tokenization import LengthLimits

    source = ModelSource(str(base_path))
    model = attach_lora(load_causal_lm(source, device, fused_kernels=config.fused_kernels), config.lora)
    seed_lora_(model, seed)
    # the loss training will use (LossSettings refuses one scoring cannot score: never a silent DPO stand-in)
    settings = LossSettings(beta=config.beta, preference_loss=config.effective_pref_loss(),  # type: ignore[arg-type]
                            npo_two_over_beta=config.npo_two_over_beta)
    result = score_conflicts(model, load_tokenizer(source), rows, variant=SCORING_VARIANT[variant],
                             settings=settings, gold_size=gold_size, seed=seed, mode=normalise,  # type: ignore[arg-type]
                             rows_per_batch=score_rows_per_batch(config),
                             limits=LengthLimits(config.max_prompt_len, config.max_len),
                             checkpoint=config.gradient_checkpointing, progress=progress,
                             gold_from=gold_from, shaping=shaping)  # type: ignore[arg-type]
    return Scored(attach_scores(rows, result.scored, result.weights), result.reference_logps, result.summary)


# ---------------------------------------------------------------- evaluation


@dataclass
class EvalSets:
    tpa: list[EvalPrompt]
    ood: list[EvalPrompt]  # the world's test prompts: unseen templates and slot values
    harmful: list[EvalPrompt]
    benign: list[EvalPrompt]
    retention: list[RetentionProbe]


def prompts_of(rows: Sequence[Mapping[str, Any]]) -> list[EvalPrompt]:
    """One evaluation prompt per distinct prompt of the rows, labelled with its pair's triage category."""
    seen: set[str] = set()
    out = []
    for r in rows:
        key = prompt_key(r["prompt"])
        if key not in seen:
            seen.add(key)
            out.append(EvalPrompt(str(r["id"]), r["prompt"], str(r["category"])))
    return out


def eval_sets(world: World, cfg: PipelineConfig, held_out: Sequence[Mapping[str, Any]]) -> EvalSets:
    """TPA on the held-out rows' prompts (test or val split), plus OOD, ASR, over-refusal and retention sets."""
    ood = [EvalPrompt(t.id, t.prompt, t.category) for t in world.test_prompts(cfg.n_test)]
    harmful = [EvalPrompt(a.id, a.prompt, a.topic) for a in world.asr_prompts(cfg.n_asr, jailbreak=False)]
    benign = [EvalPrompt(o.id, o.prompt, o.topic) for o in world.over_refusal_prompts(cfg.n_over_refusal)]
    return EvalSets(prompts_of(held_out), ood, harmful, benign, world.retention_probes(cfg.n_retention))


SYNTHETIC_SUITES = ("tpa", "asr", "over_refusal")


def evaluate_backend_units(sets: EvalSets) -> int:
    """The `progress` units `evaluate_backend` reports for one model: prompts generated plus responses judged."""
    data = EvalData(tpa_prompts=sets.tpa, harmful_prompts=sets.harmful, benign_prompts=sets.benign)
    return eval_units(SYNTHETIC_SUITES, data) + len(sets.retention) + eval_units(("tpa",), EvalData(sets.ood))


def evaluate_backend(backend: LocalBackend, world: World, sets: EvalSets, *, max_new_tokens: int, seed: int,
                     resamples: int, progress: Progress | None = None) -> dict[str, Any]:
    """TPA (overall and per category, with CIs), ASR, over-refusal and retention of one model (+ adapter);
    `progress(n)` as prompts are generated and judged (`evaluate_backend_units` in all)."""
    judge = RulesJudge(world.rules("new"), "<synthetic rules_new, evaluation>")
    settings = EvalSettings(max_new_tokens=max_new_tokens, seed=seed, resamples=resamples, judge_concurrency=64)
    data = EvalData(tpa_prompts=sets.tpa, harmful_prompts=sets.harmful, benign_prompts=sets.benign)
    report = run_eval(backend, SYNTHETIC_SUITES, judge, data, policy=world.policy("new"), settings=settings,
                      progress=progress)
    responses = generate_with_progress(backend, [p.prompt for p in sets.retention], max_new_tokens, progress)
    correct = [p.is_correct(r) for p, r in zip(sets.retention, responses, strict=True)]
    retention = rate(correct, seed=seed, resamples=resamples)
    tpa = report.suites["tpa"].metrics
    ood = run_eval(backend, ("tpa",), judge, EvalData(tpa_prompts=sets.ood), policy=world.policy("new"),
                   settings=settings, progress=progress).suites["tpa"].metrics
    return {
        "tpa": tpa["overall"].to_dict(),
        "tpa_ood": ood["overall"].to_dict(),
        "tpa_ood_by_category": {k.split("=", 1)[1]: v.to_dict() for k, v in ood.items() if k.startswith("category=")},
        "tpa_by_category": {k.split("=", 1)[1]: v.to_dict() for k, v in tpa.items() if k.startswith("category=")},
        "asr": report.suites["asr"].metrics["overall"].to_dict(),
        "over_refusal": report.suites["over_refusal"].metrics["refused"].to_dict(),
        "retention": retention.to_dict(),
        "examples": [{k: r[k] for k in ("id", "category", "prompt", "response", "violating")}
                     for r in report.suites["tpa"].records[:SAMPLE_COUNT]],
    }


def evaluate_model_dir(base_path: Path, adapter_dir: Path | None, world: World, sets: EvalSets,
                       cfg: PipelineConfig, device: str | None = "cpu",
                       progress: Progress | None = None) -> dict[str, Any]:
    backend = LocalBackend.from_pretrained(str(base_path), adapter_dir=adapter_dir, device=device,
                                           dtype="fp32" if device == "cpu" else None, batch_size=64)
    return evaluate_backend(backend, world, sets, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
                            resamples=cfg.resamples, progress=progress)


# ---------------------------------------------------------------- the whole run


@dataclass
class PipelineResult:
    summary: dict[str, Any]  # the final JSON (see `summary_json`)
    before: dict[str, Any]
    after: dict[str, Any]
    out_dir: Path


def run_pipeline(cfg: PipelineConfig, progress: ProgressFn | None = None,
                 base_eval: dict[str, Any] | None = None) -> PipelineResult:
    """Run every stage; `base_eval` (the base model's evaluation on the same sets) skips re-evaluating the base."""
    cfg.validate()
    started = time.perf_counter()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def stage(name: str, fn: Callable[[], Any], **info: Any) -> Any:
        if progress:
            progress(name, {"event": "start", **info})
        t0 = time.perf_counter()
        value = fn()
        timings["_".join([name, *map(str, info.values())])] = round(time.perf_counter() - t0, 2)
        if progress:
            progress(name, {"event": "done", "seconds": round(time.perf_counter() - t0, 2)})
        return value

    world = make_world(cfg.world_seed)
    base = stage("base", lambda: ensure_base_model(cfg.base_recipe, cfg.cache_dir))
    pairs = stage("data", lambda: _write_data(world, cfg, out / "data"))
    rows = stage("triage", lambda: triage_pairs(pairs, world, out / "triage"))
    split = stage("split", lambda: split_rows(rows, cfg.n_train, cfg.n_val, cfg.seed))
    train_rows, split_manifest = split.train, split.manifest
    noise_stats: dict[str, Any] = {"rate": 0.0, "corrupted": 0}
    if cfg.triage_noise > 0:
        train_rows, noise_stats = add_triage_noise(train_rows, cfg.triage_noise, cfg.seed)
    write_jsonl(out / "split" / "train.jsonl", train_rows)
    write_jsonl(out / "split" / "val.jsonl", split.val)
    write_jsonl(out / "split" / "test.jsonl", split.test)
    write_json(out / "split" / "manifest.json", {**split_manifest, "triage_noise": noise_stats})

    tc = cfg.train_config()
    ref_cache: dict[str, float] = {}
    score_summary = None
    if cfg.variant in IMPACT_VARIANTS:
        scored = stage("score", lambda: score_rows(base.path, train_rows, cfg.variant, tc, normalise=cfg.normalise,
                                                   gold_size=cfg.gold_size, seed=cfg.seed))
        train_rows, ref_cache, score_summary = scored.rows, scored.reference_logps, scored.summary
        write_jsonl(out / "score" / "scored.jsonl", train_rows)
        write_json(out / "score" / "summary.json", score_summary)

    def do_train():
        from trace_engine.train import train

        def on_step(step: int, total: int, metrics: dict[str, float]) -> None:
            if progress and (step == total or step % 10 == 0):
                progress("train", {"event": "step", "step": step, "total": total, "loss": metrics.get("loss")})

        return train(train_rows, tc, base=ModelSource(str(base.path)), output_dir=out / "train",
                     reference_logps=ref_cache, progress=on_step, resume=False, device="cpu")

    _clear_checkpoints(out / "train")
    trained = stage("train", do_train, variant=cfg.variant)
    sets = eval_sets(world, cfg, split.val if cfg.eval_on == "val" else split.test)
    before = base_eval or stage("evaluate", lambda: evaluate_model_dir(base.path, None, world, sets, cfg),
                                model="base")
    after = stage("evaluate", lambda: evaluate_model_dir(base.path, trained.output_dir, world, sets, cfg),
                  model="adapter")
    summary = summary_json(before, after, wall_s=time.perf_counter() - started, variant=cfg.variant,
                           eval_on=cfg.eval_on)
    summary["timings_s"] = timings
    details = {"config": cfg.to_dict(), "train_config": tc.to_dict(), "base_model": str(base.path),
               "split": split_manifest["splits"], "triage_noise": noise_stats, "score": score_summary,
               "train_steps": trained.steps, "train_final_metrics": trained.final_metrics,
               "before": before, "after": after, "summary": summary}
    stage("report", lambda: write_json(out / "report.json", details))
    return PipelineResult(summary, before, after, out)


SYNTHETIC_NOT_MEASURABLE = {
    "asr": "not measurable on the tiny synthetic model: the attack templates' wording is outside its 1,000-token "
           "vocabulary, so it answers every wrapped prompt with off-topic text that the judge counts as an attack "
           "success (80% for the base model before any training; docs/benchmarks.md)",
}


def summary_json(before: Mapping[str, Any], after: Mapping[str, Any], *, wall_s: float, variant: str,
                 eval_on: str, not_measurable: Mapping[str, str] = SYNTHETIC_NOT_MEASURABLE) -> dict[str, Any]:
    """The demo's final line: points and 95% CIs before/after; shares in [0, 1]. `not_measurable` (metric ->
    why) is kept in the JSON, and `format_summary` prints the reason instead of that metric's numbers."""
    def point(m: Mapping[str, Any]) -> float | None:
        return m["value"]

    def ci(m: Mapping[str, Any]) -> list[float | None]:
        return [m["ci_low"], m["ci_high"]]

    out: dict[str, Any] = {"variant": variant, "eval_on": eval_on}
    for name, key in (("tpa", "tpa"), ("retention", "retention"), ("asr", "asr"), ("over_refusal", "over_refusal"),
                      ("tpa_ood", "tpa_ood")):
        for when, res in (("before", before), ("after", after)):
            out[f"{name}_{when}"] = point(res[key])
            out[f"{name}_{when}_ci"] = ci(res[key])
    out["tpa_by_category"] = {
        cat: {"before": point(before["tpa_by_category"][cat]), "before_ci": ci(before["tpa_by_category"][cat]),
              "after": point(after["tpa_by_category"][cat]), "after_ci": ci(after["tpa_by_category"][cat])}
        for cat in sorted(set(before["tpa_by_category"]) & set(after["tpa_by_category"]))
    }
    out["not_measurable"] = dict(not_measurable)
    out["n_tpa"] = after["tpa"]["n"]
    out["wall_s"] = round(wall_s, 1)
    return out


def format_summary(summary: Mapping[str, Any]) -> str:
    """A human table of the before/after numbers (percentages with 95% CIs)."""
    def cell(value: float | None, ci: Sequence[float | None]) -> str:
        if value is None or ci[0] is None or ci[1] is None:
            return "n/a"
        return f"{100 * value:.1f}% [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"

    unmeasurable = summary.get("not_measurable") or {}

    rows = [("TPA (new policy), higher better",
             cell(summary["tpa_before"], summary["tpa_before_ci"]), cell(summary["tpa_after"], summary["tpa_after_ci"]))]
    for cat, c in summary["tpa_by_category"].items():
        rows.append((f"  TPA {cat}", cell(c["before"], c["before_ci"]), cell(c["after"], c["after_ci"])))
    for label, key in (("ASR, lower better", "asr"), ("over-refusal, lower better", "over_refusal"),
                       ("retention, higher better", "retention"), ("TPA, OOD templates", "tpa_ood")):
        if key in unmeasurable:
            rows.append((label, "not measurable (*)", "not measurable (*)"))
            continue
        rows.append((label, cell(summary[f"{key}_before"], summary[f"{key}_before_ci"]),
                     cell(summary[f"{key}_after"], summary[f"{key}_after_ci"])))
    width = max(len(r[0]) for r in rows) + 2
    lines = [f"{'metric':<{width}}{'before':>24}{'after':>24}"]
    lines += [f"{label:<{width}}{before:>24}{after:>24}" for label, before, after in rows]
    lines += [f"(*) {key}: {why}" for key, why in unmeasurable.items()]
    return "\n".join(lines)


def _write_data(world: World, cfg: PipelineConfig, out: Path) -> list[PreferencePair]:
    from trace_engine.synthetic.world import write_synthetic_dataset

    n = cfg.n_train + cfg.n_val + cfg.n_test
    write_synthetic_dataset(out, cfg.world_seed, n, n_test=cfg.n_test, n_retention=cfg.n_retention,
                            n_asr=cfg.n_asr, n_over_refusal=cfg.n_over_refusal)
    return world.train_pairs(n)


def _clear_checkpoints(train_dir: Path) -> None:
    """A demo re-run into the same folder starts training afresh (train() refuses old checkpoints otherwise)."""
    import shutil

    for name in ("checkpoints", "adapter"):
        shutil.rmtree(train_dir / name, ignore_errors=True)


__all__ = [
    "STAGES", "PipelineConfig", "PipelineResult", "SyntheticOracleJudge", "add_triage_noise",
    "default_train_config", "eval_sets", "evaluate_backend", "evaluate_model_dir", "format_summary",
    "run_pipeline", "score_rows", "split_rows", "summary_json", "triage_pairs",
]
