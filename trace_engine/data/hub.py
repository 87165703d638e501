"""Hugging Face datasets by id, split and pinned revision (through the `datasets` library).

A reference reads `hf://REPO@REVISION:SPLIT` or `hf://REPO@REVISION:CONFIG/SPLIT` (split defaults to `train`;
`REPO` may also be a local dataset folder, which `datasets` loads the same way). A missing revision is refused unless the caller opts in to unpinned
data: a dataset whose content can change under a job makes its results unreproducible. A branch or tag name is
accepted but noted, since only a 40-character commit sha is truly fixed. Loading scripts are never run (no
`trust_remote_code`). Folders written by `Dataset.save_to_disk` are read with `datasets.load_from_disk`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trace_engine.data.io import DatasetError, RawRow

HF_SCHEME = "hf://"
_REF_RE = re.compile(r"^hf://(?P<repo>[^@:]+?)(?:@(?P<revision>[^:]*))?(?::(?P<split>.+))?$")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class HubRef:
    """Which Hub dataset to read: repo id (or local dataset folder), revision, split and optional config."""

    repo: str
    revision: str | None
    split: str = "train"
    config: str | None = None

    def __str__(self) -> str:
        config = f"{self.config}/" if self.config else ""
        return f"{HF_SCHEME}{self.repo}@{self.revision or '<unpinned>'}:{config}{self.split}"

    @property
    def pinned_to_commit(self) -> bool:
        return bool(self.revision and _COMMIT_RE.match(self.revision))


def is_hub_ref(source: object) -> bool:
    return isinstance(source, HubRef) or (isinstance(source, str) and source.startswith(HF_SCHEME))


def parse_hub_ref(text: str, config: str | None = None) -> HubRef:
    """Parse `hf://REPO@REVISION:[CONFIG/]SPLIT`; the split may carry a slice such as `train[:1000]`."""
    match = _REF_RE.match(text.strip())
    if not match or not match["repo"].strip("/"):
        raise DatasetError(f"bad dataset reference {text!r}; expected hf://REPO@REVISION:SPLIT, "
                           "e.g. hf://PKU-Alignment/PKU-SafeRLHF@<commit sha>:train")
    revision = match["revision"]
    if revision is not None and not revision:
        raise DatasetError(f"bad dataset reference {text!r}: empty revision after '@'")
    split = match["split"] or "train"
    if "/" in split:  # CONFIG/SPLIT
        config, split = split.split("/", 1)
        if not config or not split:
            raise DatasetError(f"bad dataset reference {text!r}: expected :CONFIG/SPLIT after the revision")
    return HubRef(repo=match["repo"], revision=revision, split=split, config=config)


def revision_notes(ref: HubRef, *, allow_unpinned: bool) -> list[str]:
    """Refuse an unpinned reference unless allowed; return notes for the report about how pinned it is."""
    if ref.revision is None:
        if not allow_unpinned:
            raise DatasetError(f"{ref.repo}: no revision given; pin one (hf://{ref.repo}@<commit sha>:{ref.split}) "
                               "or pass --allow-unpinned to read whatever the default branch holds today")
        return [f"{ref.repo}: unpinned (no revision): the data may change between runs"]
    notes = []
    if Path(ref.repo).is_dir():
        notes.append(f"{ref.repo} is a local folder: datasets does not check revision {ref.revision!r} against it")
    elif not ref.pinned_to_commit:
        notes.append(f"revision {ref.revision!r} is a branch or tag name, not a commit sha: it can move")
    return notes


Loader = Callable[..., Any]


def load_hub_dataset(ref: HubRef, *, cache_dir: str | None = None, loader: Loader | None = None) -> Any:
    """`datasets.load_dataset(repo, name=config, split=split, revision=revision)`; errors become DatasetError.

    `loader` exists so tests can observe the exact call; it defaults to `datasets.load_dataset`.
    """
    if loader is None:
        import datasets

        loader = datasets.load_dataset
    try:
        return loader(ref.repo, name=ref.config, split=ref.split, revision=ref.revision, cache_dir=cache_dir)
    except Exception as exc:  # datasets raises many types (not found, bad split, offline); all are user-facing
        raise DatasetError(f"cannot load {ref}: {type(exc).__name__}: {exc}") from exc


def iter_hub_rows(
    ref: HubRef, *, allow_unpinned: bool = False, cache_dir: str | None = None, loader: Loader | None = None
) -> tuple[Iterator[RawRow], list[str]]:
    """Rows of a Hub split (1-based row numbers) and notes about the revision; refuses unpinned refs."""
    notes = revision_notes(ref, allow_unpinned=allow_unpinned)
    dataset = load_hub_dataset(ref, cache_dir=cache_dir, loader=loader)
    return _rows_of(dataset), notes


def is_saved_dataset_dir(path: Path) -> bool:
    """A folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def iter_saved_rows(path: Path, split: str | None = None) -> Iterator[RawRow]:
    """Rows of a `save_to_disk` folder; a DatasetDict needs `split` (defaults to `train`)."""
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise DatasetError(f"cannot read saved dataset {path}: {type(exc).__name__}: {exc}") from exc
    if isinstance(loaded, datasets.DatasetDict):
        split = split or "train"
        if split not in loaded:
            raise DatasetError(f"{path}: no split {split!r}; it has {', '.join(loaded)}")
        loaded = loaded[split]
    return _rows_of(loaded)


def _rows_of(dataset: Any) -> Iterator[RawRow]:
    for index, item in enumerate(dataset, start=1):
        yield RawRow(index, dict(item))
