"""Load the base causal LM safely and put a LoRA adapter on it.

Safety rules (design.md §7): a Hub id must come with a pinned commit revision, weights must be safetensors,
`trust_remote_code` is always False. The reference model is the same weights with the adapter disabled.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from trace_engine.config import LoraSettings
from trace_engine.kernels import fuse_elementwise_

_COMMIT = re.compile(r"^[0-9a-f]{40}$")


class ModelLoadError(ValueError):
    """The model reference, revision or weights format is not acceptable; raised before any heavy work."""


@dataclass(frozen=True)
class ModelSource:
    """Where the base model comes from: a local directory, or a Hub id pinned to a commit."""

    name_or_path: str
    revision: str | None = None

    @property
    def is_local(self) -> bool:
        return Path(self.name_or_path).is_dir()

    def validate(self) -> None:
        if self.is_local:
            check_safetensors_dir(Path(self.name_or_path))
            return
        if Path(self.name_or_path).exists() or self.name_or_path.startswith((".", "/", "~")):
            raise ModelLoadError(f"model path {self.name_or_path!r} is not a directory")
        if not self.revision or not _COMMIT.match(self.revision):
            raise ModelLoadError(
                f"Hub model {self.name_or_path!r} needs a pinned revision: a 40-character commit hash "
                f"(got {self.revision!r}); branch names like 'main' can change under you"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"name_or_path": self.name_or_path, "revision": self.revision}


def check_safetensors_dir(path: Path) -> None:
    """Refuse a local checkpoint that has only pickle (.bin/.pt) weights."""
    if any(path.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in {".bin", ".pt", ".pth", ".ckpt"})
    if pickles:
        raise ModelLoadError(
            f"{path} has only pickle weights ({', '.join(pickles)}); convert them to safetensors first "
            "(pickle files can run code when loaded, so they are refused)"
        )
    raise ModelLoadError(f"{path} has no *.safetensors weights")


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """CUDA when available unless told otherwise."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """bf16 on GPU, fp32 on CPU, unless a dtype is given ('bf16', 'fp16', 'fp32' or a torch.dtype)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
             "fp32": torch.float32, "float32": torch.float32}
    if dtype is not None:
        if dtype not in names:
            raise ValueError(f"unknown dtype {dtype!r}: use one of {sorted(names)}")
        return names[dtype]
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_tokenizer(source: ModelSource):
    from transformers import AutoTokenizer

    source.validate()
    tok = AutoTokenizer.from_pretrained(source.name_or_path, revision=source.revision, trust_remote_code=False)
    if tok.pad_token_id is None and tok.eos_token_id is not None:
        tok.pad_token = tok.eos_token  # padding is masked everywhere; the id only needs to be valid
    return tok


def load_causal_lm(
    source: ModelSource,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    fused_kernels: str = "off",
):
    """The base model in eval mode on `device`, safetensors only, no remote code.

    fused_kernels: "auto" | "on" | "off", see `kernels.fuse_elementwise_` (scoring and training pass "auto").
    """
    from transformers import AutoModelForCausalLM

    source.validate()
    dev = pick_device(device)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source.name_or_path,
            revision=source.revision,
            dtype=default_dtype(dev, dtype),
            use_safetensors=True,
            trust_remote_code=False,
        )
    except OSError as exc:  # e.g. a Hub repo without safetensors weights
        raise ModelLoadError(f"cannot load {source.name_or_path!r} as safetensors: {exc}") from exc
    model = model.to(dev).eval()
    fuse_elementwise_(model, fused_kernels)
    return model


# ---------------------------------------------------------------- LoRA


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Distinct short names of the nn.Linear layers (what LoRA `target_modules` match against)."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)})


def validate_target_modules(model: torch.nn.Module, targets: Sequence[str]) -> None:
    """Fail early, listing the available linear layers, if any LoRA target does not exist."""
    if not targets:
        raise ModelLoadError("LoRA target_modules is empty")
    available = linear_module_names(model)
    missing = [t for t in targets if t not in available]
    if missing:
        raise ModelLoadError(
            f"LoRA target modules {missing} are not linear layers of this model; available: {', '.join(available)}"
        )


def validate_target_modules_of(source: ModelSource, targets: Sequence[str]) -> None:
    """`validate_target_modules` on the model's architecture alone (built on the meta device: no weights read)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    source.validate()
    config = AutoConfig.from_pretrained(source.name_or_path, revision=source.revision, trust_remote_code=False)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    validate_target_modules(skeleton, targets)


def attach_lora(model: torch.nn.Module, settings: LoraSettings, seed: int | None = None):
    """Wrap `model` in a peft LoRA model; only adapter weights are trainable. B starts at 0, so it equals the base.

    seed: draw A from a private generator (`seed_lora_`), so scoring (at θ_ref) and training start from the very
    same adapter on any device and any number of processes; None leaves peft's draw from the global RNG.
    """
    from peft import LoraConfig, get_peft_model

    validate_target_modules(model, settings.target_modules)
    layer_args = {}
    if settings.layers is not None:
        n_layers = int(getattr(model.config, "num_hidden_layers", 0))
        if n_layers and max(settings.layers) >= n_layers:
            raise ModelLoadError(f"LoRA layers {list(settings.layers)} out of range: the model has {n_layers} layers "
                                 f"(0-{n_layers - 1})")
        layer_args = {"layers_to_transform": list(settings.layers)}
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
        **layer_args,
    )
    peft_model = get_peft_model(model, config)
    if seed is not None:
        seed_lora_(peft_model, seed)
    return peft_model


def seed_lora_(model: torch.nn.Module, seed: int) -> int:
    """Re-draw every LoRA pair as PEFT's default init (A ~ kaiming-uniform(a=√5), B = 0) from a private generator.

    Why: at θ_ref (B = 0) A-gradients are zero, so impact scores live in the B-space that A projects into; a seeded
    A makes θ_ref, and so the scores, reproducible, and lets training start from the A the scores were taken at.
    Draws on CPU in fp32 (same numbers on any device); the global RNG is untouched. Returns the number of pairs.
    """
    gen = torch.Generator().manual_seed(seed)
    count = 0
    for _, module in model.named_modules():
        lora_a, lora_b = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
        if not isinstance(lora_a, torch.nn.ModuleDict) or not isinstance(lora_b, torch.nn.ModuleDict):
            continue
        for key in sorted(lora_a.keys()):
            a, b = lora_a[key].weight, lora_b[key].weight
            fresh = torch.empty(a.shape, dtype=torch.float32)
            torch.nn.init.kaiming_uniform_(fresh, a=math.sqrt(5), generator=gen)
            with torch.no_grad():
                a.copy_(fresh.to(a.device, a.dtype))
                b.zero_()
                if getattr(lora_b[key], "bias", None) is not None:
                    lora_b[key].bias.zero_()
            count += 1
    return count


def is_adapter_model(model: torch.nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


@contextlib.contextmanager
def reference_mode(model: torch.nn.Module) -> Iterator[None]:
    """The reference policy: the base weights with the adapter switched off, gradients off.

    Only adapter models have a reference without a second copy of the weights; a full fine-tune must precompute
    what it needs from the reference before training starts.
    """
    if not is_adapter_model(model):
        raise RuntimeError("reference_mode needs a LoRA model; for a full fine-tune precompute reference values")
    with model.disable_adapter(), torch.no_grad():
        yield


def trainable_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


# ---------------------------------------------------------------- passes: precision, adapter state, dropout, layers


def autocast_dtype(model: nn.Module) -> torch.dtype | None:
    """bf16/fp16 when the frozen weights are half precision on CUDA (train.py runs its forwards under the same
    autocast, so scoring's reference log-probs match the trainer's); None otherwise."""
    for p in model.parameters():
        if not p.requires_grad and p.is_floating_point():
            half = p.device.type == "cuda" and p.dtype in (torch.bfloat16, torch.float16)
            return p.dtype if half else None
    return None


def adapter_is_identity(model: nn.Module) -> bool:
    """True when every LoRA B (and embedding B) matrix is zero: the policy then equals the reference exactly."""
    found = False
    for name, p in model.named_parameters():
        if "lora_B" in name or "lora_embedding_B" in name:
            found = True
            if bool(torch.any(p.detach() != 0)):
                return False
    return found


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Dropout off for exact, deterministic gradients; the previous mode is restored."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def checkpointed_layers(model: nn.Module, enabled: bool = True):
    """Run every decoder layer under non-reentrant activation checkpointing, in any mode.

    Why not HF's gradient_checkpointing_enable: it is only active in training mode, and scoring runs in eval mode.
    Ghost hooks stay exact: the backward still flows through the original graph; recomputation only refills the
    saved tensors.
    """
    if not enabled:
        yield
        return
    layers = decoder_layers(model)
    own = [layer.__dict__.get("forward") for layer in layers]  # an instance-level forward (e.g. accelerate hooks)
    for layer in layers:
        layer.forward = _checkpointed(layer.forward)
    try:
        yield
    finally:
        for layer, previous in zip(layers, own, strict=True):
            if previous is None:
                del layer.forward  # back to the class's forward
            else:
                layer.forward = previous


def _checkpointed(forward):
    def run(*args, **kwargs):
        if torch.is_grad_enabled():
            return activation_checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)

    run.recomputes_activations = True  # type: ignore[attr-defined]  # read by head.layers_recompute_activations
    return run


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The repeated transformer blocks (the first ModuleList named `layers` / `h` / `blocks`)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] in ("layers", "h", "blocks") and len(module):
            return module
    raise ValueError("cannot find the decoder layers (a ModuleList named layers/h/blocks) to checkpoint")


# ---------------------------------------------------------------- merge


@dataclass
class MergeResult:
    out_dir: Path
    base: ModelSource
    files: list[str] = field(default_factory=list)


def merge(adapter_dir: str | Path, out_dir: str | Path, base: ModelSource | None = None, dtype: str | None = None):
    """Merge a trained adapter into its base model and save safetensors weights + tokenizer to `out_dir`.

    The base model comes from the adapter's `realign.json` unless given. The merge runs in fp32 on CPU; the result
    is stored in `dtype` if given, else in the dtype the base checkpoint was saved in.
    """
    import json

    from peft import PeftModel

    adapter = Path(adapter_dir)
    if base is None:
        meta_path = adapter / "realign.json"
        if not meta_path.exists():
            raise ModelLoadError(f"{adapter} has no realign.json; pass the base model explicitly")
        meta = json.loads(meta_path.read_text())
        base = ModelSource(meta["base_model"]["name_or_path"], meta["base_model"].get("revision"))
    saved_dtype = _saved_dtype(base)
    model = load_causal_lm(base, device="cpu", dtype="fp32")  # merge in fp32, then store in the base's dtype
    peft_model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
    merged = peft_model.merge_and_unload()
    merged = merged.to(default_dtype(torch.device("cpu"), dtype) if dtype else saved_dtype)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out, safe_serialization=True)
    tokenizer_src = adapter if (adapter / "tokenizer_config.json").exists() else Path(base.name_or_path)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(tokenizer_src), revision=None if tokenizer_src == adapter else base.revision,
                                  trust_remote_code=False).save_pretrained(out)
    return MergeResult(out, base, sorted(p.name for p in out.iterdir()))


def _saved_dtype(source: ModelSource) -> torch.dtype:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source.name_or_path, revision=source.revision, trust_remote_code=False)
    saved = getattr(config, "dtype", None)
    if isinstance(saved, str):
        saved = getattr(torch, saved, None)
    return saved if isinstance(saved, torch.dtype) else torch.float32
