"""`realign triage` (the demo lives in `demo_cmd`).

Each row of triaged.jsonl: the input fields plus `category` (INVERT, PUNISH, RETAIN, or ERROR when a verdict is
missing), `swapped`, `chosen`/`rejected` as used for training (swapped for INVERT), `original_chosen`/
`original_rejected`, `chosen_verdict`/`rejected_verdict` (verdict, clauses, rationale of the text now in that
field), `judge_id`, `policy_sha256`, `template_version`, and with --oracle `oracle_response` or `oracle_error` on
PUNISH rows.

Exit codes: 0 every pair categorised; 1 finished, but some pairs are ERROR or some oracle rewrites failed (judge
failures, listed in summary.json; a re-run retries only those); 2 bad input (missing file, invalid dataset under
--strict, bad judge spec); 3 stopped after too many consecutive judge failures (everything judged so far is
stored: re-run the same command to resume); 130 interrupted (Ctrl-C; resumable the same way).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from trace_engine.cli.common import err, load_policy, positive_int
from trace_engine.data.io import read_jsonl
from trace_engine.data.pairs import prompt_as_text
from trace_engine.judge.base import Judge
from trace_engine.policy import Policy
from trace_engine.triage.runner import DEFAULT_CONCURRENCY, DEFAULT_MAX_CONSECUTIVE_FAILURES, Progress
from trace_engine.triage.stage import (
    CACHE_FILE,
    STATUS_ABORTED,
    STATUS_WITH_ERRORS,
    SUMMARY_FILE,
    TRIAGED_FILE,
    format_category_table,
    run_triage_stage,
)

EXIT_OK, EXIT_ITEM_ERRORS, EXIT_BAD_INPUT, EXIT_ABORTED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def register(subparsers: Any) -> None:
    triage = subparsers.add_parser(
        "triage",
        help="judge every pair under the new policy: INVERT / PUNISH / RETAIN",
        description="Judge both responses of every pair under the new policy and categorise the pair.\n"
        "Verdicts are cached (SQLite) by judge, template version, policy, prompt and response, so a re-run\n"
        "with unchanged inputs makes no judge calls and a killed run resumes where it stopped.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    triage.add_argument(
        "--pairs", required=True, help="dataset: .jsonl/.json/.parquet, saved dataset dir, hf://..."
    )
    triage.add_argument(
        "--policy", required=True, help="policy text file (markdown; optional [CLAUSE] headings)"
    )
    triage.add_argument("--judge", required=True, help="rules:PATH (offline clause patterns) or openai:MODEL")
    triage.add_argument(
        "--base-url", default=None, help="OpenAI-compatible endpoint (vLLM, SGLang, Azure...)"
    )
    triage.add_argument(
        "--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the key"
    )
    triage.add_argument(
        "--concurrency", type=positive_int, default=DEFAULT_CONCURRENCY, help="requests in flight"
    )
    triage.add_argument(
        "--max-consecutive-failures",
        type=positive_int,
        default=DEFAULT_MAX_CONSECUTIVE_FAILURES,
        help="stop (resumably) after this many judge failures in a row",
    )
    triage.add_argument(
        "--oracle", action="store_true", help="also ask the judge for a compliant y_c on PUNISH"
    )
    triage.add_argument(
        "--mode", choices=("online", "batch"), default="online", help="online requests or Batch API"
    )
    triage.add_argument(
        "--batch-poll-seconds",
        type=float,
        default=30.0,
        help="first Batch API poll interval (grows to 10 min)",
    )
    triage.add_argument(
        "--strict", action="store_true", help="fail on any invalid row instead of skipping it"
    )
    triage.add_argument("--preset", default=None, help="dataset preset mapping source columns to pairs")
    triage.add_argument(
        "--format", dest="fmt", default="auto", help="input format (default: from the extension)"
    )
    triage.add_argument(
        "--cache", default=None, help=f"verdict cache file (default: OUT/{CACHE_FILE}); shareable"
    )
    triage.add_argument("--progress-every", type=float, default=5.0, help="seconds between progress lines")
    triage.add_argument(
        "--out", required=True, help=f"output dir: {TRIAGED_FILE}, {SUMMARY_FILE}, {CACHE_FILE}"
    )
    triage.set_defaults(func=run_triage_command)


def run_triage_command(args: argparse.Namespace) -> int:
    from trace_engine.data.io import DatasetError
    from trace_engine.data.load import load_pairs
    from trace_engine.data.validate import DatasetValidationError

    try:
        policy = load_policy(args.policy)
        pairs, report = load_pairs(args.pairs, fmt=args.fmt, preset=args.preset, strict=args.strict)
        judge = build_judge(args.judge, base_url=args.base_url, api_key_env=args.api_key_env)
    except DatasetValidationError as exc:
        err(exc.report.format_text())
        err(f"error: {exc} (run without --strict to skip invalid rows)")
        return EXIT_BAD_INPUT
    except (DatasetError, OSError, ValueError) as exc:
        err(f"error: {exc}")
        return EXIT_BAD_INPUT
    if report.rows_skipped or report.duplicates_dropped:
        err(
            f"dataset: {report.pairs_kept} pairs kept; {report.rows_skipped} invalid rows skipped (--strict fails "
            f"instead), {report.duplicates_dropped} duplicate pairs dropped"
        )
    if not pairs:
        err(f"error: no valid pairs in {args.pairs}")
        return EXIT_BAD_INPUT
    batch = None
    if args.mode == "batch":
        from trace_engine.triage.batch import BATCH_DIR, openai_batch_sender

        try:
            batch = openai_batch_sender(
                judge,
                policy,
                Path(args.out) / BATCH_DIR,
                api_key_env=args.api_key_env,
                poll_interval=args.batch_poll_seconds,
                on_status=_print_batch_status,
            )
        except ValueError as exc:
            err(f"error: {exc}")
            return EXIT_BAD_INPUT
    return run_and_report(
        pairs,
        policy,
        judge,
        Path(args.out),
        cache=args.cache,
        concurrency=args.concurrency,
        max_consecutive_failures=args.max_consecutive_failures,
        oracle=args.oracle,
        progress_every=args.progress_every,
        batch=batch,
        extra_summary={"dataset": report.to_dict(), "mode": args.mode},
    )


def format_examples(triaged_path: Path, width: int = 70) -> str:
    """One example pair per category, for people reading the triage demo's output."""
    lines = ["", "Examples:"]
    seen: set[str] = set()
    for row in read_jsonl(triaged_path):
        if row["category"] in seen:
            continue
        seen.add(row["category"])
        old_chosen = row["rejected_verdict"] if row["swapped"] else row["chosen_verdict"]
        old_rejected = row["chosen_verdict"] if row["swapped"] else row["rejected_verdict"]
        lines.append(f"  {row['category']} {row['id']}: {_clip(prompt_as_text(row['prompt']), width)}")
        for label, text, verdict in (
            ("old chosen  ", row["original_chosen"], old_chosen),
            ("old rejected", row["original_rejected"], old_rejected),
        ):
            judged = verdict["verdict"] + (f" {','.join(verdict['clauses'])}" if verdict["clauses"] else "")
            lines.append(f"    {label} [{judged}] {_clip(text, width)}")
        if row.get("oracle_response"):
            lines.append(f"    oracle y_c    {_clip(row['oracle_response'], width)}")
    return "\n".join(lines)


def _clip(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def build_judge(spec: str, *, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY") -> Judge:
    """`rules:PATH` or `openai:MODEL` -> a Judge (construction lives in the judges' factory)."""
    from trace_engine.judge.factory import make_judge

    return make_judge(spec, base_url=base_url, api_key_env=api_key_env)


def _print_batch_status(chunks: list[dict[str, Any]]) -> None:
    states = ", ".join(
        f"{c.get('batch_id')}: {c.get('status')} {c.get('counts') or ''}".rstrip() for c in chunks
    )
    err(f"[batch] {states}")


def run_and_report(
    pairs: list[Any],
    policy: Policy,
    judge: Judge,
    out: Path,
    *,
    cache: str | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    max_consecutive_failures: int = DEFAULT_MAX_CONSECUTIVE_FAILURES,
    oracle: bool = False,
    progress_every: float = 5.0,
    batch: Any = None,
    extra_summary: dict[str, Any] | None = None,
) -> int:
    try:
        outcome = run_triage_stage(
            pairs,
            policy,
            judge,
            out,
            cache_path=cache,
            concurrency=concurrency,
            max_consecutive_failures=max_consecutive_failures,
            oracle=oracle,
            progress=ProgressPrinter(progress_every),
            batch=batch,
            extra_summary=extra_summary,
        )
    except KeyboardInterrupt:
        err("interrupted: every verdict received so far is stored; re-run the same command to resume")
        return EXIT_INTERRUPTED
    summary = outcome.summary
    print(format_category_table(summary["counts"]))
    err(
        f"{summary['unique_responses']} unique responses: {summary['cache_hits']} from cache, "
        f"{summary['requests_sent']} requests sent, {summary['judge_calls']} judge calls "
        f"({summary['retries']} retries), {summary['prompt_tokens']}+{summary['completion_tokens']} tokens, "
        f"{summary['wall_s']:.1f}s"
    )
    for error in summary["errors"][:10]:
        err(f"  {error['kind']} error for {', '.join(error['item_ids'][:5])}: {error['error']}")
    if outcome.status == STATUS_ABORTED:
        err(f"error: {summary['message']}")
        return EXIT_ABORTED
    if outcome.status == STATUS_WITH_ERRORS:
        err(f"warning: {summary['message']} (details in {out / SUMMARY_FILE})")
        return EXIT_ITEM_ERRORS
    return EXIT_OK


class ProgressPrinter:
    """Prints `done/total, rate, ETA` to stderr at most every `every_s` seconds (and at the end of a phase)."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self._last = time.monotonic()

    def __call__(self, p: Progress) -> None:
        now = time.monotonic()
        finished = p.done >= p.total
        if self.every_s <= 0 or (not finished and now - self._last < self.every_s):
            return
        self._last = now
        eta = f"{p.eta_s:.0f}s" if p.eta_s is not None else "?"
        err(f"[{p.phase}] {p.done}/{p.total} done, {p.rate:.1f}/s, ETA {eta}")


