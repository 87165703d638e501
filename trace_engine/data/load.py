"""`load_pairs`: the one entry point every stage uses to read preference pairs from any supported source."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from trace_engine.data.hub import (
    HubRef,
    Loader,
    is_hub_ref,
    is_saved_dataset_dir,
    iter_hub_rows,
    iter_saved_rows,
    parse_hub_ref,
)
from trace_engine.data.io import RawRow, detect_format, iter_raw_rows
from trace_engine.data.pairs import PreferencePair
from trace_engine.data.presets import get_preset
from trace_engine.data.validate import DatasetValidationError, ValidationReport, validate_rows

Source = str | Path | HubRef


def load_pairs(
    source: Source,
    *,
    fmt: str = "auto",
    preset: str | None = None,
    strict: bool = False,
    drop_duplicates: bool = True,
    require_category: bool = False,
    allow_unpinned: bool = False,
    cache_dir: str | None = None,
    loader: Loader | None = None,
    max_stored_issues: int = 1000,
) -> tuple[list[PreferencePair], ValidationReport]:
    """Read, map (optional preset) and validate pairs; returns (kept pairs, report).

    `source` is a local file (.jsonl/.json/.parquet, or any name with `fmt`), a `save_to_disk` folder, an
    `hf://REPO@REVISION:SPLIT` string, or an explicit `HubRef(repo=..., revision=..., split=...)`.
    Rows without an `id` get a stable id derived from their content (`derive_pair_id`).
    Bad rows are skipped and reported; with `strict=True` every row is still checked, then
    `DatasetValidationError` (carrying the report) is raised if any row had an error.
    File-level problems (missing file, unknown format, unpinned Hub reference) raise `DatasetError`.
    """
    preset_obj = get_preset(preset) if preset else None
    rows, report = _open_source(source, fmt=fmt, allow_unpinned=allow_unpinned, cache_dir=cache_dir, loader=loader)
    report.preset = preset
    report.max_stored_issues = max_stored_issues
    pairs = validate_rows(rows, report, preset=preset_obj, drop_duplicates=drop_duplicates,
                          require_category=require_category)
    if strict and not report.ok:
        raise DatasetValidationError(report)
    return pairs, report


def _open_source(
    source: Source, *, fmt: str, allow_unpinned: bool, cache_dir: str | None, loader: Loader | None
) -> tuple[Iterator[RawRow], ValidationReport]:
    if is_hub_ref(source):
        ref = source if isinstance(source, HubRef) else parse_hub_ref(str(source))
        rows, notes = iter_hub_rows(ref, allow_unpinned=allow_unpinned, cache_dir=cache_dir, loader=loader)
        return rows, ValidationReport(source=str(ref), format="hf", notes=notes)
    path = Path(source)
    if is_saved_dataset_dir(path):
        return iter_saved_rows(path), ValidationReport(source=str(path), format="saved_dataset")
    rows = iter_raw_rows(path, fmt)
    return rows, ValidationReport(source=str(path), format=detect_format(path, fmt))
