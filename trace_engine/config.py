"""The training settings: `TrainConfig` and the small setting types it nests, with their checks.

Standard library only (no torch, no transformers): the API derives its training defaults from `TrainConfig` and
validates requests with it, and it must never import torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from trace_engine.variants import DataError, check_pref_loss, get_variant

PREF_LOSSES = ("dpo", "ipo", "rdpo")
KL_RESPONSES = ("both", "preferred")
FUSED_MODES = ("auto", "on", "off")  # compiled RMSNorm/SwiGLU (kernels.py): auto = CUDA only
DEFAULT_WEIGHT_CAP = 2.0
"""Impact weights: no conflict row weighs more than this many times the uniform weight (`scoring.WeightShaping`).
Chosen on the synthetic VALIDATION split (docs/benchmarks.md, noise robustness): without a cap, 10% noisy triage
hands ~70-90% of the total weight to the few RETAIN rows that noise moved into the conflict set. The library, the
CLI and the service all read it from here."""


DEFAULT_UNIFORM_MIX = 0.0
"""Impact weights: λ of `scoring.WeightShaping` ((1 - λ) w + λ · uniform). 0 (pure impact weights, as published) on
the synthetic VALIDATION split; the real-text world's validation chose 0.5 (docs/benchmarks.md), which
`bench/quality_real.py` uses. The CLI and the service read the default from here."""

DEFAULT_CHECK_ANCHORS = True
"""RETAIN anchors: score each RETAIN pair's preference against the gold batch's RETAIN pairs and drop the KL anchor of
a pair that contradicts them (`scoring.WeightShaping.check_anchors`). Chosen on VALIDATION: on the real-text world
TPA at 10% noisy triage 31.2 -> 47.9% (clean 60.4 -> 62.5%); on the synthetic world 94.9 -> 95.3% mean over 0/10/20%
noise and 4 seeds (a tie). The test split confirmed it on real text (docs/benchmarks.md). Costs one more scoring pass
over the RETAIN pairs. The library's `DEFAULT_SHAPING`, the CLI and the service all read it from here."""


class ConfigError(ValueError):
    """A setting is invalid or incompatible with the variant; raised before any model work."""


@dataclass(frozen=True)
class LengthLimits:
    """max_prompt_len: most prompt tokens kept; max_len: most tokens per row (prompt + response)."""

    max_prompt_len: int = 512
    max_len: int = 1024

    def __post_init__(self) -> None:
        if self.max_prompt_len < 1 or self.max_len <= self.max_prompt_len:
            raise ValueError(
                f"need 1 <= max_prompt_len < max_len, got max_prompt_len={self.max_prompt_len} max_len={self.max_len}"
            )


@dataclass(frozen=True)
class LossSettings:
    """The hybrid objective's hyper-parameters (design.md §5), the one loss config training and scoring read
    (`losses.hybrid_loss`); `TrainConfig.loss` is the one a run trains with.

    rdpo_eps: the label-flip rate rDPO assumes; None (not set) refuses rdpo, whose ε = 0 would be plain DPO.
    """

    beta: float = 0.1
    preference_loss: str = "dpo"
    npo_two_over_beta: bool = False
    rdpo_eps: float | None = None
    alpha_kl: float = 0.0

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.preference_loss not in PREF_LOSSES:
            raise ValueError(f"preference_loss must be one of {PREF_LOSSES}, got {self.preference_loss!r}")
        if self.preference_loss == "rdpo" and not (self.rdpo_eps is not None and 0 < self.rdpo_eps < 0.5):
            raise ValueError(f"rdpo needs 0 < rdpo_eps < 0.5 (ε = 0 is plain DPO), got {self.rdpo_eps}")
        if self.alpha_kl < 0:
            raise ValueError(f"alpha_kl must be >= 0, got {self.alpha_kl}")


@dataclass(frozen=True)
class LoraSettings:
    """Paper defaults: r=32, alpha=16 on q_proj/v_proj.

    layers: decoder layer indices that get adapters (None: all). Adapters on the top layers only make a step cheaper
    (autograd stops below the lowest adapted layer) at some capacity cost. A library option (the real-model
    benchmark uses it); the CLI and the service do not offer it, since the serving path is not tested with adapters
    that skip layers.
    """

    r: int = 32
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.layers is not None and (not self.layers or min(self.layers) < 0):
            raise ConfigError(f"LoRA layers must be a non-empty list of layer indices >= 0, got {self.layers}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        if self.layers is None:
            del d["layers"]  # the adapter records of runs without it stay as they were
        else:
            d["layers"] = list(self.layers)
        return d


@dataclass
class TrainConfig:
    """Defaults follow the paper's README run (β 0.3, α_KL 0.1, lr 1e-4, 1 epoch, effective batch 4)."""

    variant: str = "trace"
    beta: float = 0.3
    alpha_kl: float = 0.1
    pref_loss: str = "dpo"  # dpo | ipo (| rdpo); baselines that fix a loss (dpo, ipo, rdpo) override it
    rdpo_eps: float = 0.1
    npo_two_over_beta: bool = False  # the NPO paper's 2/β scale; the published TRACE code omits it
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    epochs: int = 1
    max_steps: int | None = None  # optimizer steps; caps epochs
    batch_size: int = 4  # examples (pairs) per micro-batch -> 2 * batch_size rows per forward
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    gradient_checkpointing: bool = False
    seed: int = 0
    max_prompt_len: int = 512
    max_len: int = 1024
    pad_to_multiple_of: int | None = 8
    lora: LoraSettings = field(default_factory=LoraSettings)
    full_finetune: bool = False
    dtype: str | None = None  # None: bf16 on CUDA, fp32 on CPU
    ref_batch_size: int = 8  # pairs per forward when precomputing reference log-probs
    chunk_tokens: int | None = None  # positions per chunk in log-prob / KL math; None = logprobs.CHUNK_ELEMENTS // V
    checkpoint_every: int = 0  # optimizer steps; 0 = no intermediate checkpoints
    fused_kernels: str = "auto"  # compiled RMSNorm/SwiGLU: auto (CUDA only) | on | off; see kernels.py
    # RETAIN KL anchor on the "preferred" response (the published recipe; the compliant trajectory, half the cost)
    # or on "both" responses of the pair (measured equal on the synthetic benchmark, docs/benchmarks.md)
    kl_responses: str = "preferred"
    group_by_length: bool = False  # micro-batches of similar length (less padding); see `micro_batches`

    def effective_pref_loss(self) -> str:
        return get_variant(self.variant).pref_loss or self.pref_loss

    @property
    def loss(self) -> LossSettings:
        """The loss this run trains with (and scoring scores with): the variant's preference loss where it fixes
        one. Call after `validate` (it raises ValueError on the settings `validate` reports)."""
        return LossSettings(beta=self.beta, preference_loss=self.effective_pref_loss(),
                            npo_two_over_beta=self.npo_two_over_beta, rdpo_eps=self.rdpo_eps, alpha_kl=self.alpha_kl)

    def validate(self) -> None:
        try:
            get_variant(self.variant)
        except DataError as exc:
            raise ConfigError(str(exc)) from exc
        problems = []
        if self.pref_loss not in PREF_LOSSES:
            problems.append(f"pref_loss must be one of {PREF_LOSSES}, got {self.pref_loss!r}")
        else:
            try:
                check_pref_loss(self.variant, self.pref_loss)
            except DataError as exc:
                problems.append(str(exc))
        if self.beta <= 0:
            problems.append(f"beta must be > 0, got {self.beta}")
        if self.alpha_kl < 0:
            problems.append(f"alpha_kl must be >= 0, got {self.alpha_kl}")
        if self.effective_pref_loss() == "rdpo" and not 0 < self.rdpo_eps < 0.5:
            problems.append(f"rdpo needs 0 < rdpo_eps < 0.5 (ε = 0 is plain DPO), got {self.rdpo_eps}")
        if self.lr <= 0 or self.batch_size < 1 or self.grad_accum < 1 or self.epochs < 1:
            problems.append("lr must be > 0 and batch_size, grad_accum, epochs >= 1")
        if self.kl_responses not in KL_RESPONSES:
            problems.append(f"kl_responses must be one of {KL_RESPONSES}, got {self.kl_responses!r}")
        if self.fused_kernels not in FUSED_MODES:
            problems.append(f"fused_kernels must be one of {FUSED_MODES}, got {self.fused_kernels!r}")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append(f"max_steps must be >= 1 or None, got {self.max_steps}")
        if not 0 <= self.warmup_ratio < 1 or not 0 <= self.min_lr_ratio <= 1:
            problems.append("warmup_ratio must be in [0, 1) and min_lr_ratio in [0, 1]")
        try:
            LengthLimits(self.max_prompt_len, self.max_len)
        except ValueError as exc:
            problems.append(str(exc))
        if problems:
            raise ConfigError("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lora"] = self.lora.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        d = dict(d)
        if isinstance(d.get("lora"), Mapping):
            lora = dict(d["lora"])
            lora["target_modules"] = tuple(lora.get("target_modules", LoraSettings().target_modules))
            if lora.get("layers") is not None:
                lora["layers"] = tuple(lora["layers"])
            d["lora"] = LoraSettings(**lora)
        return cls(**d)

