"""`realign demo`: the whole re-alignment offline, on the synthetic policy-shift world, in a few minutes on a CPU.

Builds (or loads from the cache) a tiny base model that follows the OLD policy, writes old-labelled pairs, triages
them under the NEW policy with the rules judge, splits prompt-disjointly, scores impact, trains a LoRA adapter,
and evaluates base and adapter on held-out test prompts. Prints before/after TPA (overall and per triage
category) with 95% bootstrap CIs, ASR, over-refusal and retention; the LAST line of stdout is one JSON object
(`tpa_before`, `tpa_after`, `retention_before`, `retention_after`, their CIs, `asr_*`, `over_refusal_*`, `wall_s`).

`realign demo --triage-only` keeps the earlier quick demo: triage the bundled sample pairs with the rules judge.

Exit codes: 0 done; 1 a stage failed (message on stderr); 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import time
from importlib import resources
from pathlib import Path
from typing import Any

from trace_engine.cli.common import err, positive_int
from trace_engine.policy import Policy

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
DEMO_OUT = "runs/demo"


def register(subparsers: Any) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="offline end-to-end re-alignment on a synthetic policy shift (no network, no GPU)",
        description=__doc__.split("\n\n")[0] + "\n\n" + "\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--out", default=DEMO_OUT, help=f"output dir (default: {DEMO_OUT})")
    demo.add_argument("--variant", default="trace", help="training variant or baseline (default: trace)")
    demo.add_argument("--seed", type=int, default=0, help="split, LoRA init and training-order seed")
    demo.add_argument("--n-train", type=positive_int, default=None, help="training pairs (default 320)")
    demo.add_argument("--n-test", type=positive_int, default=None, help="held-out test pairs (default 150)")
    demo.add_argument("--cache-dir", default=None, help="base model cache (default: $REALIGN_CACHE_DIR or ~/.cache)")
    demo.add_argument(
        "--threads", type=positive_int, default=None,
        help="torch CPU threads (default: torch's choice; 1 is much faster on a CPU shared with other jobs)",
    )
    demo.add_argument("--quick", action="store_true", help="the CI-sized run (smaller evaluation sets)")
    demo.add_argument(
        "--triage-only", action="store_true", help="only triage the bundled sample pairs (the quick demo)"
    )
    demo.set_defaults(func=run_demo_command)


def run_demo_command(args: argparse.Namespace) -> int:
    if args.triage_only:
        return run_triage_demo(Path(args.out))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from trace_engine.synthetic.evaluation import format_summary
    from trace_engine.synthetic.offline_run import PipelineConfig, run_pipeline

    sizes = {k: v for k, v in (("n_train", args.n_train), ("n_test", args.n_test)) if v is not None}
    settings = dict(out_dir=args.out, variant=args.variant, seed=args.seed, cache_dir=args.cache_dir, **sizes)
    cfg = PipelineConfig.quick(**settings) if args.quick else PipelineConfig(**settings)
    try:
        cfg.validate()
    except ValueError as exc:
        err(f"error: {exc}")
        return EXIT_BAD_INPUT
    err(f"demo: synthetic policy shift, variant {cfg.variant}, {cfg.n_train} training pairs, outputs in {cfg.out_dir}")
    try:
        result = run_pipeline(cfg, progress=StageLogger())
    except (RuntimeError, ValueError, OSError) as exc:
        err(f"error: {type(exc).__name__}: {exc}")
        return EXIT_FAILED
    print(format_summary(result.summary))
    print(f"\nHeld-out test prompts: {result.summary['n_tpa']}; details in {Path(cfg.out_dir) / 'report.json'}")
    print(json.dumps(result.summary, separators=(",", ":")))
    return EXIT_OK


class StageLogger:
    """Stage start/end and training progress on stderr, with elapsed time."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def __call__(self, stage: str, info: dict[str, Any]) -> None:
        elapsed = time.perf_counter() - self.started
        event = info.get("event")
        if event == "start":
            extra = " ".join(f"{k}={v}" for k, v in info.items() if k != "event")
            err(f"[{elapsed:6.1f}s] {stage} ...{(' ' + extra) if extra else ''}")
        elif event == "done":
            err(f"[{elapsed:6.1f}s] {stage} done in {info['seconds']:.1f}s")
        elif event == "step":
            loss = info.get("loss")
            err(f"[{elapsed:6.1f}s] train step {info['step']}/{info['total']} loss {loss:.4f}"
                 if isinstance(loss, float) else f"[{elapsed:6.1f}s] train step {info['step']}/{info['total']}")


def run_triage_demo(out: Path) -> int:
    """Triage the bundled sample (see `trace_engine/resources/sample/README.md`) with the rules judge."""
    from trace_engine.cli.triage_cmd import TRIAGED_FILE, build_judge, format_examples, run_and_report
    from trace_engine.data.load import load_pairs
    from trace_engine.triage.stage import SUMMARY_FILE

    sample = resources.files("trace_engine") / "resources" / "sample"
    with resources.as_file(sample) as sample_dir:
        policy = Policy.from_file(sample_dir / "policy.md", name="sample-policy-v2")
        pairs, _ = load_pairs(sample_dir / "pairs.jsonl", strict=True)
        judge = build_judge(f"rules:{sample_dir / 'rules.json'}")
        err(f"demo: {len(pairs)} sample pairs, policy {policy.name}, judge {judge.judge_id}")
        code = run_and_report(pairs, policy, judge, out, concurrency=8, oracle=True, extra_summary={"mode": "demo"})
    print(format_examples(out / TRIAGED_FILE))
    print(f"\nOutputs in {out}/: {TRIAGED_FILE}, {SUMMARY_FILE}")
    return code


