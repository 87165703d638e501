"""`realign validate` and `realign split`: check a preference dataset, and split a triaged one.

Exit codes: 0 done; 1 no usable pair, or the data failed `--strict` validation; 2 a user error (bad option, unreadable source,
unpinned Hub reference, infeasible split). User errors print one clear line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from trace_engine.cli.common import non_negative_int, positive_int
from trace_engine.data.io import FORMATS, DatasetError, write_json, write_jsonl
from trace_engine.data.load import load_pairs
from trace_engine.data.presets import PRESETS
from trace_engine.data.split import SplitError, derive_seed, make_splits, write_splits
from trace_engine.data.validate import DatasetValidationError, ValidationReport

EXIT_INVALID_DATA = 1
EXIT_USER_ERROR = 2

_SOURCE_HELP = ("a local file (.jsonl, .json array, .parquet), a folder written by datasets' save_to_disk, or a "
                "Hugging Face dataset as hf://REPO@REVISION:SPLIT or hf://REPO@REVISION:CONFIG/SPLIT (pin REVISION to a "
                "commit sha)")
_EXIT_CODES = ("exit codes: 0 ok, 1 invalid data (no usable pair, or any row error under --strict), 2 user error "
               "(bad option, unreadable source, ...)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `validate` and `split` subcommands."""
    validate = subparsers.add_parser(
        "validate", help="check a preference-pair dataset and print a report",
        description="Read a preference dataset (rows {id, prompt, chosen, rejected, ...}; prompt is a string or "
                    "a list of {role, content} messages; extra fields are kept; a missing id is derived from the "
                    "row's content), check every row and print a report of what was kept, skipped and why "
                    "(row numbers are 1-based; for JSONL they are line numbers).",
        epilog=_EXIT_CODES,
    )
    validate.add_argument("--pairs", required=True, metavar="SOURCE", help=f"the dataset: {_SOURCE_HELP}")
    _add_reading_options(validate)
    validate.add_argument("--json", action="store_true", help="print the report as JSON instead of text")
    validate.add_argument("--report", metavar="PATH", help="also write the full JSON report to PATH")
    validate.add_argument("--out", metavar="PATH",
                          help="write the kept pairs as JSONL to PATH (e.g. to convert a preset dataset)")
    validate.add_argument("--max-issues", type=non_negative_int, default=20, metavar="N",
                          help="how many issues the text report lists (default 20; the JSON report keeps up to 1000)")
    validate.set_defaults(func=run_validate)

    split = subparsers.add_parser(
        "split", help="split a triaged dataset into train1/train2/(val)/test and noisy copies",
        description="Prompt-disjoint split stratified by category (INVERT/PUNISH/RETAIN) with exact sizes "
                    "(largest-remainder allocation); train2 is a subset of train1; optional validation split "
                    "from the non-train prompts; nested noisy copies of train1 and train2. Writes DIR/train1.jsonl, "
                    "train2.jsonl, test.jsonl, val.jsonl (with --val-size), noisy/*.jsonl and manifest.json.",
        epilog=_EXIT_CODES,
    )
    split.add_argument("--triaged", required=True, metavar="SOURCE",
                       help=f"triaged pairs, each with a category field: {_SOURCE_HELP}")
    split.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    split.add_argument("--train-size", required=True, type=positive_int, metavar="N", help="pairs in train1")
    split.add_argument("--train2-size", required=True, type=non_negative_int, metavar="M",
                       help="pairs in train2, a stratified subset of train1 (M <= N)")
    split.add_argument("--val-size", type=non_negative_int, default=0, metavar="K",
                       help="pairs in the validation split, taken from prompts not in train (default 0: none)")
    split.add_argument("--seed", type=int, default=0, metavar="S", help="seed for every random choice (default 0)")
    split.add_argument("--noise-rates", type=_rate, nargs="*", default=[], metavar="R",
                       help="noise rates in (0, 1], e.g. 0.1 0.2: nested noisy copies of train1 and train2 "
                            "(default: none)")
    _add_reading_options(split, with_preset=False)
    split.set_defaults(func=run_split)


def _add_reading_options(parser: argparse.ArgumentParser, *, with_preset: bool = True) -> None:
    parser.add_argument("--format", choices=FORMATS, default="auto",
                        help="file format (default auto: from the file suffix)")
    if with_preset:
        parser.add_argument("--preset", choices=sorted(PRESETS),
                            help="map a known dataset's columns to pairs first (pku_saferlhf: PKU-SafeRLHF)")
    parser.add_argument("--strict", action="store_true",
                        help="fail (exit 1) if any row is malformed, instead of skipping it; all rows are still "
                             "checked so the report lists every problem")
    parser.add_argument("--keep-duplicates", action="store_true",
                        help="keep repeated (prompt, chosen, rejected) pairs instead of dropping them "
                             "(they are reported either way)")
    parser.add_argument("--allow-unpinned", action="store_true",
                        help="accept an hf:// reference without @REVISION (its data may change between runs)")
    parser.add_argument("--cache-dir", metavar="DIR", help="cache folder for Hugging Face datasets")


def run_validate(args: argparse.Namespace) -> int:
    try:
        pairs, report = load_pairs(
            args.pairs, fmt=args.format, preset=args.preset, drop_duplicates=not args.keep_duplicates,
            allow_unpinned=args.allow_unpinned, cache_dir=args.cache_dir,
        )
        if args.report:
            write_json(args.report, report.to_dict())
        if args.out and (report.ok or not args.strict):
            write_jsonl(args.out, (p.to_row() for p in pairs))
    except (DatasetError, OSError) as exc:
        return _user_error(exc)
    _print_report(report, as_json=args.json, max_issues=args.max_issues)
    if args.strict and not report.ok:
        print(f"realign validate: {report.error_count} row error(s) under --strict", file=sys.stderr)
        return EXIT_INVALID_DATA
    if report.pairs_kept == 0:
        print(f"realign validate: error: no usable preference pairs in {args.pairs} ({report.rows_read} row(s) read, "
              f"{report.rows_skipped} skipped)", file=sys.stderr)
        return EXIT_INVALID_DATA
    return 0


def run_split(args: argparse.Namespace) -> int:
    if args.train2_size > args.train_size:
        return _user_error(f"--train2-size ({args.train2_size}) must not exceed --train-size ({args.train_size})")
    rates = sorted({Decimal(r).normalize(): r for r in args.noise_rates}.values(), key=Decimal)
    try:
        pairs, report = load_pairs(
            args.triaged, fmt=args.format, strict=args.strict, drop_duplicates=not args.keep_duplicates,
            require_category=True, allow_unpinned=args.allow_unpinned, cache_dir=args.cache_dir,
        )
        result = make_splits(pairs, train_size=args.train_size, train2_size=args.train2_size,
                             val_size=args.val_size, seed=args.seed)
        manifest = write_splits(
            result, args.out, noise_rates=rates, noise_seed=derive_seed(args.seed, "noise"),
            extra_manifest={"input": _input_record(args.triaged, report)},
        )
    except DatasetValidationError as exc:
        _print_report(exc.report, as_json=False, max_issues=20, stream=sys.stderr)
        print(f"realign split: {exc.report.error_count} row error(s) under --strict; nothing written",
              file=sys.stderr)
        return EXIT_INVALID_DATA
    except (DatasetError, SplitError, OSError) as exc:
        return _user_error(exc)
    print(report.format_text(max_issues=5))
    for name, info in manifest["splits"].items():
        counts = ", ".join(f"{c}={n}" for c, n in info["per_category"].items())
        print(f"{name}: {info['pairs']} pairs, {info['prompts']} prompts ({counts})")
    for name, per_rate in manifest["noise"]["splits"].items():
        for label, stats in per_rate.items():
            print(f"{name} noisy {label}: {stats['corrupted']} corrupted ({stats['category_flip']} category flips, "
                  f"{stats['pair_swap']} pair swaps; DPO sees {stats['effective_noise_dpo']:.1%})")
    print(f"wrote {Path(args.out) / 'manifest.json'}")
    return 0


def _input_record(source: str, report: ValidationReport) -> dict[str, Any]:
    """Where the split came from: the source, its file hash when local, and the validation counts."""
    record: dict[str, Any] = {"source": str(source)}
    path = Path(source)
    if path.is_file():
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        record["sha256"] = digest.hexdigest()
    summary = report.to_dict()
    for key in ("issues", "issues_by_kind", "issues_note", "issues_capped"):
        summary.pop(key)
    record["validation"] = summary
    return record


def _print_report(report: ValidationReport, *, as_json: bool, max_issues: int, stream: Any = None) -> None:
    stream = stream or sys.stdout
    if as_json:
        print(json.dumps(report.to_dict(), ensure_ascii=False, indent=2), file=stream)
    else:
        print(report.format_text(max_issues=max_issues), file=stream)


def _user_error(error: object) -> int:
    print(f"realign: error: {error}", file=sys.stderr)
    return EXIT_USER_ERROR




def _rate(text: str) -> str:
    """Kept as text so 0.1 stays exactly 0.1 in counts and file names."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not Decimal(0) < value <= Decimal(1):
        raise argparse.ArgumentTypeError(f"noise rate must be in (0, 1], got {text}")
    return text
