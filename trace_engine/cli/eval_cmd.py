"""`realign eval` (evaluate a model or adapter) and `realign eval-compare` (before/after deltas).

Exit codes: 0 done; 1 done, but some responses could not be judged (excluded from the rates; see report.json);
2 bad input (missing file, unpinned Hub data, unknown suite, bad judge spec, a suite without its data).
Outputs in --out: report.json (metrics with 95% bootstrap CIs, model, both judge ids, policy hash, settings),
report.md, records.jsonl (every prompt, response and verdict; written as each suite finishes), and
comparison.md when --compare is given.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from trace_engine.cli.common import err, load_json_file, load_policy, positive_int

EXIT_OK, EXIT_JUDGE_ERRORS, EXIT_BAD_INPUT = 0, 1, 2
REPORT_JSON, REPORT_MD, RECORDS_FILE, COMPARISON_MD = (
    "report.json",
    "report.md",
    "records.jsonl",
    "comparison.md",
)
CAPABILITY_HELP = (
    "FORMAT=SOURCE, repeatable; FORMAT is mmlu, hellaswag, gpqa, gsm8k or mc; SOURCE a local "
    ".jsonl/.json/.parquet "
    "file or hf://REPO@REVISION:[CONFIG/]SPLIT (a pinned revision is required); NAME:FORMAT=SOURCE to rename"
)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate a model (+ adapter): policy agreement, attack success, over-refusal, capability",
        description="Generate greedily with the model's chat template and score the requested suites; "
        "every rate "
        "comes with a seeded 95% percentile-bootstrap interval.",
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model", required=True, help="local model dir (safetensors) or Hub id (needs --revision)"
    )
    p.add_argument("--revision", default=None, help="pinned commit of a Hub model")
    p.add_argument("--adapter", default=None, help="peft LoRA adapter dir to evaluate on top of the model")
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="bf16 / fp16 / fp32 (default: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="generation batch size")
    p.add_argument("--suites", default="tpa,asr,over_refusal,capability", help="comma-separated suites")
    p.add_argument("--policy", default=None, help="the NEW policy text file (needed by tpa and asr)")
    p.add_argument("--judge", default=None, help="evaluation judge: rules:PATH or openai:MODEL")
    p.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint for the evaluation judge")
    p.add_argument(
        "--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the judge key"
    )
    p.add_argument(
        "--triage-judge-id",
        default=None,
        help="judge id that produced the training labels (recorded; a warning when it equals --judge's)",
    )
    p.add_argument(
        "--prompts", default=None, help="held-out TPA prompts: JSONL rows {id?, prompt, category?}"
    )
    p.add_argument("--harmful", default=None, help="harmful prompts for ASR (same row format)")
    p.add_argument("--benign", default=None, help="benign but sensitive-looking prompts for over-refusal")
    p.add_argument("--capability", action="append", default=[], metavar="FORMAT=SOURCE", help=CAPABILITY_HELP)
    p.add_argument(
        "--limit", type=positive_int, default=None, help="at most N items per prompt file / benchmark"
    )
    p.add_argument(
        "--mc-mode",
        choices=("loglik", "letter"),
        default="loglik",
        help="multiple choice by option log-likelihood or by the generated letter",
    )
    p.add_argument("--attack-templates", default="", help="comma-separated ASR templates (default: all)")
    p.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=256,
        help="tokens per response (tpa, asr, over_refusal)",
    )
    p.add_argument("--numeric-tokens", type=positive_int, default=384, help="tokens per GSM8K-style answer")
    p.add_argument(
        "--letter-tokens", type=positive_int, default=16, help="tokens per lettered multiple-choice answer"
    )
    p.add_argument("--concurrency", type=positive_int, default=16, help="judge requests in flight")
    p.add_argument("--seed", type=int, default=0, help="bootstrap and option-shuffle seed")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (>= 1000)")
    p.add_argument(
        "--judge-over-refusal", action="store_true", help="also grade benign responses with the judge"
    )
    p.add_argument("--compare", default=None, help="a previous report.json: write before/after deltas")
    p.add_argument("--out", required=True, help="output dir")
    p.set_defaults(func=run_eval_command)

    c = subparsers.add_parser(
        "eval-compare", help="per-metric deltas between two eval reports (before, after)"
    )
    c.add_argument("before", help="report.json of the baseline")
    c.add_argument("after", help="report.json of the candidate")
    c.set_defaults(func=run_compare_command)


def run_eval_command(args: argparse.Namespace) -> int:
    from trace_engine.data.io import DatasetError
    from trace_engine.evaluation.report import EvalReport
    from trace_engine.evaluation.runner import EvalSettings, check_suites
    from trace_engine.modeling import ModelLoadError, ModelSource

    suites = [s.strip() for s in args.suites.split(",") if s.strip()]
    judge = None
    try:
        settings = EvalSettings(
            max_new_tokens=args.max_new_tokens,
            judge_concurrency=args.concurrency,
            seed=args.seed,
            resamples=_resamples(args.resamples),
            asr_templates=tuple(t.strip() for t in args.attack_templates.split(",") if t.strip()),
            mc_mode=args.mc_mode,
            judge_over_refusal=args.judge_over_refusal,
            numeric_tokens=args.numeric_tokens,
            letter_tokens=args.letter_tokens,
        )
        policy, data = _load_inputs(args, suites)
        before = EvalReport.from_dict(load_json_file(args.compare, "--compare")) if args.compare else None
        if args.judge:
            from trace_engine.judge.factory import make_judge

            judge = make_judge(args.judge, base_url=args.base_url, api_key_env=args.api_key_env)
        check_suites(suites, data, judge, policy)
        ModelSource(args.model, args.revision).validate()
    except (DatasetError, ModelLoadError, OSError, ValueError, KeyError) as exc:
        err(f"error: {exc}")
        return EXIT_BAD_INPUT
    return _evaluate(args, suites, judge, policy, data, settings, before)


def _evaluate(args, suites, judge, policy, data, settings, before) -> int:
    import asyncio

    from trace_engine.evaluation.generation import LocalBackend
    from trace_engine.evaluation.report import compare_reports, render_comparison, render_markdown
    from trace_engine.evaluation.runner import arun_eval
    from trace_engine.modeling import ModelLoadError

    async def close_judge() -> None:
        if judge is not None:
            await judge.aclose()

    try:
        backend = LocalBackend.from_pretrained(
            args.model,
            revision=args.revision,
            adapter_dir=args.adapter,
            device=args.device,
            dtype=args.dtype,
            batch_size=args.batch_size,
        )
    except (ModelLoadError, OSError, ValueError) as exc:
        asyncio.run(close_judge())
        err(f"error: cannot load the model: {exc}")
        return EXIT_BAD_INPUT

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records_path = out / RECORDS_FILE
    records_path.write_text("", encoding="utf-8")

    def save_records(result) -> None:
        """Each suite's items are on disk as soon as it finishes (a crash in a later suite loses nothing)."""
        with records_path.open("a", encoding="utf-8") as fh:
            for record in result.records:
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        err(f"[{result.name}] " + ", ".join(f"{k}={_fmt(m.value)}" for k, m in result.metrics.items()))

    async def go():
        try:
            return await arun_eval(
                backend,
                suites,
                judge,
                data,
                policy=policy,
                settings=settings,
                triage_judge_id=args.triage_judge_id,
                on_suite_done=save_records,
            )
        finally:
            await close_judge()

    report = asyncio.run(go())
    from trace_engine.data.io import write_json

    write_json(out / REPORT_JSON, report.to_dict())
    (out / REPORT_MD).write_text(render_markdown(report), encoding="utf-8")
    print(render_markdown(report))
    if before is not None:
        table = render_comparison(compare_reports(before, report))
        (out / COMPARISON_MD).write_text(table, encoding="utf-8")
        print(table)
    if report.same_judge_as_triage:
        err("warning: the evaluation judge is the triage judge; policy agreement is partly circular")
    judged_errors = sum(1 for s in report.suites.values() for r in s.records if r.get("error"))
    if judged_errors:
        err(f"warning: {judged_errors} responses could not be judged (excluded; see {out / RECORDS_FILE})")
        return EXIT_JUDGE_ERRORS
    return EXIT_OK


def _load_inputs(args: argparse.Namespace, suites: list[str]):
    from trace_engine.evaluation.capability import load_capability_set
    from trace_engine.evaluation.prompts import load_eval_prompts
    from trace_engine.evaluation.runner import EvalData
    policy = load_policy(args.policy) if args.policy else None
    data = EvalData()
    if "tpa" in suites and args.prompts:
        data.tpa_prompts = load_eval_prompts(args.prompts, limit=args.limit)
    if "asr" in suites and args.harmful:
        data.harmful_prompts = load_eval_prompts(args.harmful, limit=args.limit)
    if "over_refusal" in suites and args.benign:
        data.benign_prompts = load_eval_prompts(args.benign, limit=args.limit)
    if "capability" in suites:
        names: set[str] = set()
        for spec in args.capability:
            name, fmt, source = parse_capability_spec(spec)
            if name in names:
                raise ValueError(f"capability set {name!r} given twice; rename one as NAME:FORMAT=SOURCE")
            names.add(name)
            data.capability.append(load_capability_set(fmt, source, name=name, limit=args.limit))
    return policy, data


def parse_capability_spec(spec: str) -> tuple[str, str, str]:
    """'mmlu=path' -> ('mmlu', 'mmlu', 'path'); 'mmlu-stem:mmlu=path' -> ('mmlu-stem', 'mmlu', 'path')."""
    head, sep, source = spec.partition("=")
    if not sep or not head or not source:
        raise ValueError(f"bad --capability {spec!r}; expected {CAPABILITY_HELP}")
    name, _, fmt = head.rpartition(":")
    return (name or fmt), fmt, source


def run_compare_command(args: argparse.Namespace) -> int:
    from trace_engine.evaluation.report import EvalReport, compare_reports, render_comparison

    try:
        before = EvalReport.from_dict(load_json_file(args.before, "BEFORE"))
        after = EvalReport.from_dict(load_json_file(args.after, "AFTER"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        err(f"error: {exc}")
        return EXIT_BAD_INPUT
    print(render_comparison(compare_reports(before, after)))
    return EXIT_OK


def _resamples(n: int) -> int:
    if n < 1000:
        raise ValueError(f"--resamples must be at least 1000, got {n}")
    return n


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


