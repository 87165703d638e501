"""Why does TRACE under triage noise stop refusing plain harmful requests? An intervention on one table run.

In the real-model table (`bench/quality_real.py`), TRACE at 10% triage noise refuses 0, 5 and 2 of the 8 plain
harmful test requests at seeds 0, 1 and 2 (clean: 5 of 8 in every seed). The suspect: noise that flips an
operational RETAIN pair (a harmful request whose preferred answer is a refusal) to INVERT or PUNISH, so that the
pair trains compliance (DPO pushes the answer over the refusal) or pushes the refusal down (dual NPO). Seed 0 has
two such flips, seed 2 two, seed 1 none. This script re-runs one table run with exactly those rows restored to
their clean labels (`--undo`) or with the same number of operational flips added to a seed that had none
(`--inject N`), everything else (pairs, other corrupted rows, settings, scoring, training, evaluation) as the
table's run, and prints the same record. A diagnosis, not a setting: nothing here chooses a default.

    .venv/bin/python bench/quality_real_noise_intervention.py --seed 0 --noise 0.1 --undo
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import quality_real as q  # noqa: E402
from quality_bench import nested_subset  # noqa: E402

from trace_engine.categories import Category  # noqa: E402
from trace_engine.modeling import ModelSource  # noqa: E402
from trace_engine.realworld.base import ensure_real_base  # noqa: E402
from trace_engine.realworld.world import RealWorld  # noqa: E402
from trace_engine.synthetic.offline_run import add_triage_noise  # noqa: E402
from trace_engine.train import train  # noqa: E402


def operational_flips(world: RealWorld, rows: list[dict[str, Any]]) -> list[int]:
    """Indices of the noisy rows that are operational requests whose category noise flipped away from RETAIN."""
    return [i for i, r in enumerate(rows) if (r.get("noise") or {}).get("kind") == "category_flip"
            and world.kind_of(r["prompt"]) == "operational"]


def undo(rows: list[dict[str, Any]], clean: list[dict[str, Any]], idx: list[int]) -> list[dict[str, Any]]:
    by_id = {r["id"]: r for r in clean}
    return [dict(by_id[r["id"]]) if i in idx else r for i, r in enumerate(rows)]


def inject(world: RealWorld, rows: list[dict[str, Any]], n: int, seed: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Flip n clean operational RETAIN rows to INVERT, as `data.noise`'s category flip would (y_c dropped)."""
    pool = [i for i, r in enumerate(rows) if not r.get("noise") and r["category"] == Category.RETAIN
            and world.kind_of(r["prompt"]) == "operational"]
    chosen = random.Random(seed).sample(pool, n)
    out = [dict(r) for r in rows]
    for i in chosen:
        out[i]["category"] = Category.INVERT.value
        out[i]["noise"] = {"kind": "category_flip", "injected": True}
        out[i].pop("oracle_response", None)
    return out, [out[i]["id"] for i in chosen]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noise", type=float, default=0.1)
    ap.add_argument("--size", type=int, default=128)
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--undo", action="store_true", help="restore the operational rows noise flipped")
    group.add_argument("--inject", type=int, default=0, help="flip this many clean operational rows to INVERT")
    ap.add_argument("--out", default="runs/quality_real_intervention")
    args = ap.parse_args(argv)
    table = q.parse_args([])  # the table's settings, unchanged
    torch.set_num_threads(table.threads)
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    world = RealWorld(0)
    base, _ = ensure_real_base(q.imported_smollm2(), pinned_dir=q.PINNED_DIR)
    identity = q.base_identity(base)
    rows = q.triage(world, world.train_pairs(args.size), out / "triage")
    clean = nested_subset(rows, args.size, args.seed)
    noisy, _ = add_triage_noise(clean, args.noise, args.seed)
    flips = operational_flips(world, noisy)
    if args.undo:
        changed = [noisy[i]["id"] for i in flips]
        train_rows = undo(noisy, clean, flips)
    else:
        train_rows, changed = inject(world, noisy, args.inject, args.seed)
    print(f"{len(flips)} operational rows flipped by noise; changed: {changed}", flush=True)
    tc = q.train_config(table, "trace", args.seed)
    scored = q.score_rows(table, base, train_rows, "trace", tc, args.seed)
    run_dir = out / "adapter"
    trained = train(scored.rows, tc, base=ModelSource(str(base)), output_dir=run_dir,
                    reference_logps=scored.reference_logps, resume=False, device="cpu")
    after = q.evaluate(base, trained.output_dir, world, q.eval_data(world, table.n_test, table.n_asr),
                       table.max_new_tokens)
    record = {"run": f"trace-n{args.size}-noise{args.noise}-seed{args.seed}", "intervention":
              "undo operational flips" if args.undo else f"inject {args.inject} operational flips",
              "changed": changed, **identity, "settings": q.run_settings(table),
              "wall_s": round(time.perf_counter() - started, 1), **after}
    with (out / "results.jsonl").open("a") as fh:
        fh.write(json.dumps(record) + "\n")
    print(f"{record['intervention']}: {q.summary_line(after)}; plain harmful refused "
          f"{after['tpa_by_kind'].get('operational')} ({record['wall_s']}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
