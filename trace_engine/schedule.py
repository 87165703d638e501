"""The training schedule: which examples each optimizer step sees, in which order, and at what learning rate.

Every order is a pure function of (seed, epoch), so a resumed run draws exactly the batches the crashed one would
have drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from trace_engine.config import TrainConfig


def warmup_cosine(optimizer, total_steps: int, warmup_ratio: float, min_lr_ratio: float = 0.0):
    """Linear warmup over ceil(warmup_ratio * total) steps, then cosine decay to lr * min_lr_ratio."""
    warmup = math.ceil(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """A fixed shuffle per (seed, epoch), so a resumed run sees the same order."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def micro_batches(
    order: list[int], lengths: Sequence[int] | None, batch_size: int, seed: int, epoch: int, window: int = 32
) -> list[list[int]]:
    """Cut the epoch's shuffled order into micro-batches; with `lengths`, group examples of similar length.

    Grouping (as HF's group_by_length): each run of `window` micro-batches' worth of the shuffled order is sorted by
    length and cut, then the micro-batches are shuffled (seeded by seed and epoch, so a resumed run sees the same
    batches). Padding shrinks to the spread inside a batch; which examples share a step stays random beyond that.
    """
    if lengths is None:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    span = batch_size * window
    micro: list[list[int]] = []
    for s in range(0, len(order), span):
        chunk = sorted(order[s : s + span], key=lambda i: -lengths[i])
        micro.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 7_919)
    return [micro[i] for i in torch.randperm(len(micro), generator=g).tolist()]


def examples_reached(n: int, lengths: Sequence[int] | None, cfg: TrainConfig, total_steps: int) -> list[int]:
    """Sorted indices of the examples the first `total_steps` optimizer steps train on: every example once the run
    covers an epoch, else those of the first total_steps * grad_accum micro-batches of epoch 0 (the same batches
    the loop draws, resumed or not)."""
    micro = micro_batches(epoch_order(n, cfg.seed, 0), lengths, cfg.batch_size, cfg.seed, 0)
    take = total_steps * cfg.grad_accum
    if take >= len(micro):
        return list(range(n))
    return sorted(i for mb in micro[:take] for i in mb)




def count_steps(n: int, cfg: TrainConfig) -> int:
    """Optimizer steps of the run: each epoch's micro-batches in groups of grad_accum, capped by max_steps."""
    steps_per_epoch = math.ceil(math.ceil(n / cfg.batch_size) / cfg.grad_accum)
    total = steps_per_epoch * cfg.epochs
    return total if cfg.max_steps is None else min(total, cfg.max_steps)
