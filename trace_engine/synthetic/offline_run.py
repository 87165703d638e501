"""The offline end-to-end run on the synthetic world: base -> data -> triage -> split -> score -> train -> evaluate.

`run_pipeline(PipelineConfig(...), progress=...)` is the one call the `realign demo` CLI and the tests make (the
service runs its own stages; it shares only `scoring.score`, `synthetic.evaluation` and `synthetic.oracle_judge`). Every stage writes its outputs under `out_dir`; `progress(stage, info)` is called when a
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

from trace_engine.categories import Category
from trace_engine.config import LoraSettings, TrainConfig
from trace_engine.data.io import write_json, write_jsonl
from trace_engine.data.noise import make_noisy
from trace_engine.data.pairs import PreferencePair
from trace_engine.data.split import make_splits
from trace_engine.modeling import ModelSource
from trace_engine.scoring import score
from trace_engine.synthetic.base_model import BaseModelRecipe, ensure_base_model
from trace_engine.synthetic.evaluation import eval_sets, evaluate_model_dir, summary_json
from trace_engine.synthetic.oracle_judge import SyntheticOracleJudge
from trace_engine.synthetic.world import World, make_world
from trace_engine.variants import VARIANTS

ProgressFn = Callable[[str, dict[str, Any]], None]
STAGES = ("base", "data", "triage", "split", "score", "train", "evaluate", "report")
IMPACT_VARIANTS = tuple(name for name, spec in VARIANTS.items() if spec.needs_scores)

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
        if row.get("category") != Category.PUNISH:
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
        scored = stage("score", lambda: score(base.path, train_rows, cfg.variant, tc, normalise=cfg.normalise,
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

