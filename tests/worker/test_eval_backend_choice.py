"""Evaluation generates on the serving backend only when that backend runs the job's base model: embedded mode's
backend serves the synthetic base, and a job on another model must not be evaluated on it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from core.settings import Settings
from worker.gpu_stages import serves_job_base


def context(tmp_path: Path, requested: str, **settings: object) -> SimpleNamespace:
    warnings: list[str] = []
    return SimpleNamespace(settings=Settings(data_dir=tmp_path, **settings), warnings=warnings, warn=warnings.append,
                           request=SimpleNamespace(base_model=SimpleNamespace(name_or_path=requested)))


def test_the_serving_backend_is_used_only_for_the_model_it_serves(tmp_path: Path) -> None:
    model = tmp_path / "models" / "gguf-abc"
    model.mkdir(parents=True)
    embedded = context(tmp_path, "gguf-abc", serving_url="http://127.0.0.1:9/v1", model_root=tmp_path / "models")
    assert not serves_job_base(embedded, str(model))  # serves synthetic-tiny: evaluate in-process
    assert "not this job's base model" in embedded.warnings[0]
    synthetic = context(tmp_path, "synthetic-tiny", serving_url="http://127.0.0.1:9/v1")
    assert serves_job_base(synthetic, "/anywhere")
    aliased = context(tmp_path, "gguf-abc", serving_url="http://127.0.0.1:9/v1", serving_base_model="smollm2",
                      serving_base_model_path=model, model_root=tmp_path / "models")
    assert serves_job_base(aliased, str(model))  # the same folder under another served name
    assert not serves_job_base(context(tmp_path, "gguf-abc"), str(model))  # no serving backend at all
