"""Shared fixtures: one tiny model + tokenizer per test session (built locally, nothing downloaded)."""

from __future__ import annotations

import pytest

from trace_engine.tiny_models import DEFAULT_CORPUS, build_tiny_model, save_tiny, train_tokenizer


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return train_tokenizer(DEFAULT_CORPUS)


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer):
    return build_tiny_model(tiny_tokenizer, "llama", seed=3).eval()


@pytest.fixture(scope="session")
def tiny_dir(tiny_model, tiny_tokenizer, tmp_path_factory):
    return save_tiny(tiny_model, tiny_tokenizer, tmp_path_factory.mktemp("tiny"))
