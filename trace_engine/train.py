"""The training recipe (design.md §5): setup -> reference log-probs -> train -> checkpoint -> save.

Read `train` top to bottom. Each step is ONE batched forward over [preferred rows; dispreferred rows] of every
example in the micro-batch; each example's loss is picked by its kind mask (variants.LossKind), weighted, summed.
Reference sequence log-probs are computed once up front (adapter disabled) or taken from scoring; the KL anchor's
reference logits come from a second no-grad forward of only the RETAIN rows with the adapter disabled.
All device placement lives in `Runtime` (trace_engine.runtime). Under `accelerate launch` every rank runs this
same function: each micro-batch is split into contiguous per-rank shards, every rank back-propagates
Σ_{its shard} w_i ℓ_i / (examples in the GLOBAL step), and the gradients are summed over ranks once per optimizer
step, so N processes take exactly the step one process takes on the same global batch. Only rank 0 writes.

Around the recipe: settings in `config`, the order and pace of steps in `schedule`, checkpoints, weights and the
adapter's files in `checkpoint`, the metrics log in `metrics_log`.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trace_engine import checkpoint as ckpt
from trace_engine import metrics_log
from trace_engine.config import ConfigError, LengthLimits, TrainConfig
from trace_engine.head import (
    PolicyPass,
    causal_forward_kwargs,
    kl_sums_from_hidden,
    last_hidden,
    policy_pass,
    split_lm_head,
)
from trace_engine.logprobs import SequenceBatch, host_to_device, token_kl_sums
from trace_engine.losses import KindMasks, hybrid_loss
from trace_engine.modeling import (
    ModelSource,
    attach_lora,
    is_adapter_model,
    load_causal_lm,
    load_tokenizer,
    reference_mode,
)
from trace_engine.reference_cache import sequence_key
from trace_engine.runtime import Runtime
from trace_engine.schedule import count_steps, epoch_order, examples_reached, micro_batches, warmup_cosine
from trace_engine.tokenization import (
    EncodedPair,
    collate,
    encode_pairs,
    pad_id_of,
)
from trace_engine.variants import (
    Example,
    LossKind,
    PreparedData,
    prepare_examples,
)

ProgressFn = Callable[[int, int, dict[str, float]], None]
_NOT_IN_FINGERPRINT = ("checkpoint_every", "fused_kernels")  # settings that do not change the trained weights


@dataclass
class TrainResult:
    output_dir: Path  # the adapter (or full model) directory
    metrics_path: Path
    steps: int
    final_metrics: dict[str, float]
    provenance: dict[str, Any]


# ---------------------------------------------------------------- the recipe


def train(
    rows: Sequence[dict[str, Any]],
    config: TrainConfig,
    *,
    base: ModelSource,
    output_dir: str | Path,
    reference_logps: Mapping[str, float] | None = None,
    progress: ProgressFn | None = None,
    resume: bool = True,
    device: str | torch.device | None = None,
    runtime: Runtime | None = None,
) -> TrainResult:
    """Train one adapter on triaged rows; resume from the latest complete checkpoint in `output_dir` if any.

    rows: triaged rows (`trace_engine.triage.categorize` layout), with `impact_score` where the variant weights by
    impact. reference_logps: precomputed reference s(y) keyed by `sequence_key(prompt, response)` (e.g. from
    scoring, with the same tokenizer and length limits); missing ones are computed. resume=False refuses a directory
    that already holds checkpoints. Writes `<output_dir>/adapter` (or `/model` for a full fine-tune),
    `metrics.jsonl` and `checkpoints/` (rank 0 only). runtime: device/process handling; default
    `Runtime.create(device, config.dtype)`, which joins the process group when launched with several processes.
    The adapter starts from LoRA A seeded with `config.seed` (modeling.seed_lora_), the θ_ref scoring uses.
    """
    # ---- setup: every check that can fail runs before the model is loaded
    data = training_examples(rows, config)
    base.validate()
    run_dir = Path(output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    rt = runtime or Runtime.create(device, config.dtype)
    seed_everything(config.seed + rt.rank)  # dropout masks differ per rank; the LoRA init does not use this RNG

    tokenizer = load_tokenizer(base)
    pad_id = pad_id_of(tokenizer)
    limits = LengthLimits(config.max_prompt_len, config.max_len)
    encoded, truncation = encode_pairs(
        tokenizer,
        [e.prompt for e in data.examples],
        [e.preferred for e in data.examples],
        [e.dispreferred for e in data.examples],
        limits,
    )
    model = trainable_model(base, config, rt)
    fingerprint = {
        "base_model": base.to_dict(),
        "data_hash": data.data_hash(),
        "config": {k: v for k, v in config.to_dict().items() if k not in _NOT_IN_FINGERPRINT},
    }
    latest = ckpt.latest_checkpoint(run_dir)
    if latest is not None and not resume:
        raise ckpt.CheckpointMismatch(f"{run_dir} already holds checkpoints ({latest.name}); resume or use a new dir")
    # refuses another model / data / config, early
    position, state = ckpt.read_state(latest, fingerprint) if latest is not None else (ckpt.Position(0, 0, 0), None)

    # ---- the schedule's length, and the examples its steps reach
    n = len(data.examples)
    total_steps = count_steps(n, config)
    lengths = [max(len(p.preferred), len(p.dispreferred)) for p in encoded]  # a row pads to its batch's longest
    reached = examples_reached(n, lengths if config.group_by_length else None, config, total_steps)

    # ---- reference sequence log-probs: once, before any update (the policy at step 0 IS the reference), only for
    # the examples the run reaches (a max_steps shorter than an epoch never reads the others)
    ref = torch.zeros(n, 2)
    ref[reached] = reference_sequence_logps(model, [encoded[i] for i in reached],
                                            [data.examples[i] for i in reached], rt, config, pad_id, reference_logps)

    # ---- optimizer, schedule, resume
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = warmup_cosine(optimizer, total_steps, config.warmup_ratio, config.min_lr_ratio)
    metrics_path = run_dir / "metrics.jsonl"
    if latest is not None and state is not None:
        ckpt.load_weights(model, latest)  # after the reference pass: a full fine-tune's reference is the base
        rng_tensors = ckpt.load_trainer_state(latest, optimizer, scheduler)
        ckpt.restore_rng(state["rng"], rng_tensors)
        if rt.is_main:
            metrics_log.truncate_metrics(metrics_path, position.step)
    elif metrics_path.exists() and rt.is_main:
        metrics_path.unlink()  # a fresh run starts a fresh log
    rt.barrier()

    kinds = torch.tensor([int(e.kind) for e in data.examples])
    weights = torch.tensor([e.weight for e in data.examples], dtype=torch.float32)
    step_fn = StepInputs(encoded, kinds, weights, ref, pad_id, config)

    # ---- train
    model.train()
    last: dict[str, float | None] = metrics_log.last_metrics(metrics_path)  # non-empty only when resuming
    with open(metrics_path, "a", encoding="utf-8") if rt.is_main else contextlib.nullcontext() as log:
        while position.step < total_steps:
            order = epoch_order(n, config.seed, position.epoch)
            micro = micro_batches(order, lengths if config.group_by_length else None, config.batch_size,
                                  config.seed, position.epoch)
            for start in range(position.batch_in_epoch, len(micro), config.grad_accum):
                if position.step >= total_steps:
                    break
                group = micro[start : start + config.grad_accum]
                started = time.perf_counter()
                sums = train_step(model, optimizer, scheduler, group, step_fn, rt, config)
                last = metrics_log.step_metrics(sums, position, time.perf_counter() - started)
                position = position.after_step(start + len(group), len(micro))
                if log is not None:
                    metrics_log.append_metrics(log, last)
                if config.checkpoint_every and position.step % config.checkpoint_every == 0:
                    if rt.is_main:
                        ckpt.save_checkpoint(
                            run_dir, position, lambda d: ckpt.save_weights(model, d), optimizer, scheduler, fingerprint
                        )
                    rt.barrier()
                if progress is not None and rt.is_main:
                    progress(position.step, total_steps, last)

    # ---- save: adapter (or full model) + tokenizer + provenance, atomically
    outcome = {"steps": position.step, "world_size": rt.world_size, "final_metrics": last}

    provenance = ckpt.adapter_provenance(base, config, data, truncation, outcome)
    out = run_dir / ("model" if config.full_finetune else "adapter")
    if rt.is_main:
        ckpt.save_adapter(out, model, tokenizer, provenance)
    rt.barrier()
    return TrainResult(out, metrics_path, position.step, last, provenance)


# ---------------------------------------------------------------- setup


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def training_examples(rows: Sequence[dict[str, Any]], config: TrainConfig) -> PreparedData:
    """The examples the run trains on, after every check that needs no model (a bad config or data fails here)."""
    config.validate()
    data = prepare_examples(list(rows), config.variant)
    if config.alpha_kl == 0:
        data = _drop_kind(data, LossKind.KL, "unused_RETAIN_alpha_kl_0")
    if config.full_finetune and any(e.kind is LossKind.KL for e in data.examples):
        raise ConfigError(
            "the KL anchor needs reference logits every step, which a full fine-tune cannot get without a second "
            "copy of the weights; use LoRA, alpha_kl=0, or a variant without KL"
        )
    return data


def _drop_kind(data: PreparedData, kind: LossKind, reason: str) -> PreparedData:
    kept = [e for e in data.examples if e.kind is not kind]
    counts = dict(data.counts)
    dropped = len(data.examples) - len(kept)
    if dropped:
        counts[reason] = dropped
        counts.pop(kind.name, None)
    return PreparedData(kept, counts, data.provenance)


def trainable_model(base: ModelSource, config: TrainConfig, rt: Runtime):
    """The base model on the runtime's device with what trains switched on: a seeded LoRA adapter (the θ_ref
    scoring uses) or, for a full fine-tune, every weight; activation checkpointing when asked."""
    model = load_causal_lm(base, rt.device, rt.dtype, config.fused_kernels)
    if config.full_finetune:
        model.requires_grad_(True)
    else:
        model = attach_lora(model, config.lora, seed=config.seed)  # validates target modules first
    if config.gradient_checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5 name
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


# ---------------------------------------------------------------- one optimizer step


@dataclass
class StepInputs:
    """Everything a step needs about the examples, indexed by example number (CPU tensors)."""

    encoded: list[EncodedPair]
    kinds: torch.Tensor  # [n] long, LossKind codes
    weights: torch.Tensor  # [n] float
    ref: torch.Tensor  # [n, 2] reference s(preferred), s(dispreferred)
    pad_id: int
    config: TrainConfig


def train_step(model, optimizer, scheduler, group: list[list[int]], inputs: StepInputs, rt: Runtime, cfg):
    """Forward/backward this rank's shard of each micro-batch of the group, sum gradients over ranks, then one
    optimizer update. `group` holds GLOBAL micro-batches (the same on every rank). Returns global detached sums."""
    n_examples = sum(len(mb) for mb in group)
    sums = {name: torch.zeros((), device=rt.device) for name in PART_NAMES}
    counts = {"n_pref": 0, "n_npo": 0, "n_kl": 0}
    tokens = torch.zeros((), device=rt.device)
    for mb in group:
        local = rt.shard(mb)
        if local:
            loss, parts, batch_tokens = micro_batch_loss(model, local, inputs, rt, cfg)
            (loss / n_examples).backward()
            for k, v in parts.items():
                sums[k] = sums[k] + v
            tokens = tokens + batch_tokens
        kinds = inputs.kinds[mb].tolist()  # CPU tensor: no device sync
        counts["n_pref"] += kinds.count(LossKind.PREF)
        counts["n_npo"] += kinds.count(LossKind.DUAL_NPO) + kinds.count(LossKind.NPO_DISPREFERRED)
        counts["n_kl"] += kinds.count(LossKind.KL)
    params = [p for p in model.parameters() if p.requires_grad]
    if rt.world_size > 1:  # one coalesced all-reduce per optimizer step (accumulation needs no sync in between)
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)  # this rank had no rows in the step
        rt.all_reduce_sum_([p.grad for p in params])
    max_norm = cfg.max_grad_norm if cfg.max_grad_norm else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    summed = torch.stack([sums[k].float() for k in PART_NAMES] + [tokens.float()])
    rt.all_reduce_sum_([summed])
    values = torch.cat([summed, grad_norm.float().to(rt.device).reshape(1)]).tolist()  # the one sync per step
    out = dict(zip([*PART_NAMES, "tokens", "grad_norm"], values, strict=True))
    return {**out, **counts, "examples": n_examples, "lr": lr}


PART_NAMES = (
    "loss_sum",
    "pref_loss_sum",
    "npo_loss_sum",
    "kl_sum",
    "reward_chosen_sum",
    "reward_rejected_sum",
    "accuracy_sum",
    "npo_reward_sum",
    "npo_responses",
)


def micro_batch_loss(model, mb: list[int], inputs: StepInputs, rt: Runtime, cfg: TrainConfig):
    """Σ_i w_i ℓ_i over one micro-batch (not yet divided by the step size), metric sums, token count."""
    # KL examples first, so their rows are two contiguous slices (views of the logits, no copies)
    is_kl_list = [c == LossKind.KL for c in inputs.kinds[mb].tolist()]  # CPU tensor: no device sync
    mb = [i for i, kl in zip(mb, is_kl_list, strict=True) if kl] + [
        i for i, kl in zip(mb, is_kl_list, strict=True) if not kl
    ]
    b, k = len(mb), sum(is_kl_list)
    # rows: preferred of every example, then dispreferred (without the KL examples' when only the preferred anchors)
    k_neg = k if cfg.kl_responses == "preferred" else 0
    host_batch = collate(
        [inputs.encoded[i].preferred for i in mb] + [inputs.encoded[i].dispreferred for i in mb[k_neg:]],
        inputs.pad_id,
        cfg.pad_to_multiple_of,
    )
    # everything this micro-batch needs goes to the device up front, without blocking (no sync mid-step)
    batch = host_batch.to(rt.device)
    kl_rows = torch.cat([torch.arange(k), torch.arange(b, b + k)]) if cfg.kl_responses == "both" else torch.arange(k)
    kl_batch = host_batch.select(kl_rows).to(rt.device) if k else None
    idx = torch.tensor(mb)
    kinds = host_to_device(inputs.kinds[idx], rt.device)  # [b]
    weights = host_to_device(inputs.weights[idx], rt.device)  # [b]
    ref_pos, ref_neg = host_to_device(inputs.ref[idx].T.contiguous(), rt.device)  # [b] each

    # the RETAIN rows' reference pass first: it needs only the inputs, and started after the policy pass it would
    # wait for that pass to finish (transformers reads a mask-check value on the host) and then starve the GPU
    kl_reference = reference_for_kl(model, kl_batch, rt) if k else None
    with rt.autocast():
        fwd = policy_pass(model, batch, cfg.chunk_tokens)
    logps = fwd.logps  # [2b - k_neg]
    n_tok = batch.num_response_tokens.to(logps.dtype)
    if k_neg:  # KL examples have no dispreferred row: zeros stand in (their kind masks every use of them)
        logps = torch.cat([logps[:b], logps.new_zeros(k_neg), logps[b:]])
        n_tok = torch.cat([n_tok[:b], n_tok.new_zeros(k_neg), n_tok[b:]])
    pos, neg = logps[:b], logps[b:]

    kl = torch.zeros(b, device=rt.device)
    if k:
        rows = host_to_device(kl_rows, rt.device)
        kl = torch.cat([retain_kl(fwd, kl_reference, kl_batch, rows, k, rt, cfg), kl[k:]])

    is_pref, is_dual = kinds == LossKind.PREF, kinds == LossKind.DUAL_NPO
    is_neg, is_kl = kinds == LossKind.NPO_DISPREFERRED, kinds == LossKind.KL
    terms = hybrid_loss(KindMasks(is_pref, is_dual, is_neg, is_kl), pos, neg, ref_pos, ref_neg, n_tok[:b], n_tok[b:],
                        cfg.loss, kl)
    pref, dual, npo_neg, per_example = terms.pref, terms.dual_npo, terms.npo_dispreferred, terms.per_example  # [b]
    loss = (weights * per_example).sum()

    with torch.no_grad():
        beta = cfg.beta
        r_pos, r_neg = beta * (pos - ref_pos), beta * (neg - ref_neg)
        f = {name: m.float() for name, m in (("p", is_pref), ("d", is_dual), ("n", is_neg), ("k", is_kl))}
        parts = {
            "loss_sum": (weights * per_example).detach().sum(),
            "pref_loss_sum": (pref * f["p"]).sum(),
            "npo_loss_sum": (dual * f["d"] + npo_neg * f["n"]).sum(),
            "kl_sum": (kl.detach() * f["k"]).sum(),
            "reward_chosen_sum": (r_pos * f["p"]).sum(),
            "reward_rejected_sum": (r_neg * f["p"]).sum(),
            "accuracy_sum": ((r_pos > r_neg).float() * f["p"]).sum(),
            "npo_reward_sum": (r_pos * f["d"] + r_neg * (f["d"] + f["n"])).sum(),
            "npo_responses": (2 * f["d"] + f["n"]).sum(),
        }
        parts = {name: v.detach() for name, v in parts.items()}
    return loss, parts, batch.attention_mask.sum()


@torch.no_grad()
def reference_for_kl(model, kl_batch: SequenceBatch, rt: Runtime) -> torch.Tensor:
    """The reference (adapter disabled) for the RETAIN rows: last hidden states [R, T, H] where the head can be
    split off (`head.split_lm_head`), else logits [R, T, V]."""
    split = split_lm_head(model)
    with reference_mode(model), rt.autocast():
        if split is not None:
            return last_hidden(split, kl_batch)
        return model(**causal_forward_kwargs(kl_batch)).logits


def retain_kl(fwd: PolicyPass, reference: torch.Tensor, kl_batch: SequenceBatch, rows: torch.Tensor, k: int,
              rt: Runtime, cfg: TrainConfig) -> torch.Tensor:
    """Token-mean KL(π_ref ‖ π_θ) over the responses of the first k (RETAIN) examples.  -> [k]

    kl_batch: those examples' rows (preferred; then dispreferred with kl_responses "both"), which are `rows` of
    the policy pass; reference: `reference_for_kl` of kl_batch. With kl_responses "preferred" only the preferred
    response anchors (the published recipe's choice, half the cost).
    """
    if fwd.split is not None:
        with rt.autocast():
            sums, counts = kl_sums_from_hidden(fwd.hidden[rows], reference, fwd.split.weight, kl_batch,
                                               cfg.chunk_tokens, fwd.split.recompute)
    else:
        sums, counts = token_kl_sums(fwd.logits[rows], reference, kl_batch.response_mask, cfg.chunk_tokens)
    if sums.shape[0] > k:  # rows [0, k) are the preferred responses, [k, 2k) the dispreferred ones
        sums, counts = sums[:k] + sums[k:], counts[:k] + counts[k:]
    return sums / counts.clamp(min=1)


# ---------------------------------------------------------------- reference log-probs


@torch.no_grad()
def reference_sequence_logps(
    model,
    encoded: list[EncodedPair],
    examples: list[Example],
    rt: Runtime,
    cfg: TrainConfig,
    pad_id: int,
    cache: Mapping[str, float] | None = None,
) -> torch.Tensor:
    """[n, 2] reference s(preferred), s(dispreferred); cached values are used, the rest computed in batches.

    KL examples need no sequence log-probs (their reference is the logits, per step) and get 0.
    """
    cache = cache or {}
    out = torch.zeros(len(examples), 2)
    computed = torch.zeros(len(examples), 2)  # filled by the rank that computed each value, then summed
    todo: list[tuple[int, int]] = []  # (example, 0 = preferred / 1 = dispreferred)
    for i, e in enumerate(examples):
        if e.kind is LossKind.KL:
            continue
        for side, text in ((0, e.preferred), (1, e.dispreferred)):
            key = sequence_key(e.prompt, text)
            if key in cache:
                out[i, side] = float(cache[key])
            else:
                todo.append((i, side))
    if not todo:
        return out
    seqs = [encoded[i].preferred if side == 0 else encoded[i].dispreferred for i, side in todo]
    order = sorted(range(len(todo)), key=lambda j: len(seqs[j]), reverse=True)  # less padding
    order = order[rt.rank :: rt.world_size]  # this rank's share (strided over lengths: balanced)
    rows_per_batch = 2 * cfg.ref_batch_size
    was_training = model.training
    model.eval()
    ctx = reference_mode(model) if is_adapter_model(model) else contextlib.nullcontext()
    values = []  # per batch, left on the device: one host transfer at the end instead of a sync per batch
    with ctx:
        for s in range(0, len(order), rows_per_batch):
            chunk = order[s : s + rows_per_batch]
            batch = collate([seqs[j] for j in chunk], pad_id, cfg.pad_to_multiple_of).to(rt.device)
            with rt.autocast():
                values.append(policy_pass(model, batch, cfg.chunk_tokens).logps)
    if values:
        where = torch.tensor([todo[j] for j in order])  # [M, 2]: (example, side) of each computed value
        computed[where[:, 0], where[:, 1]] = torch.cat(values).float().cpu()
    model.train(was_training)
    rt.all_reduce_sum_([computed])
    return out + computed

