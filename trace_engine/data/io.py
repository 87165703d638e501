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
            text = line.rstrip("\r\n")  # the terminator is no part of the row: a truncated row's error is on it
            if not text.strip():
                continue
            try:
                yield RawRow(line_number, json.loads(text))
            except json.JSONDecodeError as exc:
                cut = exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string")
                yield RawRow(line_number, error=f"invalid JSON: {exc.msg} (column {exc.colno})"
                             + (f"; the row ends at column {len(text)}: truncated?" if cut else ""))
            except RecursionError:
                yield RawRow(line_number, error="invalid JSON: nested too deeply")


def read_jsonl(path: str | Path) -> Iterator[Any]:
    """The rows of a JSONL file the engine wrote itself (metrics, scored rows): a row that does not decode is a
    bug or a damaged file, not user input to report, so it raises."""
    for raw in iter_jsonl(Path(path)):
        if raw.error is not None:
            raise DatasetError(f"{path}: row {raw.row}: {raw.error}")
        yield raw.data


def iter_jsonl_objects(path: str | Path, max_lines: int | None = None) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSONL file another process may be appending to: a torn last line (a crash mid-write)
    or any row that is not an object is skipped, not raised. `max_lines` bounds the lines read. A missing file is
    a DatasetError, as for `iter_jsonl`."""
    for raw in iter_jsonl(Path(path)):
        if max_lines is not None and raw.row > max_lines:
            return
        if raw.error is None and isinstance(raw.data, dict):
            yield raw.data


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


@dataclass(frozen=True)
class ParquetLimits:
    """Bounds that keep reading a Parquet file proportional to its size. Parquet compresses without limit (a 1 KB
    file can declare millions of rows, or reference one 100 KB string from every row), so the footer is checked
    before any data is read, and the text the rows reference is counted before it is turned into Python objects."""

    max_rows: int = 2_000_000
    rows_floor: int = 100_000  # beyond this many rows, a file must hold at least one byte per row it declares
    max_columns: int = 256
    max_row_group_bytes: int = 1024 * 1024 * 1024  # declared uncompressed size of one row group
    max_expansion: int = 100  # declared uncompressed and decoded sizes: at most this many times the file size...
    expansion_floor_bytes: int = 64 * 1024 * 1024  # ...or this, whichever is larger
    chunk_ratio_floor_bytes: int = 1024 * 1024  # a column chunk over this size may not compress more than 100:1
    max_batch_bytes: int = 64 * 1024 * 1024  # worst-case decoded size of one record batch

    def budget(self, file_size: int) -> int:
        return max(self.expansion_floor_bytes, self.max_expansion * file_size)


def check_parquet_metadata(metadata: Any, file_size: int, limits: ParquetLimits, name: str = "file") -> None:
    """Raise `DatasetError` for a footer that declares more than `limits` allow (nothing has been decoded yet)."""
    rows = metadata.num_rows
    if rows > limits.max_rows:
        raise DatasetError(f"{name}: declares {rows} rows; the limit is {limits.max_rows}")
    if rows > max(limits.rows_floor, file_size):
        raise DatasetError(f"{name}: declares {rows} rows in {file_size} bytes (more rows than bytes)")
    if metadata.num_columns > limits.max_columns:
        raise DatasetError(f"{name}: has {metadata.num_columns} columns; the limit is {limits.max_columns}")
    budget, declared = limits.budget(file_size), 0
    for index in range(metadata.num_row_groups):
        group = metadata.row_group(index)
        declared += group.total_byte_size
        if group.total_byte_size > limits.max_row_group_bytes:
            raise DatasetError(f"{name}: row group {index} declares {group.total_byte_size} bytes uncompressed; the "
                               f"limit is {limits.max_row_group_bytes} (write it with smaller row groups)")
        for column in range(group.num_columns):
            chunk = group.column(column)
            if (chunk.total_uncompressed_size > limits.chunk_ratio_floor_bytes
                    and chunk.total_uncompressed_size > 100 * max(1, chunk.total_compressed_size)):
                raise DatasetError(f"{name}: column {chunk.path_in_schema!r} expands {chunk.total_compressed_size} "
                                   f"bytes to {chunk.total_uncompressed_size}; more than 100:1 is refused")
    if declared > budget:
        raise DatasetError(f"{name}: declares {declared} bytes uncompressed in a {file_size}-byte file; the limit "
                           f"is {budget}")


def iter_parquet(path: Path, batch_rows: int = 1024, limits: ParquetLimits | None = None) -> Iterator[RawRow]:
    """Stream a Parquet file row group by row group, in record batches, with bounded memory; row numbers are
    1-based. String columns, top-level or nested (pyarrow decodes a nested column a whole page at a time, whatever
    the batch size), are read dictionary-encoded, so a value repeated in many rows is decoded once; the text every
    batch references counts against `limits.budget(file size)` before it becomes Python objects."""
    import pyarrow.parquet as pq

    limits = limits or ParquetLimits()
    try:
        parquet_file = pq.ParquetFile(path, pre_buffer=False, buffer_size=1024 * 1024)
        schema = parquet_file.schema_arrow
        file_size = path.stat().st_size
    except FileNotFoundError as exc:
        raise DatasetError(f"{path}: no such file") from exc
    except Exception as exc:  # pyarrow raises ArrowInvalid and friends for non-parquet input
        raise DatasetError(f"{path}: not a readable Parquet file ({exc})") from exc
    check_parquet_metadata(parquet_file.metadata, file_size, limits, str(path))
    flat_text = [f.name for f in schema if _is_byte_array(f.type)]
    leaves = [parquet_file.schema.column(i) for i in range(len(parquet_file.schema))]
    text_paths = [leaf.path for leaf in leaves
                  if leaf.physical_type == "BYTE_ARRAY" and leaf.logical_type.type != "DECIMAL"]
    if text_paths:  # re-open so those columns (or nested fields) come back as DictionaryArrays
        parquet_file = pq.ParquetFile(path, pre_buffer=False, buffer_size=1024 * 1024, read_dictionary=text_paths)
    batch_rows = _safe_batch_rows(parquet_file.metadata, set(flat_text), batch_rows, limits)
    budget, decoded, row_number = limits.budget(file_size), 0, 0
    for group in range(parquet_file.num_row_groups):
        for batch in parquet_file.iter_batches(batch_size=batch_rows, row_groups=[group]):
            decoded += _referenced_bytes(batch)
            if decoded > budget:
                raise DatasetError(f"{path}: its rows reference more than {budget} bytes of data (a {file_size}-byte "
                                   f"file; at most {limits.max_expansion}x its size is read)")
            for item in _batch_rows(batch):
                row_number += 1
                yield RawRow(row_number, item)


def _is_byte_array(arrow_type: Any) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)
                or pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type))


def _safe_batch_rows(metadata: Any, flat: set[str], wanted: int, limits: ParquetLimits) -> int:
    """Rows per batch such that a batch decodes to at most `max_batch_bytes` even if every row references the
    largest value of a nested dictionary-encoded column (any value is at most its column chunk's size)."""
    worst = 0
    for index in range(metadata.num_row_groups):
        group = metadata.row_group(index)
        nested = sum(group.column(c).total_uncompressed_size for c in range(group.num_columns)
                     if group.column(c).has_dictionary_page and group.column(c).path_in_schema not in flat)
        worst = max(worst, nested)
    if worst == 0:
        return wanted
    return max(16, min(wanted, limits.max_batch_bytes // worst))


def _referenced_bytes(batch: Any) -> int:
    """Bytes of data the batch's rows reference: dictionary-encoded text (top-level or nested) counts each row's
    value (not the dictionary once), other leaves their buffers."""
    import pyarrow as pa
    import pyarrow.compute as pc

    total, stack = 0, list(batch.columns)
    while stack:  # nested columns: their children as sliced by this batch (`flatten`), down to the leaves
        column = stack.pop()
        kind = column.type
        if pa.types.is_dictionary(kind) and _is_byte_array(kind.value_type):
            lengths = pc.binary_length(column.dictionary)
            total += int(pc.sum(pc.take(lengths, column.indices)).as_py() or 0)
        elif pa.types.is_struct(kind):
            stack.extend(column.flatten())
        elif (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
              or pa.types.is_map(kind)):
            stack.append(column.flatten())
        else:
            total += column.nbytes
    return total


def _batch_rows(batch: Any) -> Iterator[dict[str, Any]]:
    """The batch as row dicts; a dictionary column's values become one Python object per distinct value used."""
    import pyarrow as pa
    import pyarrow.compute as pc

    names = batch.schema.names
    columns: list[list[Any]] = []
    for column in batch.columns:
        if pa.types.is_dictionary(column.type):
            indices = column.indices.to_pylist()
            used = pc.unique(column.indices.drop_null())
            values = dict(zip(used.to_pylist(), column.dictionary.take(used).to_pylist(), strict=True))
            columns.append([None if i is None else values[i] for i in indices])
        else:
            columns.append(column.to_pylist())
    for values in zip(*columns, strict=True):
        yield dict(zip(names, values, strict=True))


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
