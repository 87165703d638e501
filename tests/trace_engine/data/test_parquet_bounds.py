"""Issue 10: a 929-byte Parquet upload added 346 MB of API memory. Parquet compresses without limit: a file of a
few KB can reference one 100 KB string from every row, or declare far more rows than it has bytes. Reading is
now bounded: the footer is checked before any data is read, string columns are read dictionary-encoded, and the
text the rows reference is counted before it becomes Python objects. Each crafted file is read in a fresh
process whose peak RSS is measured (pyarrow's memory is invisible to tracemalloc)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trace_engine.data.io import DatasetError
from trace_engine.data.load import load_pairs

REPO = Path(__file__).resolve().parents[3]
BIG = 100_000  # characters of the one value every row references
ROWS = 2_000  # rows referencing it: 200 MB once decoded
BOUND_MB = 100  # what reading may add to the process: far below the ~200 MB x (arrow + Python) it used to

MEASURE = r"""
import json, resource, sys
from trace_engine.data.io import DatasetError
from trace_engine.data.load import load_pairs

def peak_kb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

before = peak_kb()
outcome = {}
try:
    pairs, report = load_pairs(sys.argv[1])
    outcome["pairs"] = len(pairs)
except DatasetError as exc:
    outcome["error"] = str(exc)
outcome["added_mb"] = (peak_kb() - before) / 1024
print(json.dumps(outcome))
"""


def repeated_value_file(path: Path, shape: str) -> Path:
    """`ROWS` rows whose prompt (`shape="string"`; or a list or struct field of an extra column) is the same
    `BIG`-character string, written dictionary-encoded and compressed: a few KB on disk. No Arrow schema is stored, so a reader sees a plain string
    column (as a file from any other Parquet writer would be)."""
    one = pa.array(["x" * BIG])
    indices = pa.array([0] * ROWS, pa.int32())
    repeated = pa.DictionaryArray.from_arrays(indices, one)
    columns: dict[str, Any] = {"chosen": pa.array([f"chosen {i}" for i in range(ROWS)]),
                               "rejected": pa.array([f"rejected {i}" for i in range(ROWS)])}
    if shape == "string":
        columns["prompt"] = repeated
    else:
        columns["prompt"] = pa.array([f"prompt {i}" for i in range(ROWS)])
        columns["notes"] = (pa.ListArray.from_arrays(pa.array(range(ROWS + 1), pa.int32()), repeated)
                            if shape == "list" else pa.StructArray.from_arrays([repeated], names=["text"]))
    pq.write_table(pa.table(columns), path, compression="zstd", use_dictionary=True, write_statistics=False,
                   store_schema=False, row_group_size=ROWS)
    return path


def read_in_a_fresh_process(path: Path) -> dict[str, Any]:
    result = subprocess.run([sys.executable, "-c", MEASURE, str(path)], capture_output=True, text=True, timeout=120,
                            cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("shape", ["string", "list", "struct"])
def test_a_tiny_file_referencing_a_large_value_from_every_row_is_refused_with_bounded_memory(
        tmp_path: Path, shape: str) -> None:
    """The list and struct shapes: pyarrow decodes a nested column a page at a time, whatever the batch size; they
    added ~230 MB even after the first fix (top-level string columns only), until nested text was read
    dictionary-encoded too."""
    path = repeated_value_file(tmp_path / "bomb.parquet", shape)
    size = path.stat().st_size
    assert size < 20_000  # a few KB on disk, ROWS * BIG = 200 MB of text once decoded
    outcome = read_in_a_fresh_process(path)
    assert outcome["added_mb"] < BOUND_MB, f"reading a {size}-byte file added {outcome['added_mb']:.0f} MB"
    assert "error" in outcome, f"a {size}-byte file expanding to {ROWS * BIG} bytes was accepted: {outcome}"
    assert "reference more than" in outcome["error"] and "bytes of data" in outcome["error"], outcome["error"]


def test_a_footer_declaring_more_rows_than_bytes_is_refused_before_reading(tmp_path: Path) -> None:
    rows = 150_000  # the same tiny pair in every row: under 10 KB on disk
    table = pa.table({name: pa.DictionaryArray.from_arrays(pa.array([0] * rows, pa.int32()), pa.array([name]))
                      for name in ("prompt", "chosen", "rejected")})
    path = tmp_path / "rows.parquet"
    pq.write_table(table, path, compression="zstd", store_schema=False, write_statistics=False)
    assert path.stat().st_size < rows
    with pytest.raises(DatasetError, match=r"declares 150000 rows in \d+ bytes \(more rows than bytes\)"):
        load_pairs(path)


def test_an_ordinary_file_still_reads(tmp_path: Path) -> None:
    rows = [{"prompt": f"p{i}", "chosen": "c" * (i + 1), "rejected": "r", "tags": ["a", "b"]} for i in range(50)]
    path = tmp_path / "ok.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=7)
    pairs, report = load_pairs(path)
    assert report.ok and len(pairs) == 50 and pairs[49].chosen == "c" * 50
