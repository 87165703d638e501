"""TRACE under noisy triage on the synthetic policy shift: why it collapses, and which remedy (chosen on VALIDATION).

For each seed the triaged pool is split exactly as `bench/quality_bench.py` does (320 train / 40 val / test), the
training rows get triage noise as `offline_run.add_triage_noise` does (nested, seeded), and every setting is scored,
trained and evaluated on the validation split (`--on val`, for choosing) or the test split (`--on test`, for the
table). Besides TPA, each line records what the impact weights look like: share clamped to 0, the top-5 rows' share
of the total weight, the effective sample size (Σw)²/Σw² as a share of the conflict set, the share of the total
weight on corrupted rows, and how many gold-batch pairs are corrupted.

A setting is a JSON object: `normalise` ('sum' | 'mean'), `cap` (max weight as a multiple of the uniform weight),
`cap_per_kind` (the cap within each sample kind), `uniform_mix` (λ), `gold` ('all' | 'trusted' | 'clean'), `trusted`
(K rows marked trusted: a seeded stratified subset of the training rows, restored to their clean triage as a person
checking them would), `gate` (impact decides which rows train, not how much), `check_anchors` (drop RETAIN anchors
whose preference contradicts the gold RETAIN pairs), `variant`.
`gold: clean` is a diagnostic, not a method: the gold batch from every uncorrupted row (which a user cannot know).

Run: `.venv/bin/python bench/quality_noise.py --on val --seeds 0,1 --noise 0,0.1,0.2 '{}' '{"cap": 5}'`
(one JSON line per (setting, seed, noise) on stdout and appended to OUT/results.jsonl; finished lines are skipped).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from quality_bench import nested_subset  # noqa: E402

from trace_engine.gold import build_gold_batch, gold_candidates  # noqa: E402
from trace_engine.modeling import ModelSource  # noqa: E402
from trace_engine.scoring import WeightShaping, score, weight_concentration  # noqa: E402
from trace_engine.synthetic.base_model import ensure_base_model  # noqa: E402
from trace_engine.synthetic.evaluation import eval_sets, evaluate_model_dir  # noqa: E402
from trace_engine.synthetic.offline_run import (  # noqa: E402
    IMPACT_VARIANTS,
    PipelineConfig,
    add_triage_noise,
    default_train_config,
    split_rows,
    triage_pairs,
)
from trace_engine.synthetic.world import make_world  # noqa: E402
from trace_engine.train import train  # noqa: E402


def noisy_rows(clean: Sequence[Mapping[str, Any]], noise: float, seed: int, trusted: int) -> list[dict[str, Any]]:
    """Noisy triage of the training rows; `trusted` seeded rows are marked trusted and keep their clean triage."""
    rows, _ = add_triage_noise(clean, noise, seed)
    if trusted <= 0:
        return rows
    ids = {r["id"] for r in nested_subset(clean, trusted, seed + 1000)}
    by_id = {r["id"]: r for r in clean}
    return [{**by_id[r["id"]], "trusted": True} if r["id"] in ids else r for r in rows]


def gold_rows_for(rows: Sequence[Mapping[str, Any]], gold: str) -> tuple[list[dict[str, Any]], str]:
    """(rows to score, gold source): `clean` marks every uncorrupted row trusted (a diagnostic)."""
    if gold == "clean":
        return [{**r, "trusted": "noise" not in r} for r in rows], "trusted"
    return [dict(r) for r in rows], gold


def weight_diagnostics(rows: Sequence[Mapping[str, Any]], gold_source: str, gold_size: int, seed: int
                       ) -> dict[str, Any]:
    """Concentration of the impact weights and how much of them (and of the gold batch) noise reaches."""
    conflict = [r for r in rows if r.get("impact_score") is not None]
    weights = [float(r["impact_score"]) for r in conflict]
    total = sum(weights) or 1.0
    corrupted = [r for r in conflict if "noise" in r]
    gold, _ = build_gold_batch(gold_candidates(rows, gold_source), gold_size, seed)
    noisy_ids = {str(r["id"]) for r in rows if "noise" in r}
    conc = weight_concentration(weights)
    by_kind: dict[str, float] = {}
    for r in corrupted:
        n = r["noise"]
        label = (f"{n['original_category']}->{n['new_category']}" if n["kind"] == "category_flip"
                 else f"swap:{r['category']}")
        by_kind[label] = round(by_kind.get(label, 0.0) + float(r["impact_score"]) / total, 3)
    return {
        "corrupted_weight_by_kind": dict(sorted(by_kind.items())),
        "corrupted_count_by_kind": dict(sorted(Counter(
            f"{r['noise']['original_category']}->{r['noise']['new_category']}"
            if r["noise"]["kind"] == "category_flip" else f"swap:{r['category']}" for r in corrupted).items())),
        "n_conflict": len(conflict), "share_zero": round(conc["share_zero"], 3),
        "top5_share": round(conc["top_k_share"], 3), "max_share": round(conc["max_share"], 3),
        "ess_share": round(conc["ess_share"], 3),
        "corrupted_rows": len(corrupted), "corrupted_weight_share": round(sum(
            float(r["impact_score"]) for r in corrupted) / total, 3),
        "gold_corrupted": sum(1 for g in gold if g.source_id in noisy_ids), "gold_size": len(gold),
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("settings", nargs="+", help="JSON objects (see the module docstring)")
    ap.add_argument("--out", default="runs/quality_noise")
    ap.add_argument("--on", choices=("val", "test"), default="val")
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--noise", default="0,0.1,0.2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-train", action="store_true", help="weight diagnostics only (scoring, no training)")
    args = ap.parse_args(argv)
    settings = [parse_setting(text, ap) for text in args.settings]
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / f"results_{args.on}.jsonl"
    done = {json.loads(x)["key"] for x in results.read_text().splitlines() if x} if results.exists() else set()
    big = args.on == "test"
    cfg = PipelineConfig(out_dir=out, n_train=args.size, n_val=40, n_test=150, n_retention=60,
                         n_asr=8 if big else 2, n_over_refusal=40 if big else 10, eval_on=args.on)
    world = make_world(cfg.world_seed)
    base = ensure_base_model(cfg.base_recipe, cfg.cache_dir)
    rows = triage_pairs(world.train_pairs(cfg.n_train + cfg.n_val + cfg.n_test), world, out / "triage")
    started = time.perf_counter()
    for seed in (int(s) for s in args.seeds.split(",")):
        split = split_rows(rows, cfg.n_train, cfg.n_val, seed)
        sets = eval_sets(world, cfg, split.val if args.on == "val" else split.test)
        for noise in (float(p) for p in args.noise.split(",")):
            for setting in settings:
                key = json.dumps({"setting": setting, "seed": seed, "noise": noise, "size": args.size,
                                  "train": not args.no_train}, sort_keys=True)
                if key in done:
                    continue
                record = run_one(setting, seed, noise, split.train, base.path, cfg, world, sets, out,
                                 train_too=not args.no_train)
                record = {"key": key, "on": args.on, **record, "elapsed_s": round(time.perf_counter() - started, 1)}
                with results.open("a") as fh:
                    fh.write(json.dumps(record) + "\n")
                print(json.dumps(record), flush=True)
    return 0


SETTING_KEYS = frozenset({"normalise", "cap", "cap_per_kind", "uniform_mix", "gold", "trusted", "gate",
                          "check_anchors", "variant"})


def parse_setting(text: str, ap: argparse.ArgumentParser) -> dict[str, Any]:
    """A setting as JSON; a misspelt key would silently measure the default, so it is refused."""
    try:
        setting = json.loads(text)
    except json.JSONDecodeError as exc:
        ap.error(f"setting {text!r} is not JSON: {exc}")
    if not isinstance(setting, dict):
        ap.error(f"setting {text!r} is not a JSON object")
    unknown = sorted(set(setting) - SETTING_KEYS)
    if unknown:
        ap.error(f"setting {text!r}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(SETTING_KEYS))}")
    return setting


def weight_shaping(setting: Mapping[str, Any]) -> WeightShaping:
    return WeightShaping(cap=setting.get("cap"), uniform_mix=setting.get("uniform_mix", 0.0),
                         cap_per_kind=setting.get("cap_per_kind", False), gate=setting.get("gate", False),
                         check_anchors=setting.get("check_anchors", False))


def run_one(setting: Mapping[str, Any], seed: int, noise: float, clean: Sequence[Mapping[str, Any]], base_path: Path,
            cfg: PipelineConfig, world: Any, sets: Any, out: Path, *, train_too: bool) -> dict[str, Any]:
    variant = setting.get("variant", "trace")
    normalise = setting.get("normalise", cfg.normalise)
    shaping = weight_shaping(setting)
    train_rows, gold_source = gold_rows_for(noisy_rows(clean, noise, seed, setting.get("trusted", 0)),
                                            setting.get("gold", "all"))
    tc = default_train_config(variant, seed)
    t0 = time.perf_counter()
    ref: dict[str, float] = {}
    diag: dict[str, Any] = {}
    if variant in IMPACT_VARIANTS:
        scored = score(base_path, train_rows, variant, tc, normalise=normalise, gold_size=cfg.gold_size,
                       seed=seed, gold_from=gold_source, shaping=shaping)
        train_rows, ref = scored.rows, scored.reference_logps
        diag = weight_diagnostics(train_rows, gold_source, cfg.gold_size, seed)
    record: dict[str, Any] = {"setting": dict(setting), "seed": seed, "noise": noise, **diag}
    if not train_too:
        return record
    run_dir = out / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    result = train(train_rows, tc, base=ModelSource(str(base_path)), output_dir=run_dir, reference_logps=ref,
                   resume=False, device="cpu")
    t1 = time.perf_counter()
    cfg.seed = seed
    ev = evaluate_model_dir(base_path, result.output_dir, world, sets, cfg)
    shutil.rmtree(run_dir, ignore_errors=True)
    return {**record, "steps": result.steps, "train_s": round(t1 - t0, 1), "eval_s": round(time.perf_counter() - t1, 1),
            "tpa": ev["tpa"]["value"], **{f"tpa_{c}": m["value"] for c, m in ev["tpa_by_category"].items()},
            "retention": ev["retention"]["value"], "tpa_ood": ev["tpa_ood"]["value"], "asr": ev["asr"]["value"],
            "over_refusal": ev["over_refusal"]["value"]}


if __name__ == "__main__":
    raise SystemExit(main())
