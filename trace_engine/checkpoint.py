"""Atomic training checkpoints, the weights they hold, and the adapter a run ends with.

A checkpoint is written to a temporary directory, then renamed; it is valid only with the marker file.

Layout of `<run>/checkpoints/step-000042/`:
  adapter_model.safetensors + adapter_config.json   (or model.safetensors for a full fine-tune)
  trainer_state.pt     optimizer, scheduler and torch RNG states (loaded with weights_only=True: no pickle code)
  trainer_state.json   step, data position, python/numpy RNG, fingerprint (config, data hash, base model)
  COMPLETE             written last; a directory without it is ignored

`<run>/adapter/` (`<run>/model/` for a full fine-tune), written the same way once training ends: the weights as
above, the tokenizer, and `realign.json` (how the adapter was made: base model, data hash, config, counts, versions).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trace_engine.config import TrainConfig
from trace_engine.modeling import ModelSource, is_adapter_model
from trace_engine.tokenization import TruncationReport
from trace_engine.variants import PreparedData, get_variant

MARKER = "COMPLETE"
STATE_JSON = "trainer_state.json"
STATE_PT = "trainer_state.pt"


class CheckpointMismatch(ValueError):
    """A checkpoint from a different base model, data set or configuration."""


@dataclass
class Position:
    """Where training stands: optimizer steps done, and the next micro-batch of the epoch."""

    step: int
    epoch: int
    batch_in_epoch: int

    def after_step(self, next_batch: int, batches_in_epoch: int) -> Position:
        """Where training stands after this step, whose last micro-batch came just before `next_batch`."""
        if next_batch < batches_in_epoch:
            return Position(self.step + 1, self.epoch, next_batch)
        return Position(self.step + 1, self.epoch + 1, 0)


def capture_rng() -> tuple[dict[str, Any], dict[str, Any]]:
    """(json-safe python/numpy states, tensor states for torch)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    as_json = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    tensors: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state_all()
    return as_json, tensors


def restore_rng(as_json: dict[str, Any], tensors: dict[str, Any]) -> None:
    py_version, py_state, py_gauss = as_json["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    kind, keys, pos, has_gauss, cached = as_json["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(tensors["cuda"])


def write_atomic_dir(final: Path, fill: Callable[[Path], None]) -> Path:
    """Create `final` by filling a sibling temp dir, writing MARKER, fsyncing, and renaming it into place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    fill(tmp)
    (tmp / MARKER).write_text("ok\n")
    for p in tmp.iterdir():
        with open(p, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():  # re-writing the same step (e.g. a retried run): replace it whole
        old = final.parent / f".old-{final.name}-{os.getpid()}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
    return final


def save_checkpoint(
    run_dir: Path,
    position: Position,
    save_weights: Callable[[Path], None],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    fingerprint: dict[str, Any],
) -> Path:
    rng_json, rng_tensors = capture_rng()

    def fill(d: Path) -> None:
        save_weights(d)
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_tensors}, d / STATE_PT
        )
        state = {
            "step": position.step,
            "epoch": position.epoch,
            "batch_in_epoch": position.batch_in_epoch,
            "rng": rng_json,
            "fingerprint": fingerprint,
        }
        (d / STATE_JSON).write_text(json.dumps(state, indent=1, sort_keys=True))

    return write_atomic_dir(run_dir / "checkpoints" / f"step-{position.step:06d}", fill)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return None
    done = [p for p in root.glob("step-*") if (p / MARKER).exists()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def read_state(ckpt: Path, fingerprint: dict[str, Any]) -> tuple[Position, dict[str, Any]]:
    """Position + json state, after checking the checkpoint was made by the same base model, data and config."""
    if not (ckpt / MARKER).exists():
        raise CheckpointMismatch(f"{ckpt} is incomplete (no {MARKER} marker)")
    state = json.loads((ckpt / STATE_JSON).read_text())
    theirs = state["fingerprint"]
    for key in ("base_model", "data_hash", "config"):
        if theirs.get(key) != fingerprint.get(key):
            diff = _describe_diff(theirs.get(key), fingerprint.get(key))
            raise CheckpointMismatch(f"checkpoint {ckpt} was made with a different {key}: {diff}; refusing to resume")
    return Position(state["step"], state["epoch"], state["batch_in_epoch"]), state


def load_trainer_state(ckpt: Path, optimizer, scheduler) -> dict[str, Any]:
    blob = torch.load(ckpt / STATE_PT, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    return blob["rng"]


def save_weights(model, directory: Path) -> None:
    """Adapter: adapter_model.safetensors + adapter_config.json. Full fine-tune: the whole model, safetensors."""
    model.save_pretrained(directory, safe_serialization=True)


def load_weights(model, directory: Path) -> None:
    """Load what `save_weights` wrote into `model` (in place); refuses adapter weights made for another model."""
    from safetensors.torch import load_file

    if is_adapter_model(model):
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, load_file(directory / "adapter_model.safetensors"))
        bad = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
        if bad:
            raise CheckpointMismatch(f"{directory}: adapter weights do not fit this model ({bad[:3]})")
        return
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(directory, dtype=next(model.parameters()).dtype, use_safetensors=True)
    model.load_state_dict(reloaded.state_dict())


def save_adapter(out: Path, model, tokenizer, provenance: dict[str, Any]) -> Path:
    """The run's result, atomically: weights (adapter or full model), tokenizer, and `realign.json` provenance."""

    def fill(d: Path) -> None:
        save_weights(model, d)
        tokenizer.save_pretrained(d)
        (d / "realign.json").write_text(json.dumps(provenance, indent=1, ensure_ascii=False))

    return write_atomic_dir(out, fill)


def adapter_provenance(base: ModelSource, config: TrainConfig, data: PreparedData, truncation: TruncationReport,
                       outcome: dict[str, Any]) -> dict[str, Any]:
    """What `realign.json` records: how the adapter was made, and the run's outcome (steps, final metrics)."""
    return {
        "format": "realign-adapter/1",
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "base_model": base.to_dict(),
        "data_hash": data.data_hash(),
        "variant": config.variant,
        "variant_description": get_variant(config.variant).description,
        "config": config.to_dict(),
        "counts": {**data.counts, "examples": len(data.examples)},
        "truncation": truncation.to_dict(),
        **outcome,
        "versions": _versions(),
        **data.provenance,
    }


def _versions() -> dict[str, str]:
    import peft
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}


def _describe_diff(old: Any, new: Any) -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys)
    return f"{old!r} -> {new!r}"
