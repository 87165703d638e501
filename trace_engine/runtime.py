"""Device and process handling in one place: device, dtype, autocast, and (under `accelerate launch`) ranks.

One process: every collective is the identity. Several processes (accelerate launch / torchrun, NCCL on GPU, gloo
on CPU): an `accelerate.Accelerator` sets up the process group and picks each rank's device; the collectives here
are the few the engine needs (sum gradients / tensors, gather Python objects in rank order, barrier). Outputs are
written by the main process only (`is_main`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from trace_engine.modeling import default_dtype, pick_device

T = TypeVar("T")


def launched_world_size() -> int:
    """Processes in this launch (accelerate launch --multi_gpu / torchrun set WORLD_SIZE; accelerate's multi-CPU
    mode runs under mpirun); 1 when run directly."""
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):  # torchrun, MPI
        if os.environ.get(name):
            return int(os.environ[name])
    return 1


@dataclass
class Runtime:
    device: torch.device
    dtype: torch.dtype
    accelerator: Any = None  # accelerate.Accelerator when several processes run

    @classmethod
    def create(
        cls, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
    ) -> Runtime:
        """Single process unless launched with several; `device` 'cpu' forces CPU ranks (gloo)."""
        if launched_world_size() > 1:
            from accelerate import Accelerator

            accelerator = Accelerator(cpu=pick_device(device).type == "cpu")
            return cls(accelerator.device, default_dtype(accelerator.device, dtype), accelerator)
        dev = pick_device(device)
        return cls(dev, default_dtype(dev, dtype))

    # ---- ranks

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes if self.accelerator is not None else 1

    @property
    def rank(self) -> int:
        return self.accelerator.process_index if self.accelerator is not None else 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's contiguous slice of `items`; sizes differ by at most one, some may be empty."""
        n, w, r = len(items), self.world_size, self.rank
        lo, hi = (n * r) // w, (n * (r + 1)) // w
        return list(items[lo:hi])

    # ---- collectives (identity on one process)

    def all_reduce_sum_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Sum each tensor over ranks in place, with ONE collective (flattened in fp32/fp64)."""
        if self.world_size == 1 or not tensors:
            return
        import torch.distributed as dist

        dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
        flat = torch.cat([t.detach().reshape(-1).to(self.device, dtype) for t in tensors])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for t in tensors:
            n = t.numel()
            t.copy_(flat[offset : offset + n].view_as(t).to(t.dtype))
            offset += n

    def gather_objects(self, obj: T) -> list[T]:
        """Every rank's `obj`, in rank order, on every rank."""
        if self.world_size == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()

    def close(self) -> None:
        """Leave the process group (after every rank got here). Without it, a rank that exits while gloo's threads
        still run can abort with "terminate called without an active exception" (seen once in CI)."""
        if self.accelerator is None:
            return
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            self.accelerator.wait_for_everyone()
            dist.destroy_process_group()

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cuda" and self.dtype in (torch.bfloat16, torch.float16):
            return torch.autocast("cuda", dtype=self.dtype)
        return contextlib.nullcontext()
