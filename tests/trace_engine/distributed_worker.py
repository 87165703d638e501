"""Scoring + a few training steps, run by test_distributed.py once in-process and once per rank under
`accelerate launch --num_processes 2 --cpu` (gloo). Rank 0 writes `result.json` and the adapter."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from trace_engine.config import LengthLimits, LoraSettings, LossSettings, TrainConfig
from trace_engine.data.io import read_jsonl as iter_jsonl
from trace_engine.modeling import ModelSource, attach_lora, load_causal_lm, load_tokenizer
from trace_engine.runtime import Runtime
from trace_engine.scoring import score_conflicts
from trace_engine.train import train

LORA = LoraSettings(r=4, alpha=8, dropout=0.0)
SEED = 3


def triaged_rows(n: int = 10) -> list[dict]:
    rows = []
    for i in range(n):
        category = ("INVERT", "PUNISH", "RETAIN")[i % 3]
        rows.append({
            "id": f"r{i}", "category": category, "prompt": f"How do I reset my password, case {i}?",
            "chosen": "Open settings and choose reset." if category != "PUNISH" else "Sorry, I can't assist.",
            "rejected": f"I cannot help with that request {i}." if category != "PUNISH" else "Two plus two is four.",
        })
    return rows


def run(model_dir: str, out_dir: str, runtime: Runtime) -> dict:
    """Score (sharded when several ranks), attach the weights, train 3 steps of global batch 4 on those rows."""
    base = ModelSource(model_dir)
    rows = triaged_rows()
    model = attach_lora(load_causal_lm(base, runtime.device), LORA, seed=SEED)
    limits = LengthLimits(64, 128)
    result = score_conflicts(model, load_tokenizer(base), rows, settings=LossSettings(beta=0.3), gold_size=6,
                             seed=SEED, rows_per_batch=2, limits=limits, runtime=runtime)
    scores = {s.sample_id: s.raw_score for s in result.scored}
    weights = dict(zip([s.sample_id for s in result.scored], result.weights.weights, strict=True))
    scored_rows = [{**r, "impact_score": weights.get(r["id"])} for r in rows]
    config = TrainConfig(variant="trace", beta=0.3, batch_size=4, max_steps=3, lr=5e-3, warmup_ratio=0.0, seed=SEED,
                         max_prompt_len=64, max_len=128, lora=LORA, weight_decay=0.0)
    half_cache = {k: v for i, (k, v) in enumerate(sorted(result.reference_logps.items())) if i % 2}  # rest: sharded
    trained = train(scored_rows, config, base=base, output_dir=out_dir, reference_logps=half_cache, runtime=runtime)
    out = {
        "scores": scores,
        "reference_logps": result.reference_logps,
        "losses": [m["loss"] for m in iter_jsonl(trained.metrics_path)] if runtime.is_main else [],
        "world_size": runtime.world_size,
        "adapter": str(trained.output_dir),
    }
    if runtime.is_main:
        (Path(out_dir) / "result.json").write_text(json.dumps(out))
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    runtime = Runtime.create("cpu")
    run(sys.argv[1], sys.argv[2], runtime)
    runtime.close()
