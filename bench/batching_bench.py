"""Length-grouped micro-batches (`--group-by-length`) against shuffled ones: padding and training wall time.

    .venv/bin/python bench/batching_bench.py [--pairs 96] [--batch-size 8] [--hidden 256] [--layers 4]

Real `trace_engine.train.train` on the CPU with a tiny Llama built here and a tokenizer trained in-process, on
preference pairs whose response lengths are long-tailed like real datasets (PKU-SafeRLHF responses run from a few
words to several hundred). Same data, seed and settings; only `group_by_length` differs. The last line printed is
one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trace_engine.config import LoraSettings, TrainConfig  # noqa: E402
from trace_engine.modeling import ModelSource  # noqa: E402
from trace_engine.schedule import epoch_order, micro_batches  # noqa: E402
from trace_engine.tiny_models import DEFAULT_CORPUS, build_tiny_model, save_tiny, train_tokenizer  # noqa: E402
from trace_engine.train import train  # noqa: E402

WORDS = ["the", "model", "should", "explain", "safety", "steps", "clearly", "and", "refuse", "harmful", "requests", "with", "care"]


def long_tailed_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)

    def text(lo: int, hi: int) -> str:
        k = int(lo + (hi - lo) * rng.random() ** 3)  # most short, a few long
        return " ".join(rng.choice(WORDS) for _ in range(k))

    cats = ("INVERT", "PUNISH", "RETAIN")
    return [{"id": str(i), "prompt": text(4, 40), "chosen": text(3, 200), "rejected": text(3, 200),
             "category": cats[i % 3], "impact_score": 1.0} for i in range(n)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    tok = train_tokenizer(DEFAULT_CORPUS + [" ".join(WORDS)])
    rows = long_tailed_rows(args.pairs, args.seed)
    result: dict = {"pairs": args.pairs, "batch_size": args.batch_size, "hidden": args.hidden, "layers": args.layers,
                    "machine": platform.processor() or platform.machine(), "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(tok, "llama", hidden_size=args.hidden, num_layers=args.layers,
                                 intermediate_size=args.hidden * 3, num_heads=8, num_kv_heads=4, max_positions=1024)
        base = ModelSource(str(save_tiny(model, tok, Path(tmp) / "base")))
        lengths = [max(len(tok(r["prompt"] + r["chosen"]).input_ids), len(tok(r["prompt"] + r["rejected"]).input_ids))
                   for r in rows]
        order = epoch_order(len(rows), args.seed, 0)  # the order train() uses in epoch 0
        for grouped in (False, True):
            batches = micro_batches(order, lengths if grouped else None, args.batch_size, args.seed, 0)
            slots = sum(len(b) * max(lengths[i] for i in b) for b in batches)
            cfg = TrainConfig(variant="no_impact", batch_size=args.batch_size, epochs=1, lr=1e-3, seed=args.seed,
                              group_by_length=grouped, lora=LoraSettings(r=8, alpha=16, dropout=0.0),
                              max_prompt_len=128, max_len=512)
            train(rows, cfg, base=base, output_dir=Path(tmp) / "warm", device="cpu")  # warm caches and allocator
            t0 = time.perf_counter()
            out = train(rows, cfg, base=base, output_dir=Path(tmp) / f"run{int(grouped)}", device="cpu")
            seconds = time.perf_counter() - t0
            key = "grouped" if grouped else "shuffled"
            result[key] = {"seconds": round(seconds, 2), "padded_slots_est": slots, "steps": out.steps,
                           "final_loss": out.final_metrics["loss"]}
            print(f"{key}: {seconds:.2f}s, ~{slots} padded row-slots", file=sys.stderr, flush=True)
    result["real_row_tokens_est"] = sum(lengths)
    result["speedup"] = round(result["shuffled"]["seconds"] / result["grouped"]["seconds"], 2)
    result["padding_ratio"] = round(result["grouped"]["padded_slots_est"] / result["shuffled"]["padded_slots_est"], 3)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
