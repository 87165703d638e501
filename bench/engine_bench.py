"""Engine throughput: impact scoring and hybrid-loss training against the published pattern, same model, same data.

    .venv/bin/python bench/engine_bench.py --device cpu --size tiny
    python3 bench/engine_bench.py --device cuda --sizes 0.5b,1.5b,7b
    python3 bench/engine_bench.py --device cuda --sizes 7b:8,7b:16c   # SIZE:ROWS per forward, c = checkpointing

Random-init Qwen2-architecture models (real Qwen2 0.5B / 1.5B / 7B shapes; nothing is downloaded), bf16 on CUDA,
fp32 on CPU, SDPA attention, LoRA r=32 alpha=16 dropout 0.1 on q_proj,v_proj. Prompts ~64 and responses ~160
tokens of random ids. In one process it measures, per size:

- plain:      a batched forward + backward of Σ s(y) over the scoring rows (the floor for scoring);
- ours:       impact scoring (`trace_engine.impact.score_batches`: one forward + one backward per batch with ghost
              dot-products) and training steps (`trace_engine.train.train_step`: one batched forward over
              [preferred; dispreferred], loss by kind mask, cached reference log-probs, KL reference logits from a
              no-grad pass of the RETAIN rows with the adapter disabled);
- published:  an emulation of the published code's pattern: batch 1, padded to 256 tokens, a second full model copy
              as reference. Scoring: 4 no-grad forwards for Δ, then one forward+backward per response, flattened
              gradients, a dot product, `torch.cuda.empty_cache()` after each backward. Training: a per-sample loop
              (policy forwards per response, two reference forwards for INVERT/PUNISH, one for RETAIN with a
              full-vocabulary KL), AdamW step every 4 samples. It is timed on a few samples and extrapolated per
              sample (`published_extrapolated: true`).

Timings use torch.cuda.synchronize on CUDA and exclude one warmup iteration per phase. MFU (CUDA only) counts
4N FLOPs per trained token and 2N per reference-forward token (N = parameters, input embedding excluded unless
tied) against the card's dense bf16 peak. The last line printed is one JSON object.
Needs only torch, transformers, peft (and this repository).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from trace_engine.config import FUSED_MODES, KL_RESPONSES, LossSettings, TrainConfig  # noqa: E402
from trace_engine.impact import (  # noqa: E402
    ScoringBatch,
    gold_gradient,
    score_batches,
    sequence_logps_of,
)
from trace_engine.kernels import fuse_elementwise_, restore_eager_  # noqa: E402
from trace_engine.modeling import checkpointed_layers, seed_lora_  # noqa: E402
from trace_engine.tokenization import EncodedPair, EncodedSequence, collate  # noqa: E402
from trace_engine.variants import SampleKind  # noqa: E402

QWEN2_SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=384, vocab_size=4096, tie_word_embeddings=True),
    "0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True),
    "1.5b": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                 intermediate_size=8960, vocab_size=151936, tie_word_embeddings=True),
    "7b": dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
               intermediate_size=18944, vocab_size=152064, tie_word_embeddings=False),
}
# scoring samples (2 rows each), rows per forward, published samples timed, training steps timed, gold pairs,
# layer checkpointing (7B: 16 rows with checkpointing measured both faster and leaner on an H100 than 8 without)
DEFAULTS: dict[str, dict[str, int]] = {
    "tiny": dict(samples=32, micro_rows=4, published=6, train_steps=3, gold=8, checkpoint=0),  # CPU: cache-bound
    "0.5b": dict(samples=64, micro_rows=16, published=6, train_steps=4, gold=16, checkpoint=0),
    "1.5b": dict(samples=64, micro_rows=16, published=6, train_steps=4, gold=16, checkpoint=0),
    "7b": dict(samples=32, micro_rows=16, published=4, train_steps=4, gold=16, checkpoint=1),
}
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12}
PUBLISHED_PAD = 256
BETA = 0.3
ALPHA_KL = 0.1


# ---------------------------------------------------------------- setup


def build_base(size: str, device: torch.device, dtype: torch.dtype):
    """Random-init Qwen2 model built directly on `device` in `dtype` (a 7B never materialises in fp32 on CPU)."""
    import transformers
    from transformers import AutoModelForCausalLM, Qwen2Config

    cfg = Qwen2Config(**QWEN2_SHAPES[size], max_position_embeddings=4096, rope_theta=1e6, rms_norm_eps=1e-6,
                      use_cache=False)
    dtype_kw = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa", **{dtype_kw: dtype})
    return model.eval()


def param_count(model) -> int:
    """N for MFU: every parameter, minus the input embedding when it is not tied to the LM head (lookups are free)."""
    total = sum(p.numel() for p in model.parameters())
    if not model.config.tie_word_embeddings:
        total -= model.get_input_embeddings().weight.numel()
    return total


def attach_lora(base, seed: int):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(base, LoraConfig(r=32, lora_alpha=16, lora_dropout=0.1, target_modules=["q_proj", "v_proj"],
                                            bias="none", task_type="CAUSAL_LM"))
    seed_lora_(model, seed)
    return model


def random_pairs(n: int, vocab: int, gen: torch.Generator) -> list[EncodedPair]:
    """(prompt ~64, response ~160) x2 per pair, random ids away from the low (special) ids."""
    def ids(lo: int, hi: int) -> tuple[int, ...]:
        length = int(torch.randint(lo, hi + 1, (1,), generator=gen))
        return tuple(torch.randint(16, vocab, (length,), generator=gen).tolist())

    out = []
    for _ in range(n):
        prompt = ids(56, 72)
        out.append(EncodedPair(EncodedSequence(prompt, ids(144, 176)), EncodedSequence(prompt, ids(144, 176))))
    return out


def scoring_batches(pairs: list[EncodedPair], kinds: list[SampleKind], rows_per_batch: int) -> list[ScoringBatch]:
    """Length-sorted pairs, rows_per_batch // 2 pairs per batch, rows (preferred_i, dispreferred_i)."""
    order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i].preferred) - len(pairs[i].dispreferred))
    per = max(1, rows_per_batch // 2)
    out = []
    for s in range(0, len(order), per):
        chunk = order[s : s + per]
        seqs = [pairs[i].preferred for i in chunk] + [pairs[i].dispreferred for i in chunk]
        batch = collate(seqs, pad_id=0, pad_to_multiple_of=8)
        m = len(chunk)
        out.append(ScoringBatch(batch, [f"s{i}" for i in chunk], [kinds[i] for i in chunk],
                                [(j, m + j) for j in range(m)]))
    return out


def real_tokens(batches: list[ScoringBatch]) -> int:
    return int(sum(int(b.batch.attention_mask.sum()) for b in batches))


class Clock:
    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def __init__(self, device: torch.device, repeats: int = 1):
        self.cuda = device.type == "cuda"
        self.repeats = max(1, repeats)

    def time(self, fn: Callable[[], Any]) -> float:
        """Best of `repeats` runs (a shared CPU machine is noisy; the minimum is the least disturbed run)."""
        best = math.inf
        for _ in range(self.repeats):
            self.sync()
            t = time.perf_counter()
            fn()
            self.sync()
            best = min(best, time.perf_counter() - t)
        return best

    def reset_peak(self) -> None:
        if self.cuda:
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_gb(self) -> float | None:
        return torch.cuda.max_memory_allocated() / 2**30 if self.cuda else None


# ---------------------------------------------------------------- plain and ours


def plain_pass(model, batches: list[ScoringBatch], device: torch.device, amp, checkpoint: bool) -> None:
    """Forward + backward of Σ s(y) per batch, LoRA gradients accumulated, nothing else (dropout off)."""
    with checkpointed_layers(model, checkpoint):
        for sb in batches:
            b = sb.batch.to(device)
            sequence_logps_of(model, b, amp).sum().backward()
    model.zero_grad(set_to_none=True)


def ours_training(model, pairs: list[EncodedPair], micro_pairs: int, steps: int, device: torch.device, dtype,
                  checkpoint: bool, kl_responses: str):
    """Returns (run(step_count) closure, trained tokens per step, reference-forward tokens per step, samples/step)."""
    from trace_engine.config import TrainConfig
    from trace_engine.runtime import Runtime
    from trace_engine.train import StepInputs, train_step
    from trace_engine.variants import LossKind

    cfg = TrainConfig(beta=BETA, alpha_kl=ALPHA_KL, batch_size=micro_pairs, grad_accum=1, lr=1e-4,
                      kl_responses=kl_responses)
    cycle = [LossKind.PREF, LossKind.DUAL_NPO, LossKind.KL]
    kinds = torch.tensor([int(cycle[i % 3]) for i in range(len(pairs))])
    weights = torch.ones(len(pairs))
    # cached reference log-probs (scoring returns them); values only set the σ factors
    ref = torch.stack([torch.full((len(pairs),), -400.0), torch.full((len(pairs),), -400.0)], dim=1)
    inputs = StepInputs(pairs, kinds, weights, ref, 0, cfg)
    rt = Runtime(device, dtype)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    groups = [[list(range(s, s + micro_pairs))] for s in range(0, len(pairs) - micro_pairs + 1, micro_pairs)]

    def run(group_ids: list[int]) -> None:
        model.train()
        with checkpointed_layers(model, checkpoint):
            for g in group_ids:
                train_step(model, optimizer, scheduler, groups[g], inputs, rt, cfg)

    both = cfg.kl_responses == "both"  # KL examples forward only their preferred response unless "both"
    timed = list(enumerate(pairs[: micro_pairs * steps]))
    trained = sum(len(p.preferred) + (len(p.dispreferred) if both or kinds[i] != LossKind.KL else 0)
                  for i, p in timed)
    ref_tok = sum(len(p.preferred) + (len(p.dispreferred) if both else 0) for i, p in timed if kinds[i] == LossKind.KL)
    return run, groups, trained, ref_tok


def profile_one(fn: Callable[[], Any], label: str) -> None:
    """Top kernels and CPU-vs-device totals of one call (is it launch-bound or compute-bound?)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    started = time.perf_counter()
    with profile(activities=acts) as prof:
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    wall = time.perf_counter() - started
    events = prof.key_averages()
    sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    print(f"## profile: {label} (wall {wall * 1e3:.1f} ms under the profiler)\n"
          + events.table(sort_by=sort, row_limit=30, max_name_column_width=70), file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the published pattern (emulation)


def padded_row(seq: EncodedSequence, device: torch.device):
    """Batch-1 row padded to PUBLISHED_PAD tokens (max_length padding), labels mask on response tokens."""
    ids = torch.zeros((1, PUBLISHED_PAD), dtype=torch.long)
    attn = torch.zeros((1, PUBLISHED_PAD), dtype=torch.long)
    resp = torch.zeros((1, PUBLISHED_PAD), dtype=torch.bool)
    full = seq.input_ids[:PUBLISHED_PAD]
    ids[0, : len(full)] = torch.tensor(full)
    attn[0, : len(full)] = 1
    resp[0, len(seq.prompt_ids) : len(full)] = True
    return ids.to(device), attn.to(device), resp.to(device)


def published_logps(model, row) -> torch.Tensor:
    ids, attn, resp = row
    logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits
    logp = torch.log_softmax(logits.float(), dim=-1)  # full-vocabulary fp32 log-softmax, as published
    picked = torch.gather(logp[:, :-1], 2, ids[:, 1:, None]).squeeze(-1)
    return (picked * resp[:, 1:]).sum(-1)


def published_score_one(policy, ref_model, pair: EncodedPair, g_flat: torch.Tensor, device, cuda: bool) -> float:
    params = [p for p in policy.parameters() if p.requires_grad]
    pos, neg = padded_row(pair.preferred, device), padded_row(pair.dispreferred, device)
    with torch.no_grad():  # Δ from four forwards (always 0 at θ_ref)
        delta = (published_logps(policy, pos) - published_logps(ref_model, pos)) - (
            published_logps(policy, neg) - published_logps(ref_model, neg)
        )
    coef = -BETA * torch.sigmoid(-BETA * delta)
    flat = []
    for row in (pos, neg):
        grads = torch.autograd.grad(published_logps(policy, row).sum(), params)
        flat.append(torch.cat([g.reshape(-1) for g in grads]))
        if cuda:
            torch.cuda.empty_cache()
    return float(torch.dot((coef * (flat[0] - flat[1])).float(), g_flat))


def published_train_one(policy, ref_model, pair: EncodedPair, kind: str, optimizer, step_no: int, device) -> None:
    pos, neg = padded_row(pair.preferred, device), padded_row(pair.dispreferred, device)
    if kind == "RETAIN":
        ids, attn, resp = pos
        logits = policy(input_ids=ids, attention_mask=attn, use_cache=False).logits.float()
        with torch.no_grad():
            ref_logits = ref_model(input_ids=ids, attention_mask=attn, use_cache=False).logits.float()
        p_ref = torch.softmax(ref_logits, -1)
        kl = (p_ref * (torch.log(p_ref + 1e-12) - torch.log_softmax(logits, -1))).sum(-1)
        loss = ALPHA_KL * (kl * resp).sum() / resp.sum()
    else:
        s_pos, s_neg = published_logps(policy, pos), published_logps(policy, neg)
        with torch.no_grad():
            r_pos, r_neg = published_logps(ref_model, pos), published_logps(ref_model, neg)
        if kind == "INVERT":
            loss = -torch.nn.functional.logsigmoid(BETA * ((s_pos - r_pos) - (s_neg - r_neg))).sum()
        else:
            loss = -(torch.nn.functional.logsigmoid(-BETA * (s_pos - r_pos))
                     + torch.nn.functional.logsigmoid(-BETA * (s_neg - r_neg))).sum()
    loss.backward()
    if step_no % 4 == 3:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


# ---------------------------------------------------------------- one size


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_size(size: str, device: torch.device, args) -> dict[str, Any]:
    d = {**DEFAULTS[size]}
    for key in ("samples", "micro_rows", "published", "train_steps", "gold", "checkpoint"):
        if getattr(args, key) is not None:
            d[key] = getattr(args, key)
    ckpt = bool(d["checkpoint"])
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    clock = Clock(device, args.repeats if args.repeats else (3 if device.type == "cpu" else 2))
    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    started = time.perf_counter()

    log(f"{size}: building (micro_rows={d['micro_rows']})")
    base = build_base(size, device, dtype)
    n_params = param_count(base)
    vocab = base.config.vocab_size
    fusion = fuse_elementwise_(base, args.fused_kernels)  # what the engine does when it loads a model
    model = attach_lora(base, args.seed)
    amp = dtype if device.type == "cuda" else None
    t_build = time.perf_counter() - started

    kinds_cycle = [SampleKind.INVERT, SampleKind.PUNISH_NPO]
    score_pairs = random_pairs(d["samples"], vocab, gen)
    kinds = [kinds_cycle[i % 2] for i in range(len(score_pairs))]
    batches = scoring_batches(score_pairs, kinds, d["micro_rows"])
    gold = scoring_batches(random_pairs(d["gold"], vocab, gen), [SampleKind.INVERT] * d["gold"], d["micro_rows"])
    tokens = real_tokens(batches)
    settings = LossSettings(beta=BETA)
    res: dict[str, Any] = {"size": size, "params": n_params, "micro_rows": d["micro_rows"], "checkpoint": ckpt,
                           "scoring_samples": d["samples"], "scoring_tokens": tokens, "fused_kernels": fusion.to_dict(),
                           "kl_responses": args.kl_responses}

    # ---- ours and plain (one model copy)
    log(f"{size}: built in {t_build:.1f}s; gold gradient, plain, ours scoring")
    model.eval()
    clock.reset_peak()
    gold_gradient(model, gold[:1], BETA, ckpt)  # warmup (kernels, allocator)
    holder: dict[str, Any] = {}
    t_gold = clock.time(lambda: holder.update(g=gold_gradient(model, gold, BETA, ckpt)))
    g_j = holder.pop("g")
    plain_pass(model, batches[:1], device, amp, ckpt)
    t_plain = clock.time(lambda: plain_pass(model, batches, device, amp, ckpt))
    mem_plain = clock.peak_gb()

    clock.reset_peak()
    score_batches(model, batches[:1], g_j, settings, ckpt)
    t_ours = clock.time(lambda: holder.update(s=score_batches(model, batches, g_j, settings, ckpt)))
    scored = holder.pop("s")
    mem_ours_scoring = clock.peak_gb()
    if args.profile:
        profile_one(lambda: plain_pass(model, batches[:1], device, amp, ckpt), f"{size} plain batch")
        profile_one(lambda: score_batches(model, batches[:1], g_j, settings, ckpt), f"{size} ours scoring batch")
    assert len(scored) == len(score_pairs) and all(math.isfinite(s.raw_score) for s in scored)

    log(f"{size}: ours training")
    micro_pairs = max(1, d["micro_rows"] // 2)
    train_pairs = random_pairs(micro_pairs * (d["train_steps"] + 1), vocab, gen)
    run_train, groups, trained_tok, ref_tok = ours_training(model, train_pairs[micro_pairs:] + train_pairs[:micro_pairs],
                                                            micro_pairs, d["train_steps"], device, dtype, ckpt,
                                                            args.kl_responses)
    clock.reset_peak()
    run_train([len(groups) - 1])  # warmup step on the last group
    t_train = clock.time(lambda: run_train(list(range(d["train_steps"]))))
    mem_ours_training = clock.peak_gb()
    if args.profile:
        profile_one(lambda: run_train([0]), f"{size} ours training step")
    train_samples = micro_pairs * d["train_steps"]
    model.eval()
    model.zero_grad(set_to_none=True)

    # ---- published pattern (second full copy as reference)
    log(f"{size}: published emulation (second model copy)")
    restore_eager_(model)  # the published pattern runs the stock eager modules
    ref_model = build_base(size, device, dtype)
    g_flat = torch.cat([g_j[n].reshape(-1) for n, p in model.named_parameters() if p.requires_grad]).float()
    cuda = device.type == "cuda"
    clock.reset_peak()
    published_score_one(model, ref_model, score_pairs[0], g_flat, device, cuda)
    m = min(d["published"], len(score_pairs))
    t_pub_score = clock.time(
        lambda: [published_score_one(model, ref_model, score_pairs[i], g_flat, device, cuda) for i in range(m)]
    )
    mem_pub_scoring = clock.peak_gb()
    pub_score_per_sample = t_pub_score / m

    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    mix = ["INVERT", "PUNISH", "RETAIN"]
    clock.reset_peak()
    published_train_one(model, ref_model, train_pairs[0], "INVERT", optimizer, 0, device)
    mt = max(3, d["published"])
    t_pub_train = clock.time(
        lambda: [published_train_one(model, ref_model, train_pairs[i % len(train_pairs)], mix[i % 3], optimizer, i,
                                     device) for i in range(mt)]
    )
    mem_pub_training = clock.peak_gb()
    pub_train_per_sample = t_pub_train / mt
    model.eval()

    res.update(_summary(device, n_params, tokens, t_plain, t_ours, t_gold, t_train, trained_tok, ref_tok,
                        train_samples, d, pub_score_per_sample, pub_train_per_sample, m, mt,
                        [mem_plain, mem_ours_scoring, mem_ours_training, mem_pub_scoring, mem_pub_training]))
    res["build_seconds"] = t_build
    res["wall_seconds"] = time.perf_counter() - started
    return res  # the models go out of scope here; main() collects them before the next size


def _summary(device, n, tokens, t_plain, t_ours, t_gold, t_train, trained_tok, ref_tok, train_samples, d,
             pub_score_per_sample, pub_train_per_sample, m, mt, mems) -> dict[str, Any]:
    pub_score_total = pub_score_per_sample * d["samples"]
    pub_train_total = pub_train_per_sample * train_samples
    out: dict[str, Any] = {
        "scoring_vs_plain": t_plain / t_ours,
        "scoring_vs_published": pub_score_total / t_ours,
        "training_vs_published": pub_train_total / t_train,
        "published_extrapolated": True,
        "published_samples_timed": {"scoring": m, "training": mt},
        "timings_s": {
            "plain_fwd_bwd": t_plain,
            "ours_scoring": t_ours,
            "ours_gold_gradient": t_gold,
            "ours_training": t_train,
            "ours_training_steps": d["train_steps"],
            "ours_training_samples": train_samples,
            "published_scoring_per_sample": pub_score_per_sample,
            "published_scoring_extrapolated": pub_score_total,
            "published_training_per_sample": pub_train_per_sample,
            "published_training_extrapolated": pub_train_total,
        },
        "tokens_per_s": {"plain": tokens / t_plain, "ours_scoring": tokens / t_ours,
                         "ours_training": trained_tok / t_train},
    }
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
        if peak is not None:
            out["mfu"] = (4 * n * trained_tok + 2 * n * ref_tok) / t_train / peak
            out["mfu_scoring"] = 4 * n * tokens / t_ours / peak
            out["mfu_plain"] = 4 * n * tokens / t_plain / peak
        else:
            out["mfu"] = None
        plain, sc, tr, psc, ptr = mems
        out["peak_mem_gb"] = {"plain": plain, "ours_scoring": sc, "ours_training": tr,
                              "published_scoring": psc, "published_training": ptr}
        out["peak_mem_vs_published"] = max(sc, tr) / max(psc, ptr)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", choices=sorted(QWEN2_SHAPES), default="tiny")
    ap.add_argument("--sizes", help="comma-separated sizes run one after another in this process (overrides --size)")
    ap.add_argument("--samples", type=int, help="conflict samples scored (2 rows each)")
    ap.add_argument("--micro-rows", dest="micro_rows", type=int, help="rows per forward (ours and plain)")
    ap.add_argument("--published", type=int, help="samples timed for the published emulation")
    ap.add_argument("--train-steps", dest="train_steps", type=int)
    ap.add_argument("--gold", type=int, help="gold pairs for g_J")
    ap.add_argument("--checkpoint", type=int, choices=[0, 1], default=None,
                    help="1: recompute each decoder layer in the backward (ours and plain): less memory, one more "
                         "forward; default per size (on for 7b)")
    ap.add_argument("--profile", action="store_true", help="print a kernel profile of one plain and one scoring batch")
    ap.add_argument("--repeats", type=int, help="time each phase this many times, keep the best (default: 3 on CPU, 2 on CUDA: a first run may still compile)")
    ap.add_argument("--fused-kernels", dest="fused_kernels", choices=FUSED_MODES, default="auto",
                    help="ours and plain: compiled RMSNorm/SwiGLU as the engine loads models (auto = on CUDA); the "
                         "published emulation always runs eager")
    ap.add_argument("--kl-responses", dest="kl_responses", choices=KL_RESPONSES, default=TrainConfig().kl_responses,
                    help="training: RETAIN KL on the preferred response (default, as published) or both")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="also write the final JSON here")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but CUDA is not available")
    sizes = args.sizes.split(",") if args.sizes else [args.size]
    for spec in sizes:  # "7b", "7b:4" (4 rows per forward), "7b:16c" (16 rows, layer checkpointing)
        if spec.split(":")[0] not in QWEN2_SHAPES:
            ap.error(f"unknown size {spec!r}; choose from {sorted(QWEN2_SHAPES)} (optionally SIZE:ROWS[c])")
    results: dict[str, Any] = {}
    for spec in sizes:
        size, _, micro = spec.partition(":")
        override: dict[str, Any] = {}
        if micro:
            override = {"micro_rows": int(micro.rstrip("c")), "checkpoint": int(micro.endswith("c"))}
        run_args = argparse.Namespace(**{**vars(args), **override})
        try:
            results[spec] = run_size(size, device, run_args)
        except Exception as exc:  # one size failing (e.g. out of memory) must not lose the others
            results[spec] = {"size": size, "error": f"{type(exc).__name__}: {exc}"[:2000]}
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        print(f"# {spec}: {json.dumps(results[spec])}", flush=True)
    import peft
    import transformers

    final = {**results[sizes[-1]], "sizes": sizes, "by_size": results if len(sizes) > 1 else None,
             "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
             "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                          "peft": peft.__version__}}
    line = json.dumps(final)
    if args.out:
        Path(args.out).write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
