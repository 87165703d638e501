"""Where the gateway finds the base model's config.json for its null adapter (core/null_adapter.py, issue 17).

The lookup order is: `serving_base_model_path`, then `model_root/<serving_base_model>`, then the newest Hugging Face
cache snapshot of that Hub id (HF_HUB_CACHE, else HF_HOME/hub). Without a config, isolation is unavailable and the
error says which setting to use.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from core.null_adapter import NULL_PREFIX, IsolationUnavailable, base_model_config_path, isolation_adapters
from core.settings import Settings

CONFIG = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 8, "num_attention_heads": 2,
          "num_key_value_heads": 1}


def write_config(folder: Path, **overrides: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({**CONFIG, **overrides}))
    return folder


def hub_snapshot(hub: Path, repo: str, revision: str, mtime: float, **overrides: object) -> Path:
    folder = write_config(hub / f"models--{repo.replace('/', '--')}" / "snapshots" / revision, **overrides)
    os.utime(folder / "config.json", (mtime, mtime))
    return folder


@pytest.fixture
def no_hf_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty home: nothing from the machine's own Hugging Face cache can be found."""
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


def test_explicit_path_wins_over_model_root(no_hf_env: Path) -> None:
    explicit = write_config(no_hf_env / "elsewhere")
    write_config(no_hf_env / "models" / "org-model")
    settings = Settings(data_dir=no_hf_env / "state", model_root=no_hf_env / "models",
                        serving_base_model="org-model", serving_base_model_path=explicit)
    assert base_model_config_path(settings) == explicit


def test_model_root_folder_is_found(no_hf_env: Path) -> None:
    local = write_config(no_hf_env / "models" / "org-model")
    settings = Settings(data_dir=no_hf_env / "state", model_root=no_hf_env / "models", serving_base_model="org-model")
    assert base_model_config_path(settings) == local


def test_newest_hub_cache_snapshot_from_hf_hub_cache(no_hf_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub = no_hf_env / "hub-cache"
    hub_snapshot(hub, "HuggingFaceTB/SmolLM2-135M-Instruct", "a" * 40, mtime=1_000_000)
    newest = hub_snapshot(hub, "HuggingFaceTB/SmolLM2-135M-Instruct", "b" * 40, mtime=2_000_000)
    hub_snapshot(hub, "other/model", "c" * 40, mtime=3_000_000)  # another repo, even newer: not taken
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    settings = Settings(data_dir=no_hf_env / "state", serving_base_model="HuggingFaceTB/SmolLM2-135M-Instruct")
    assert base_model_config_path(settings) == newest


def test_hub_cache_under_hf_home(no_hf_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = no_hf_env / "hf-home"
    snapshot = hub_snapshot(home / "hub", "org/model", "d" * 40, mtime=1_000_000)
    monkeypatch.setenv("HF_HOME", str(home))
    settings = Settings(data_dir=no_hf_env / "state", serving_base_model="org/model")
    assert base_model_config_path(settings) == snapshot


def test_parent_references_never_leave_the_model_root(no_hf_env: Path) -> None:
    write_config(no_hf_env / "outside")
    settings = Settings(data_dir=no_hf_env / "state", model_root=no_hf_env / "models",
                        serving_base_model="../outside")
    (no_hf_env / "models").mkdir()
    assert base_model_config_path(settings) is None


def test_isolation_adapters_from_the_hub_cache_config(no_hf_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub = no_hf_env / "hub-cache"
    hub_snapshot(hub, "org/model", "e" * 40, mtime=1_000_000)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    settings = Settings(data_dir=no_hf_env / "state", serving_base_model="org/model")
    null, probes = isolation_adapters(settings)
    assert null.name.startswith(NULL_PREFIX)
    written = json.loads((settings.data_dir / "serving" / null.name / "adapter_config.json").read_text())
    assert written["base_model_name_or_path"] == "org/model" and written["r"] == 1
    assert len({null.name, *(p.name for p in probes)}) == 3  # two different self-test adapters


def test_no_config_anywhere_names_the_setting_to_use(no_hf_env: Path) -> None:
    settings = Settings(data_dir=no_hf_env / "state", serving_base_model="org/missing")
    assert base_model_config_path(settings) is None
    with pytest.raises(IsolationUnavailable, match="REALIGN_SERVING_BASE_MODEL_PATH"):
        isolation_adapters(settings)


def test_unusable_config_names_the_setting_to_use(no_hf_env: Path) -> None:
    broken = no_hf_env / "models" / "broken"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{not json")
    settings = Settings(data_dir=no_hf_env / "state", model_root=no_hf_env / "models", serving_base_model="broken",
                        serving_base_model_path=broken)
    with pytest.raises(IsolationUnavailable, match="REALIGN_SERVING_BASE_MODEL_PATH"):
        isolation_adapters(settings)
