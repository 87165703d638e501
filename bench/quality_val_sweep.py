"""Choose training defaults on the VALIDATION split (never the test split) of the synthetic policy shift.

Each setting is a JSON object of TrainConfig overrides plus optional `variant` and `normalise` ('sum' | 'mean'),
trained on the same prompt-disjoint train split as the quality table and evaluated (TPA per category, retention)
on the validation split's prompts. One JSON line per (setting, seed) on stdout.

Run: `.venv/bin/python bench/quality_val_sweep.py --size 320 --seeds 0,1 '{"lr": 1e-3}' '{"normalise": "sum"}'`
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trace_engine.modeling import ModelSource  # noqa: E402
from trace_engine.scoring import score  # noqa: E402
from trace_engine.synthetic.base_model import ensure_base_model  # noqa: E402
from trace_engine.synthetic.evaluation import eval_sets, evaluate_model_dir  # noqa: E402
from trace_engine.synthetic.offline_run import (  # noqa: E402
    IMPACT_VARIANTS,
    PipelineConfig,
    default_train_config,
    split_rows,
    triage_pairs,
)
from trace_engine.synthetic.world import make_world  # noqa: E402
from trace_engine.train import train  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("settings", nargs="+", help="JSON objects of overrides")
    ap.add_argument("--out", default="runs/quality_val")
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    # the same pool and split sizes as bench/quality_bench.py, so the validation prompts are the same
    cfg = PipelineConfig(out_dir=out, n_train=args.size, n_val=40, n_test=150, n_retention=60, n_asr=2,
                         n_over_refusal=10, eval_on="val")
    world = make_world(cfg.world_seed)
    base = ensure_base_model(cfg.base_recipe, cfg.cache_dir)
    rows = triage_pairs(world.train_pairs(cfg.n_train + cfg.n_val + cfg.n_test), world, out / "triage")
    for seed in (int(s) for s in args.seeds.split(",")):
        split = split_rows(rows, cfg.n_train, cfg.n_val, seed)
        sets = eval_sets(world, cfg, split.val)
        for text in args.settings:
            setting = json.loads(text)
            overrides = {k: v for k, v in setting.items() if k not in ("variant", "normalise")}
            variant, normalise = setting.get("variant", "trace"), setting.get("normalise", cfg.normalise)
            tc = default_train_config(variant, seed, **overrides)
            started = time.perf_counter()
            train_rows, ref = split.train, {}
            if variant in IMPACT_VARIANTS:
                scored = score(base.path, train_rows, variant, tc, normalise=normalise, gold_size=cfg.gold_size,
                               seed=seed)
                train_rows, ref = scored.rows, scored.reference_logps
            run_dir = out / "run"
            shutil.rmtree(run_dir, ignore_errors=True)
            result = train(train_rows, tc, base=ModelSource(str(base.path)), output_dir=run_dir, reference_logps=ref,
                           resume=False, device="cpu")
            cfg.seed = seed
            ev = evaluate_model_dir(base.path, result.output_dir, world, sets, cfg)
            print(json.dumps({"setting": setting, "seed": seed, "size": args.size, "steps": result.steps,
                              "seconds": round(time.perf_counter() - started, 1), "val_tpa": ev["tpa"]["value"],
                              **{f"val_{c}": m["value"] for c, m in ev["tpa_by_category"].items()},
                              "retention": ev["retention"]["value"]}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
