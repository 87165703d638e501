"""Read raw rows from JSONL / JSON / Parquet and write JSONL atomically.

Readers never raise on a bad row: each row comes back as a `RawRow` carrying either the decoded object or the
reason it could not be decoded, with its 1-based row number (the line number for JSONL), so validation can report
it and go on. Only file-level problems (missing file, a JSON array that does not parse) raise `DatasetError`.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMATS = ("auto", "jsonl", "json", "parquet")
_SUFFIX_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".pq": "parquet"}


class DatasetError(Exception):
    """A dataset that cannot be read at all (user error: the message says what to fix)."""


@dataclass(frozen=True)
class RawRow:
    """One undecoded-or-decoded input row. `row` is 1-based (JSONL: the line number)."""

    row: int
    data: Any = None
    error: str | None = None  # set when the row could not be decoded (e.g. bad JSON)


def detect_format(path: Path, fmt: str = "auto") -> str:
    """Pick the reader from `fmt`, or from the file suffix when `fmt` is 'auto'."""
    if fmt not in FORMATS:
        raise DatasetError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if fmt != "auto":
        return fmt
    found = _SUFFIX_FORMATS.get(path.suffix.lower())
    if found is None:
        raise DatasetError(
            f"cannot tell the format of {path} from its suffix {path.suffix!r}; "
            "use --format jsonl|json|parquet (or name it .jsonl, .json, .parquet)"
        )
    return found


def iter_jsonl(path: Path) -> Iterator[RawRow]:
    """One JSON value per line; blank lines are skipped but still counted in line numbers."""
    with _open_binary(path) as fh:
        for line_number, raw_line in enumerate(fh, start=1):
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield RawRow(line_number, error=f"not UTF-8 text (byte {exc.start + 1})")
                continue
            if not line.strip():
                continue
            try:
                yield RawRow(line_number, json.loads(line))
            except json.JSONDecodeError as exc:
                yield RawRow(line_number, error=f"invalid JSON: {exc.msg} (column {exc.colno})")
            except RecursionError:
                yield RawRow(line_number, error="invalid JSON: nested too deeply")


def iter_json_array(path: Path) -> Iterator[RawRow]:
    """A file holding one JSON array of rows; row numbers are 1-based array positions."""
    with _open_binary(path) as fh:
        try:
            value = json.loads(fh.read().decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{path}: not UTF-8 text (byte {exc.start + 1})") from exc
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    if not isinstance(value, list):
        raise DatasetError(f"{path}: expected a JSON array of rows, found a JSON {type(value).__name__}")
    for index, item in enumerate(value, start=1):
        yield RawRow(index, item)


def iter_parquet(path: Path, batch_rows: int = 4096) -> Iterator[RawRow]:
    """Stream a Parquet file in record batches; row numbers are 1-based."""
    import pyarrow.parquet as pq

    try:
        parquet_file = pq.ParquetFile(path)
    except FileNotFoundError as exc:
        raise DatasetError(f"{path}: no such file") from exc
    except Exception as exc:  # pyarrow raises ArrowInvalid and friends for non-parquet input
        raise DatasetError(f"{path}: not a readable Parquet file ({exc})") from exc
    row_number = 0
    for batch in parquet_file.iter_batches(batch_size=batch_rows):
        for item in batch.to_pylist():
            row_number += 1
            yield RawRow(row_number, item)


def iter_raw_rows(path: str | Path, fmt: str = "auto") -> Iterator[RawRow]:
    """Raw rows of a local file in any supported format."""
    path = Path(path)
    if path.is_dir():
        raise DatasetError(f"{path} is a directory; pass a file, or an hf://REPO@REVISION:SPLIT reference")
    readers = {"jsonl": iter_jsonl, "json": iter_json_array, "parquet": iter_parquet}
    return readers[detect_format(path, fmt)](path)


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows as JSONL atomically (temp file in the same folder, fsync, rename); returns the row count."""
    count = 0

    def write(fh: Any) -> None:
        nonlocal count
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False))
            fh.write("\n")
            count += 1

    _atomic_write(Path(path), write)
    return count


def write_json(path: str | Path, value: Any) -> None:
    """Write one JSON document atomically (used for manifests and reports)."""
    _atomic_write(Path(path), lambda fh: fh.write(json.dumps(value, ensure_ascii=False, indent=2) + "\n"))


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    _atomic_write(Path(path), lambda fh: fh.write(text))


def _atomic_write(path: Path, write: Any) -> None:
    """A crash mid-write leaves the old file (or none), never a truncated one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _open_binary(path: Path) -> Any:
    try:
        return open(path, "rb")
    except FileNotFoundError as exc:
        raise DatasetError(f"{path}: no such file") from exc
    except IsADirectoryError as exc:
        raise DatasetError(f"{path} is a directory, not a file") from exc
