"""`realign score`, `realign train`, `realign merge`.

score: triaged rows -> impact scores at θ_ref (LoRA A seeded with --seed) -> OUT/scored.jsonl, scored.summary.json,
       reference_logps.safetensors (reference log-probs from the same pass, reused by training), score.json.
train: triaged rows (scored first when the variant weights by impact) or scored rows -> OUT/adapter/ (adapter
       weights, adapter_config.json, tokenizer files, realign.json provenance), OUT/metrics.jsonl; resumes from the
       latest complete checkpoint in OUT unless --no-resume.
merge: adapter directory -> merged safetensors weights + tokenizer.

Several GPUs: `accelerate launch --multi_gpu --num_processes N -m trace_engine.cli score|train ...` (on CPU,
`torchrun --nproc_per_node N -m trace_engine.cli ...`). Scoring is sharded and gathered, training sums gradients
over ranks (same step as one process with the same global batch); only rank 0 writes.

Exit codes: 0 done; 2 bad input (message on stderr, checked before any model is loaded where possible).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from trace_engine.categories import CATEGORIES, Category
from trace_engine.checkpoint import CheckpointMismatch
from trace_engine.config import (
    DEFAULT_CHECK_ANCHORS,
    DEFAULT_UNIFORM_MIX,
    DEFAULT_WEIGHT_CAP,
    FUSED_MODES,
    KL_RESPONSES,
    ConfigError,
    LoraSettings,
    TrainConfig,
)
from trace_engine.data.io import DatasetError, iter_raw_rows
from trace_engine.gold import GOLD_SOURCES
from trace_engine.modeling import ModelLoadError, ModelSource
from trace_engine.reference_cache import REFERENCE_CACHE, load_reference_cache, save_reference_cache
from trace_engine.variants import (
    SCORED_PREF_LOSSES,
    SCORING_VARIANTS,
    VARIANTS,
    DataError,
    get_variant,
    prepare_examples,
    scored_as,
)

EXIT_OK, EXIT_BAD_INPUT = 0, 2
SCORED_FILE, SCORE_META = "scored.jsonl", "score.json"
# settings that change the scores (must match between scoring and training) / the reference log-probs
_SCORE_KEYS = ("variant", "base_model", "seed", "lora_r", "lora_alpha", "target_modules", "beta", "pref_loss", "npo_two_over_beta")
_CACHE_KEYS = ("base_model", "max_prompt_len", "max_len", "dtype")


class UserError(ValueError):
    """Bad input the user can fix; printed as one line, exit 2."""


_USER_ERRORS = (UserError, DataError, ConfigError, ModelLoadError, CheckpointMismatch, DatasetError, FileNotFoundError)


# ---------------------------------------------------------------- parsers


def register(subparsers: Any) -> None:
    score = subparsers.add_parser(
        "score",
        help="impact scores of the conflicting pairs (w_k = <g_J, grad l_k> at the reference model)",
        description="Score every INVERT/PUNISH pair (or every pair for no_triage) by its alignment with the gold "
        "batch's gradient at θ_ref, clamp and normalise.",
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    score.add_argument("--triaged", required=True, help="triaged rows (JSONL/JSON/Parquet from `realign triage`)")
    _model_args(score)
    score.add_argument("--variant", required=True, choices=SCORING_VARIANTS, help="which loss each sample is scored for")
    score.add_argument("--out", required=True, help="output directory")
    _scoring_args(score, batch_flag="--batch-size")
    _loss_args(score, SCORED_PREF_LOSSES)
    _lora_args(score)
    _length_args(score)
    score.add_argument("--seed", type=int, default=0, help="seed of the gold batch and of the LoRA A init")
    score.set_defaults(func=run_score)
    _one_line_errors(score)

    train = subparsers.add_parser(
        "train",
        help="train one LoRA adapter with the hybrid objective (scores first when the variant needs weights)",
        description="Train an adapter for a variant or baseline. With --triaged and an impact-weighted variant "
        "the pairs are scored first (OUT/scoring/, reused on a re-run); with --scored the given weights are used "
        "together with the reference log-prob cache next to the scored file.",
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument("--triaged", help="triaged rows; scored first if the variant weights by impact")
    source.add_argument("--scored", help="scored rows (`realign score` output, with impact_score)")
    _model_args(train)
    train.add_argument("--variant", required=True, choices=sorted(VARIANTS), help="variant or baseline to train")
    train.add_argument("--out", required=True, help="run directory (adapter/, metrics.jsonl, checkpoints/)")
    defaults = TrainConfig()
    _loss_args(train, ("dpo", "ipo", "rdpo"))
    train.add_argument("--alpha-kl", type=float, default=defaults.alpha_kl, help="weight of the RETAIN KL anchor")
    train.add_argument("--kl-responses", default=defaults.kl_responses, choices=KL_RESPONSES,
                       help="RETAIN KL anchor on both responses of a pair or only the preferred one (half the cost)")
    train.add_argument("--rdpo-eps", type=float, default=defaults.rdpo_eps, help="label-noise rate ε for rdpo")
    train.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate (AdamW)")
    train.add_argument("--weight-decay", type=float, default=defaults.weight_decay, help="AdamW weight decay")
    train.add_argument("--warmup-ratio", type=float, default=defaults.warmup_ratio, help="share of steps warming up")
    train.add_argument("--min-lr-ratio", type=float, default=defaults.min_lr_ratio, help="cosine floor, × lr")
    train.add_argument("--epochs", type=int, default=defaults.epochs, help="passes over the data")
    train.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    train.add_argument("--batch-size", type=int, default=defaults.batch_size,
                       help="pairs per micro-batch over ALL processes (each rank takes a slice)")
    train.add_argument("--grad-accum", type=int, default=defaults.grad_accum, help="micro-batches per step")
    train.add_argument("--max-grad-norm", type=float, default=defaults.max_grad_norm, help="clip; 0 = off")
    train.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations (less memory)")
    train.add_argument("--group-by-length", action="store_true",
                       help="micro-batches of similar length (less padding on data with varied lengths)")
    train.add_argument("--full-finetune", action="store_true", help="train all weights instead of LoRA (no KL)")
    train.add_argument("--checkpoint-every", type=int, default=0, help="checkpoint every N steps (0 = never)")
    train.add_argument("--no-resume", action="store_true", help="refuse to continue from checkpoints in --out")
    train.add_argument("--seed", type=int, default=0, help="seed: data order, gold batch, LoRA A init")
    _scoring_args(train, batch_flag="--score-batch-size")
    _lora_args(train)
    _length_args(train)
    train.set_defaults(func=run_train)
    _one_line_errors(train)

    merge = subparsers.add_parser(
        "merge",
        help="merge a trained adapter into its base model (safetensors)",
        description="Write base + adapter as one model directory (safetensors weights and tokenizer). The base "
        "model comes from the adapter's realign.json unless --model is given.",
    )
    merge.add_argument("--adapter", required=True, help="adapter directory written by `realign train`")
    merge.add_argument("--out", required=True, help="output model directory")
    merge.add_argument("--model", default=None, help="base model path or Hub id (default: from realign.json)")
    merge.add_argument("--revision", default=None, help="40-character commit of a Hub base model")
    merge.add_argument("--dtype", default=None, choices=("bf16", "fp16", "fp32"),
                       help="dtype of the merged weights (default: the base checkpoint's)")
    merge.set_defaults(func=run_merge)
    _one_line_errors(merge)


def _one_line_errors(parser: argparse.ArgumentParser) -> None:
    """Argument errors as one line (no usage dump), exit 2, like every other user error of these commands."""

    def error(message: str) -> None:
        print(f"{parser.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)

    parser.error = error  # type: ignore[method-assign]


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="base model: local directory, or Hub id with --revision")
    p.add_argument("--revision", default=None, help="40-character commit hash (required for a Hub id)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--dtype", default=None, choices=("bf16", "fp16", "fp32"), help="default: bf16 on GPU, fp32 on CPU")
    p.add_argument("--fused-kernels", default="auto", choices=FUSED_MODES,
                   help="compiled RMSNorm/SwiGLU kernels (torch.compile): auto = on CUDA only")


def _loss_args(p: argparse.ArgumentParser, pref_losses: tuple[str, ...]) -> None:
    p.add_argument("--beta", type=float, default=TrainConfig().beta, help="β of the DPO/IPO/NPO losses")
    p.add_argument("--pref-loss", default="dpo", choices=pref_losses,
                   help="preference loss ℓ_pref (baselines with a fixed loss ignore it)")
    p.add_argument("--npo-two-over-beta", action="store_true", help="scale NPO by 2/β (NPO paper; TRACE omits it)")


def _scoring_args(p: argparse.ArgumentParser, batch_flag: str) -> None:
    p.add_argument("--gold-size", type=int, default=100, help="gold batch size B (Algorithm 2)")
    p.add_argument("--normalise", default="sum", choices=("sum", "mean"),
                   help="sum: weights sum to 1 (published); mean: weights average 1")
    p.add_argument("--weight-cap", type=float, default=DEFAULT_WEIGHT_CAP, metavar="X",
                   help="no pair may weigh more than X times the uniform weight; the excess goes to the other "
                   f"positive pairs (default {DEFAULT_WEIGHT_CAP:g}, chosen on validation: robust to noisy triage; "
                   "0 = no cap, as published)")
    p.add_argument("--uniform-mix", type=float, default=DEFAULT_UNIFORM_MIX, metavar="L",
                   help="mix the impact weights with uniform ones: (1-L) w + L mean(w) (default "
                   f"{DEFAULT_UNIFORM_MIX:g}; the real-text world's validation chose 0.5)")
    p.add_argument("--gate-weights", action="store_true",
                   help="impact decides which conflicting pairs train (score > 0: the uniform weight; else dropped; "
                   "a kind with no positive score is kept whole), not how much")
    p.add_argument("--check-anchors", action=argparse.BooleanOptionalAction, default=DEFAULT_CHECK_ANCHORS,
                   help="drop the KL anchor of RETAIN pairs whose preference contradicts the gold RETAIN pairs "
                   f"(default {'on' if DEFAULT_CHECK_ANCHORS else 'off'}, chosen on validation: robust to noisy "
                   "triage; --no-check-anchors anchors every RETAIN pair, as published)")
    p.add_argument("--gold-from", default="all", choices=GOLD_SOURCES,
                   help='rows the gold batch is drawn from: all (published), trusted (rows with "trusted": true) '
                   "or auto (the trusted rows when any row is marked)")
    p.add_argument(batch_flag, dest="score_batch_size", type=int, default=8, metavar="N",
                   help="conflict samples per scoring pass (each reads one or two sequences)")
    p.add_argument("--score-checkpointing", action="store_true", help="recompute activations while scoring")


def _lora_args(p: argparse.ArgumentParser) -> None:
    d = LoraSettings()
    p.add_argument("--lora-r", type=int, default=d.r, help="LoRA rank")
    p.add_argument("--lora-alpha", type=int, default=d.alpha, help="LoRA alpha")
    p.add_argument("--lora-dropout", type=float, default=d.dropout, help="LoRA dropout (training only)")
    p.add_argument("--target-modules", default=",".join(d.target_modules),
                   help="comma-separated linear layer names to adapt")


def _length_args(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    p.add_argument("--max-prompt-len", type=int, default=d.max_prompt_len, help="prompt tokens kept (the end)")
    p.add_argument("--max-len", type=int, default=d.max_len, help="prompt + response tokens kept")


# ---------------------------------------------------------------- commands


def run_score(args: argparse.Namespace) -> int:
    return _guarded("score", lambda: _score(args))


def run_train(args: argparse.Namespace) -> int:
    return _guarded("train", lambda: _train(args))


def run_merge(args: argparse.Namespace) -> int:
    return _guarded("merge", lambda: _merge(args))


def _guarded(name: str, body: Callable[[], int]) -> int:
    """User errors -> one line on stderr, exit 2; anything else is a bug and keeps its traceback."""
    try:
        return body()
    except _USER_ERRORS as exc:
        message = " ".join(str(exc).split())
        print(f"realign {name}: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _score(args: argparse.Namespace) -> int:
    rows = read_rows(args.triaged)
    lora = lora_settings(args)
    check_scoring_inputs(rows, args.variant, args.gold_size, args)
    base = ModelSource(args.model, args.revision)
    _check_model(base, lora)
    from trace_engine.runtime import Runtime

    rt = Runtime.create(args.device, args.dtype)
    result = score_from_flags(rows, args.variant, base, lora, args, rt)
    if rt.is_main:
        meta = write_score_outputs(Path(args.out), result, score_settings(args, args.variant, base, lora, rt, args.triaged))
        clamped = result.summary["share_clamped_to_zero"]
        print(f"scored {meta['n_scored']} samples ({args.variant}); share clamped to 0: {clamped:.3f} -> {args.out}")
    rt.barrier()
    rt.close()
    return EXIT_OK


def _train(args: argparse.Namespace) -> int:
    config = train_config(args)
    config.validate()
    base = ModelSource(args.model, args.revision)
    rows = read_rows(args.scored or args.triaged)
    needs_scores = get_variant(args.variant).needs_scores
    scoring_variant = scored_as(args.variant)
    cache: dict[str, float] | None = None
    if needs_scores and args.triaged:
        prepare_examples([{**r, "impact_score": 1.0} for r in rows], args.variant)  # everything but the scores
        check_scoring_inputs(rows, scoring_variant, args.gold_size, args)
    else:
        prepare_examples(rows, args.variant)  # missing scores, unknown category, empty conflict set ...
    _check_model(base, None if config.full_finetune else config.lora)

    from trace_engine.runtime import Runtime
    from trace_engine.train import train

    rt = Runtime.create(args.device, args.dtype)
    settings = score_settings(args, scoring_variant, base, config.lora, rt, args.triaged or args.scored)
    if needs_scores and args.triaged:
        rows, cache = _scores_for_training(rows, scoring_variant, base, config.lora, args, rt, settings)
    elif args.scored:
        cache = _cache_next_to(Path(args.scored), settings, needs_scores)

    def progress(step: int, total: int, metrics: Mapping[str, Any]) -> None:
        print(f"step {step}/{total} loss {metrics.get('loss', float('nan')):.4f} lr {metrics.get('lr', 0):.2e}",
              file=sys.stderr, flush=True)

    result = train(rows, config, base=base, output_dir=args.out, reference_logps=cache, resume=not args.no_resume,
                   runtime=rt, progress=progress)
    if rt.is_main:
        print(f"trained {result.steps} steps ({args.variant}) -> {result.output_dir}")
    rt.close()
    return EXIT_OK


def _merge(args: argparse.Namespace) -> int:
    adapter = Path(args.adapter)
    if not (adapter / "adapter_model.safetensors").is_file():
        raise UserError(f"{adapter} is not an adapter directory (no adapter_model.safetensors)")
    base = None
    if args.model:
        base = ModelSource(args.model, args.revision)
        base.validate()
    elif not (adapter / "realign.json").is_file():
        raise UserError(f"{adapter} has no realign.json; pass the base model with --model")
    from trace_engine.modeling import merge

    result = merge(adapter, args.out, base=base, dtype=args.dtype)
    print(f"merged {adapter} into {result.base.name_or_path} -> {result.out_dir}")
    return EXIT_OK


# ---------------------------------------------------------------- pieces (each testable without the CLI)


def read_rows(path: str) -> list[dict[str, Any]]:
    """All rows of a JSONL/JSON/Parquet file; the first undecodable or non-object row is a user error."""
    if not Path(path).is_file():
        raise UserError(f"input file {path} does not exist")
    rows = []
    for raw in iter_raw_rows(path):
        if raw.error is not None:
            raise UserError(f"{path} row {raw.row}: {raw.error}")
        if not isinstance(raw.data, dict):
            raise UserError(f"{path} row {raw.row}: expected a JSON object, got {type(raw.data).__name__}")
        rows.append(raw.data)
    if not rows:
        raise UserError(f"{path} holds no rows")
    return rows


def check_scoring_inputs(rows: list[dict[str, Any]], variant: str, gold_size: int, args: argparse.Namespace) -> None:
    """Everything scoring would refuse, found without a model: categories, ids, conflict set, gold batch, settings."""
    from trace_engine.gold import build_gold_batch, gold_candidates
    from trace_engine.scoring import conflict_samples

    if variant not in SCORING_VARIANTS:
        raise UserError(f"unknown scoring variant {variant!r}; use one of {', '.join(SCORING_VARIANTS)}")
    if args.pref_loss not in SCORED_PREF_LOSSES:
        raise UserError(f"impact scores support --pref-loss {' or '.join(SCORED_PREF_LOSSES)}, not {args.pref_loss!r}")
    if gold_size < 1 or args.score_batch_size < 1:
        raise UserError("--gold-size and the scoring batch size must be >= 1")
    if args.beta <= 0:
        raise UserError(f"--beta must be > 0, got {args.beta}")
    for i, row in enumerate(rows):
        if "id" not in row or "prompt" not in row:
            raise UserError(f"row {i + 1}: scoring needs 'id' and 'prompt' fields")
        category = row.get("category")
        if category not in (*CATEGORIES, Category.ERROR):
            raise UserError(f"row {row['id']}: unknown category {category!r}; expected one of "
                            f"{', '.join(CATEGORIES)} (run `realign triage` first)")
    ids = [str(r["id"]) for r in rows]
    if len(set(ids)) != len(ids):
        raise UserError("row ids must be unique (scores are attached to rows by id)")
    if not conflict_samples(rows, variant):
        raise UserError(f"no conflicting pairs to score for variant {variant!r} (empty conflict set): "
                        "the new policy changes nothing in this data")
    if args.weight_cap and not (math.isfinite(args.weight_cap) and args.weight_cap >= 1):
        raise UserError(f"--weight-cap must be 0 (no cap) or a finite number >= 1, got {args.weight_cap}")
    if not (math.isfinite(args.uniform_mix) and 0 <= args.uniform_mix <= 1):
        raise UserError(f"--uniform-mix must be in [0, 1], got {args.uniform_mix}")
    try:
        candidates = gold_candidates(rows, args.gold_from)
    except ValueError as exc:
        raise UserError(f"--gold-from {args.gold_from}: {exc}") from None
    if not build_gold_batch(candidates, gold_size, args.seed)[0]:
        raise UserError("the gold batch is empty (no RETAIN/INVERT pair and no PUNISH pair with a compliant "
                        "response); use a variant with uniform weights (no_impact)")


def _check_model(base: ModelSource, lora: LoraSettings | None) -> None:
    """Pinned revision, safetensors, and (for LoRA) target modules that exist: before any weights are read."""
    from trace_engine.modeling import validate_target_modules_of

    base.validate()
    if lora is not None:
        validate_target_modules_of(base, lora.target_modules)


def lora_settings(args: argparse.Namespace) -> LoraSettings:
    targets = tuple(t.strip() for t in args.target_modules.split(",") if t.strip())
    if not targets:
        raise UserError("--target-modules is empty")
    if args.lora_r < 1 or args.lora_alpha < 1 or not 0 <= args.lora_dropout < 1:
        raise UserError("--lora-r and --lora-alpha must be >= 1 and --lora-dropout in [0, 1)")
    return LoraSettings(r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout, target_modules=targets)


def train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        variant=args.variant, beta=args.beta, alpha_kl=args.alpha_kl, pref_loss=args.pref_loss,
        rdpo_eps=args.rdpo_eps, npo_two_over_beta=args.npo_two_over_beta, lr=args.lr,
        weight_decay=args.weight_decay, warmup_ratio=args.warmup_ratio, min_lr_ratio=args.min_lr_ratio,
        epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
        max_grad_norm=args.max_grad_norm or None, gradient_checkpointing=args.gradient_checkpointing,
        seed=args.seed, max_prompt_len=args.max_prompt_len, max_len=args.max_len, lora=lora_settings(args),
        full_finetune=args.full_finetune, dtype=args.dtype, checkpoint_every=args.checkpoint_every,
        fused_kernels=args.fused_kernels, kl_responses=args.kl_responses, group_by_length=args.group_by_length,
    )


def score_settings(args, variant: str, base: ModelSource, lora: LoraSettings, rt, input_path: str) -> dict[str, Any]:
    """What a score run depended on; training compares these before it trusts scores or the reference cache."""
    return {
        "variant": variant,
        "base_model": base.to_dict(),
        "seed": args.seed,
        "lora_r": lora.r,
        "lora_alpha": lora.alpha,
        "target_modules": list(lora.target_modules),
        "beta": args.beta,
        "pref_loss": args.pref_loss,
        "npo_two_over_beta": args.npo_two_over_beta,
        "max_prompt_len": args.max_prompt_len,
        "max_len": args.max_len,
        "dtype": str(rt.dtype).removeprefix("torch."),
        "gold_size": args.gold_size,
        "normalise": args.normalise,
        "weight_cap": args.weight_cap or None,
        "uniform_mix": args.uniform_mix,
        "gate_weights": args.gate_weights,
        "check_anchors": args.check_anchors,
        "gold_from": args.gold_from,
        "input_sha256": _file_sha256(input_path),
    }


def scoring_config(args: argparse.Namespace, variant: str, lora: LoraSettings) -> TrainConfig:
    """The settings `scoring.score` reads, from the score flags: the loss, LoRA, lengths, and passes of
    `--score-batch-size` pairs (as one training micro-batch), checkpointed with `--score-checkpointing`."""
    return TrainConfig(
        variant=variant, beta=args.beta, pref_loss=args.pref_loss, npo_two_over_beta=args.npo_two_over_beta,
        batch_size=args.score_batch_size, gradient_checkpointing=args.score_checkpointing, seed=args.seed,
        max_prompt_len=args.max_prompt_len, max_len=args.max_len, lora=lora, fused_kernels=args.fused_kernels,
    )


def score_from_flags(rows, variant: str, base: ModelSource, lora: LoraSettings, args, rt):
    """`scoring.score` with the flags' settings; every rank returns the full result."""
    from trace_engine.scoring import WeightShaping, score

    return score(base, rows, variant, scoring_config(args, variant, lora), normalise=args.normalise,
                 gold_size=args.gold_size, seed=args.seed, runtime=rt, gold_from=args.gold_from,
                 shaping=WeightShaping(cap=args.weight_cap or None, uniform_mix=args.uniform_mix,
                                       gate=args.gate_weights, check_anchors=args.check_anchors))


def write_score_outputs(out: Path, result, settings: Mapping[str, Any]) -> dict[str, Any]:
    """scored.jsonl (+ .summary.json), reference_logps.safetensors, and score.json (written last: the marker)."""
    from trace_engine.data.io import write_json
    from trace_engine.scoring import write_scored

    out.mkdir(parents=True, exist_ok=True)
    write_scored(out / SCORED_FILE, result)
    save_reference_cache(out / REFERENCE_CACHE, result.reference_logps, {k: settings[k] for k in _CACHE_KEYS})
    meta = {"format": "realign-scores/1", "settings": dict(settings), "n_scored": len(result.scored),
            "summary": result.summary}
    write_json(out / SCORE_META, meta)
    return meta


def _scores_for_training(rows, variant: str, base, lora, args, rt, settings) -> tuple[list[dict], dict[str, float]]:
    """Score into OUT/scoring/ unless a finished score run there used the same input and settings (resume)."""
    out = Path(args.out) / "scoring"
    meta_path = out / SCORE_META
    if meta_path.is_file() and json.loads(meta_path.read_text()).get("settings") == settings:
        cache, _ = load_reference_cache(out / REFERENCE_CACHE)
        return read_rows(str(out / SCORED_FILE)), cache
    result = score_from_flags(rows, variant, base, lora, args, rt)
    if rt.is_main:
        write_score_outputs(out, result, settings)
    rt.barrier()
    return result.rows, result.reference_logps


def _cache_next_to(scored: Path, settings: Mapping[str, Any], needs_scores: bool) -> dict[str, float] | None:
    """The reference cache of a `realign score` output, when it fits this run; refuses scores from other settings."""
    meta_path, cache_path = scored.parent / SCORE_META, scored.parent / REFERENCE_CACHE
    if not meta_path.is_file():
        return None
    made = json.loads(meta_path.read_text()).get("settings", {})
    if needs_scores:
        differ = [k for k in _SCORE_KEYS if made.get(k) != settings[k]]
        if differ:
            detail = ", ".join(f"{k}: scored with {made.get(k)!r}, training with {settings[k]!r}" for k in differ)
            raise UserError(f"{scored} was scored under other settings ({detail}); re-score or pass the same values")
    if not cache_path.is_file() or any(made.get(k) != settings[k] for k in _CACHE_KEYS):
        print("realign train: note: reference log-prob cache not reused (other model, lengths or dtype)",
              file=sys.stderr)
        return None
    cache, _ = load_reference_cache(cache_path)
    return cache


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
