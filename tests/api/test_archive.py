"""The streamed tar.gz of an adapter directory: extractable with tarfile's strict `data` filter, streamed in
pieces (never built whole), and nothing but plain relative names and regular files go in."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from api.archive import READ_CHUNK, ArchiveError, tar_gz_stream


def test_the_archive_extracts_to_one_folder_with_the_exact_bytes(tmp_path: Path) -> None:
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(os.urandom(3 * READ_CHUNK + 123))  # incompressible: the stream must come in pieces
    chunks = tar_gz_stream("kind-v2", [("adapter_config.json", b'{"r": 4}'), ("adapter_model.safetensors", weights)],
                           mtime=0)
    pieces = [c for c in chunks if c]
    assert len(pieces) >= 3
    with tarfile.open(fileobj=io.BytesIO(b"".join(pieces)), mode="r:gz") as tar:
        assert [(m.name, m.isdir() or m.isfile()) for m in tar.getmembers()] == [
            ("kind-v2", True), ("kind-v2/adapter_config.json", True), ("kind-v2/adapter_model.safetensors", True)]
        tar.extractall(tmp_path / "out", filter="data")
    assert (tmp_path / "out/kind-v2/adapter_model.safetensors").read_bytes() == weights.read_bytes()
    assert (tmp_path / "out/kind-v2/adapter_config.json").read_bytes() == b'{"r": 4}'


@pytest.mark.parametrize(("folder", "name"), [("..", "a"), ("/abs", "a"), ("ok", "../a"), ("ok", "a/b"),
                                              ("ok", ""), ("a/../b", "x"), ("ok", "a\\b")])
def test_names_that_could_escape_the_folder_are_refused(folder: str, name: str) -> None:
    with pytest.raises(ArchiveError):
        tar_gz_stream(folder, [(name, b"x")])


def test_a_symlink_is_refused_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("elsewhere")
    (tmp_path / "link").symlink_to(secret)
    with pytest.raises(ArchiveError, match="regular file"):
        tar_gz_stream("a", [("adapter_model.safetensors", tmp_path / "link")])
    with pytest.raises(ArchiveError):
        tar_gz_stream("a", [("dir", tmp_path)])
