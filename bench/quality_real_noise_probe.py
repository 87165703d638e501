"""Can any first-order signal tell the rows triage noise corrupted from the clean ones, on real text? (No training.)

On the real-text world every corrupted conflict row already scores <= 0 against g_J, but so does every clean PUNISH
row (docs/benchmarks.md, "Noise on real text"), so the uniform floor that PUNISH needs keeps the corrupted rows at
half weight, and corrupted RETAIN rows (whose KL anchor has no gradient at θ_ref) are never weighed. This probe
scores the 128 noisy training pairs of one seed at θ_ref against several directions and reports, per loss kind, how
well each separates clean rows (should score high) from corrupted ones (low):

- `g_J all`: the product's direction, the DPO gradient of a gold batch drawn from the (noisy) rows;
- `g_J trusted`: the same from 32 rows a person checked (their clean labels, marked `trusted`);
- `g_J own kind`: each row against the gradient of the gold pairs of its own triage category only (INVERT rows
  against gold INVERT pairs, PUNISH against gold PUNISH, RETAIN against gold RETAIN); `own kind, trusted`: the
  same with the gold pairs drawn from the 32 checked rows;
- RETAIN rows are scored as preference pairs (the DPO gradient of chosen over rejected), since the anchor's own
  gradient is zero at θ_ref: a swapped RETAIN row should point against the gold direction.

Per (direction, kind): clean and corrupted counts, mean raw score of each, AUC (the chance that a clean row outscores
a corrupted one; 0.5 = no signal), and the share of clean rows scoring > 0 (what a clamp at 0 keeps).

Run: `nice -n 10 .venv/bin/python bench/quality_real_noise_probe.py --noise 0.1,0.2 --seed 0`
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from quality_bench import log, nested_subset  # noqa: E402
from quality_real import LORA, PINNED_DIR, base_identity, imported_smollm2, triage  # noqa: E402

from trace_engine.config import LengthLimits  # noqa: E402
from trace_engine.gold import build_gold_batch, gold_candidates  # noqa: E402
from trace_engine.impact import gold_gradient, score_batches  # noqa: E402
from trace_engine.modeling import ModelSource, attach_lora, load_causal_lm, load_tokenizer  # noqa: E402
from trace_engine.realworld.base import ensure_real_base  # noqa: E402
from trace_engine.realworld.world import RealWorld  # noqa: E402
from trace_engine.scoring import (  # noqa: E402
    ConflictSample,
    conflict_samples,
    gold_samples,
    pack_batches,
    retain_preference_samples,
)
from trace_engine.synthetic.offline_run import add_triage_noise, default_train_config  # noqa: E402

KINDS = ("INVERT", "PUNISH", "RETAIN")


def auc(clean: Sequence[float], corrupted: Sequence[float]) -> float | None:
    """P(a clean row outscores a corrupted one), ties half: 1.0 = perfect separation, 0.5 = none."""
    if not clean or not corrupted:
        return None
    wins = sum((c > b) + 0.5 * (c == b) for c in clean for b in corrupted)
    return wins / (len(clean) * len(corrupted))


def separation(scores: Mapping[str, float], rows: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    clean = [s for i, s in scores.items() if not rows[i].get("noise")]
    bad = [s for i, s in scores.items() if rows[i].get("noise")]

    def mean(xs: Sequence[float]) -> float | None:
        return round(sum(xs) / len(xs), 3) if xs else None

    a = auc(clean, bad)
    return {"n_clean": len(clean), "n_corrupted": len(bad), "mean_clean": mean(clean), "mean_corrupted": mean(bad),
            "auc": None if a is None else round(a, 3),
            "clean_positive": round(sum(s > 0 for s in clean) / len(clean), 3) if clean else None,
            "corrupted_positive": round(sum(s > 0 for s in bad) / len(bad), 3) if bad else None}


def trusted_rows(clean: Sequence[Mapping[str, Any]], noisy: Sequence[Mapping[str, Any]], n: int, seed: int
                 ) -> list[dict[str, Any]]:
    """The noisy rows with n of them replaced by their clean, checked version marked trusted."""
    checked = set(random.Random(f"trusted:{seed}").sample([str(r["id"]) for r in clean], n))
    by_id = {str(r["id"]): r for r in clean}
    return [{**by_id[str(r["id"])], "trusted": True} if str(r["id"]) in checked else dict(r) for r in noisy]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--noise", default="0.1,0.2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--gold-size", type=int, default=24)
    ap.add_argument("--n-trusted", type=int, default=32)
    ap.add_argument("--out", default="runs/quality_real_noise_probe")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    world = RealWorld(0)
    base, _ = ensure_real_base(imported_smollm2(), pinned_dir=PINNED_DIR)
    identity = base_identity(base)
    log(f"base weights {identity['weights_sha256']}", started)
    clean = nested_subset(triage(world, world.train_pairs(args.size), out / "triage"), args.size, args.seed)
    tc = default_train_config("trace", args.seed, lora=LORA, beta=0.1, batch_size=8, max_prompt_len=64, max_len=128)
    limits = LengthLimits(tc.max_prompt_len, tc.max_len)
    source = ModelSource(str(base))
    tokenizer = load_tokenizer(source)
    model = attach_lora(load_causal_lm(source, "cpu", None), tc.lora, seed=args.seed)

    def direction(gold_rows: Sequence[Mapping[str, Any]], source_: str, category: str | None = None):
        gold, _ = build_gold_batch(gold_candidates(gold_rows, source_), args.gold_size, args.seed)
        gold = [g for g in gold if category is None or g.category == category]
        batches, _ = pack_batches(tokenizer, gold_samples(gold), 16, limits)
        return gold_gradient(model, batches, tc.loss.beta), len(gold)

    def scores(samples: Sequence[ConflictSample], g) -> dict[str, float]:
        batches, _ = pack_batches(tokenizer, samples, 16, limits)
        return {s.sample_id: s.raw_score for s in score_batches(model, batches, g, tc.loss)}

    results: list[dict[str, Any]] = []
    per_row: list[dict[str, Any]] = []
    for noise in [float(x) for x in args.noise.split(",") if x]:
        noisy, stats = add_triage_noise(clean, noise, args.seed)
        by_id = {str(r["id"]): r for r in noisy}
        samples = conflict_samples(noisy, "trace") + retain_preference_samples(noisy)
        kind_of = {s.sample_id: str(by_id[s.sample_id]["category"]) for s in samples}
        with_trusted = trusted_rows(clean, noisy, args.n_trusted, args.seed)
        directions = {"g_J all": direction(noisy, "all"), "g_J trusted": direction(with_trusted, "trusted")}
        per_direction = {name: scores(samples, g) for name, (g, _) in directions.items()}
        for label, gold_rows, source_ in (("", noisy, "all"), (", trusted", with_trusted, "trusted")):
            own: dict[str, float] = {}
            for kind in KINDS:
                g, n = direction(gold_rows, source_, kind)
                directions[f"g_J {kind} only{label}"] = (g, n)
                mine = [s for s in samples if kind_of[s.sample_id] == kind]
                if n and mine:
                    own.update(scores(mine, g))
            per_direction[f"g_J own kind{label}"] = own
        per_row.extend({"noise": noise, "id": i, "category": kind_of[i], "kind": world.kind_of(by_id[i]["prompt"]),
                        "corruption": (by_id[i].get("noise") or {}).get("kind"),
                        **{name: round(sc[i], 4) for name, sc in per_direction.items() if i in sc}}
                       for i in kind_of)
        for name, sc in per_direction.items():
            for kind in KINDS:
                part = {i: v for i, v in sc.items() if kind_of[i] == kind}
                if part:
                    results.append({"noise": noise, "seed": args.seed, "direction": name, "kind": kind,
                                    **separation(part, by_id)})
                    log(json.dumps(results[-1]), started)
        log(f"noise {noise}: {stats['corrupted']} corrupted ({stats.get('category_flip', 0)} flips, "
            f"{stats.get('pair_swap', 0)} swaps); gold pairs per direction "
            f"{ {k: n for k, (_, n) in directions.items()} }", started)
    (out / "probe.json").write_text(json.dumps({"identity": identity, "results": results, "rows": per_row}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
