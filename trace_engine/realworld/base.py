"""The deployed model of the real-text world: SmolLM2-135M-Instruct briefly fine-tuned to follow the OLD policy.

Recipe: LoRA SFT (response tokens only, the model's chat template) on OLD-policy responses to TRAIN prompts drawn
apart from the pairs, plus the capability probes' answers, then merged into plain safetensors weights. Cached under
`<cache>/realworld/base-<key>` where the key hashes the recipe, the source model's file hash and the world's content;
written to a temporary folder and renamed, so a crash never leaves a folder that looks complete.

Pinning: CPU fine-tuning is not bit-reproducible across machines (two sessions' bases from the same recipe had
different weights), so results measured on one base could not be pooled with another's. Every build therefore also
writes its adapter (`old_policy_lora.safetensors`, fp16, the recipe key in its metadata); a copy of it in a
`pinned_dir` under the name `realworld-base-<key>.safetensors` is merged instead of training — in seconds, and into
the same weights on any machine (the merge is computed in float64 and rounded once, and a freshly trained base goes
through the same fp16 file and merge).

`python -m trace_engine.realworld.base --source DIR` builds (or finds) it and prints its path.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from trace_engine.config import LengthLimits, LoraSettings
from trace_engine.data.pairs import sha256_text
from trace_engine.modeling import ModelSource, attach_lora, load_causal_lm, load_tokenizer
from trace_engine.realworld.world import RealWorld
from trace_engine.synthetic.base_model import COMPLETE_MARKER as COMPLETE_MARKER  # the one cache layout
from trace_engine.synthetic.base_model import (
    StepProgress,
    _warmup_cosine,
    cached_build,
    response_nll,
    stderr_log,
)
from trace_engine.tokenization import collate, encode_sequences, pad_id_of

CODE_VERSION = "realworld-base-v1"
ADAPTER_FILE = "old_policy_lora.safetensors"
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class RealBaseRecipe:
    """Everything that determines the OLD-policy base; its hash (plus the source's) is the cache key."""

    world_seed: int = 0
    sft_examples: int = 320
    steps: int = 48
    batch_size: int = 8
    lr: float = 3e-4
    warmup_steps: int = 4
    lora_r: int = 16
    lora_alpha: int = 32
    train_seed: int = 0
    max_prompt_len: int = 64
    max_len: int = 128
    code_version: str = CODE_VERSION

    def key(self, source_id: str) -> str:
        recipe = json.dumps(asdict(self), sort_keys=True)
        return sha256_text("realworld-base", recipe, source_id, sft_fingerprint(self))[:20]


def sft_fingerprint(recipe: RealBaseRecipe) -> str:
    """Hash of exactly the fine-tuning data, so a change to the world's text retrains the base while a change to
    the judge's rules (which the base never sees) does not."""
    rows = RealWorld(recipe.world_seed).sft_examples(recipe.sft_examples)
    return sha256_text(json.dumps(rows, ensure_ascii=False))


def source_id(source: Path) -> str:
    """The imported model's identity: its GGUF sha256 when it came from `import-gguf`, else its config + weights
    file sizes (cheap; a different model folder gets a different key)."""
    marker = source / "COMPLETE"
    if marker.is_file():
        try:
            return str(json.loads(marker.read_text()).get("gguf_sha256"))
        except (ValueError, OSError):
            pass
    files = sorted((p.name, p.stat().st_size) for p in source.iterdir() if p.is_file())
    return sha256_text(json.dumps(files))


def default_cache_dir() -> Path:
    root = os.environ.get("REALIGN_CACHE_DIR")
    return Path(root) / "realworld" if root else Path.home() / ".cache" / "realign" / "realworld"


def ensure_real_base(source: str | Path, recipe: RealBaseRecipe | None = None, cache_dir: str | Path | None = None,
                     log: Callable[[str], None] | None = None, pinned_dir: str | Path | None = None
                     ) -> tuple[Path, dict[str, Any]]:
    """(folder of the OLD-policy base, its training metrics): cached; else merged from a pinned adapter for this
    exact key in `pinned_dir`; else trained now. Published atomically either way."""
    recipe = recipe or RealBaseRecipe()
    log = log or stderr_log
    src = Path(source)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = recipe.key(source_id(src))
    final = root / f"base-{key}"
    pinned = usable_pinned(Path(pinned_dir) / f"realworld-base-{key}.safetensors", key, log) if pinned_dir else None

    def build(tmp: Path) -> dict[str, Any]:
        if pinned is not None:
            log(f"OLD-policy base: merging the pinned adapter {pinned.name} (no training)")
            shutil.copyfile(pinned, tmp / ADAPTER_FILE)
            metrics = {**json.loads(safe_open_metadata(pinned).get("train_metrics", "{}")), "pinned": pinned.name}
        else:
            metrics = train_real_base(src, recipe, tmp / ADAPTER_FILE, key, log)
        merge_saved_adapter(src, tmp / ADAPTER_FILE, recipe, tmp)
        (tmp / "recipe.json").write_text(json.dumps({**asdict(recipe), "source": str(src)}, indent=2) + "\n")
        return metrics

    metrics, _ = cached_build(final, build)
    return final, metrics


def usable_pinned(path: Path, key: str, log: Callable[[str], None]) -> Path | None:
    """`path` when it is a pinned adapter for exactly this recipe key (its metadata says so), else None."""
    if not path.is_file():
        return None
    if safe_open_metadata(path).get("recipe_key") != key:
        log(f"OLD-policy base: ignoring {path}: its metadata names another recipe key; training instead")
        return None
    return path


def safe_open_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata() or {})


def lora_tensors(peft_model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter as `{module}.lora_A` / `{module}.lora_B` (module named as in the plain model), fp16 on CPU."""
    out: dict[str, torch.Tensor] = {}
    for name, param in peft_model.named_parameters():
        for part in ("lora_A", "lora_B"):
            marker = f".{part}.default.weight"
            if name.endswith(marker):
                module = name[: -len(marker)].removeprefix("base_model.model.")
                out[f"{module}.{part}"] = param.detach().to("cpu", torch.float16).contiguous()
    return out


def lora_delta(b: torch.Tensor, a: torch.Tensor, scale: float) -> torch.Tensor:
    """scale · B @ A in float64, summed rank by rank in a fixed order (elementwise products and additions only), so
    no kernel's summation order can change a bit; fp16 factors multiply exactly in float64."""
    b64, a64 = b.double(), a.double()
    delta = torch.zeros(b64.shape[0], a64.shape[1], dtype=torch.float64)
    for k in range(a64.shape[0]):
        delta += torch.outer(b64[:, k], a64[k])
    return delta * scale


def merge_lora_(model: torch.nn.Module, tensors: dict[str, torch.Tensor], scale: float) -> int:
    """W += scale * B @ A for every adapted module (`lora_delta`), rounded once to W's dtype, so the merged weights
    are the same bits on any CPU (a float32 matmul's rounding depends on the kernel's summation order).
    Returns how many modules were merged; an adapter naming a module the model lacks is an error."""
    modules = dict(model.named_modules())
    merged = 0
    with torch.no_grad():
        for key in sorted(k for k in tensors if k.endswith(".lora_A")):
            module_name = key.removesuffix(".lora_A")
            if module_name not in modules:
                raise ValueError(f"adapter names {module_name!r}, which the model does not have")
            weight = modules[module_name].weight
            delta = lora_delta(tensors[f"{module_name}.lora_B"], tensors[key], scale)
            weight.copy_((weight.double() + delta).to(weight.dtype))
            merged += 1
    return merged


def merge_saved_adapter(source: Path, adapter: Path, recipe: RealBaseRecipe, out: Path) -> None:
    """The source model with the saved adapter merged in, written as plain safetensors + tokenizer into `out`."""
    from safetensors.torch import load_file

    src = ModelSource(str(source))
    model = load_causal_lm(src, device="cpu", dtype="fp32")
    merged = merge_lora_(model, load_file(str(adapter)), recipe.lora_alpha / recipe.lora_r)
    if merged == 0:
        raise ValueError(f"{adapter} holds no LoRA tensors")
    model.save_pretrained(out, safe_serialization=True)
    load_tokenizer(src).save_pretrained(out)


def train_real_base(source: Path, recipe: RealBaseRecipe, adapter_out: Path, key: str,
                    log: Callable[[str], None]) -> dict[str, Any]:
    """LoRA SFT on OLD-policy answers; the adapter is saved (fp16 safetensors, key and metrics in its metadata) to
    `adapter_out` for `merge_saved_adapter`."""
    from safetensors.torch import save_file

    started = time.perf_counter()
    torch.manual_seed(recipe.train_seed)
    src = ModelSource(str(source))
    tokenizer = load_tokenizer(src)
    lora = LoraSettings(r=recipe.lora_r, alpha=recipe.lora_alpha, dropout=0.0, target_modules=TARGET_MODULES)
    model = attach_lora(load_causal_lm(src, device="cpu", dtype="fp32"), lora, seed=recipe.train_seed)
    rows = RealWorld(recipe.world_seed).sft_examples(recipe.sft_examples)
    limits = LengthLimits(recipe.max_prompt_len, recipe.max_len)
    encoded, truncation = encode_sequences(tokenizer, [p for p, _ in rows], [r for _, r in rows], limits)
    pad_id = pad_id_of(tokenizer)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(recipe.warmup_steps, recipe.steps))
    rng = random.Random(recipe.train_seed)
    order: list[int] = []
    losses: list[float] = []
    progress = StepProgress(recipe.steps, log, 30.0, "OLD-policy base")
    model.train()
    for step in range(recipe.steps):
        if len(order) < recipe.batch_size:
            fresh = list(range(len(encoded)))
            rng.shuffle(fresh)
            order += fresh
        ids, order = order[: recipe.batch_size], order[recipe.batch_size:]
        loss = response_nll(model, collate([encoded[i] for i in ids], pad_id))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        progress(step + 1, losses[-1])
    tail = losses[-8:] or [float("nan")]
    metrics = {"train_seconds": round(time.perf_counter() - started, 1), "steps": recipe.steps, "examples": len(rows),
               "first_loss": losses[0] if losses else None, "final_loss": sum(tail) / len(tail),
               "truncation": truncation.to_dict(), "torch_threads": torch.get_num_threads()}
    save_file(lora_tensors(model), str(adapter_out),
              metadata={"recipe_key": key, "train_metrics": json.dumps(metrics)})
    return metrics


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", required=True, help="SmolLM2-135M-Instruct folder (realign models import-gguf)")
    ap.add_argument("--steps", type=int, default=RealBaseRecipe.steps)
    ap.add_argument("--pinned-dir", default=None, help="folder of pinned adapters (bench/pinned): merge the one for "
                    "this recipe instead of training")
    args = ap.parse_args(argv)
    path, metrics = ensure_real_base(args.source, RealBaseRecipe(steps=args.steps), pinned_dir=args.pinned_dir)
    print(json.dumps({"path": str(path), **metrics}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
