"""The PKU-SafeRLHF preset on a locally built dataset with the real column names."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trace_engine.data.io import DatasetError
from trace_engine.data.load import load_pairs
from trace_engine.data.presets import get_preset

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def pku(prompt: str, r0: str, r1: str, safe0: bool, safe1: bool, safer: int | None, better: int = 0) -> dict[str, Any]:
    return {"prompt": prompt, "response_0": r0, "response_1": r1, "is_response_0_safe": safe0,
            "is_response_1_safe": safe1, "safer_response_id": safer, "better_response_id": better,
            "prompt_source": "test"}


PKU_ROWS = [
    pku("q1", "safe answer", "harmful answer", True, False, 0),     # one safe (response 0)
    pku("q2", "harmful", "refusal", False, True, 0),                # one safe (response 1), safer id disagrees
    pku("q3", "kind A", "kind B", True, True, 1),                   # both safe: safer id 1 decides
    pku("q4", "bad A", "worse B", False, False, 0),                 # both unsafe: safer id 0 decides
    pku("q5", "x", "y", True, True, None),                          # no preference
    pku("q6", "x", "y", False, False, 2),                           # no preference (invalid id)
    pku("q7", "unsafe", "only safe", False, True, None),            # one safe, no safer id: still a preference
]


def write_pku_dir(root: Path) -> Path:
    folder = root / "pku"
    (folder / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(PKU_ROWS), folder / "data" / "train-00000-of-00001.parquet")
    return folder


def test_pku_preset_maps_each_case_and_counts_it(tmp_path: Path) -> None:
    folder = write_pku_dir(tmp_path)
    pairs, report = load_pairs(f"hf://{folder}@{COMMIT}:train", preset="pku_saferlhf",
                               cache_dir=str(tmp_path / "cache"))
    by_prompt = {p.prompt: p for p in pairs}
    assert report.preset_counts == {"one_safe": 3, "both_safe": 1, "both_unsafe": 1, "skipped_no_preference": 2}
    assert report.ok and report.rows_read == 7 and report.pairs_kept == 5 and report.preset == "pku_saferlhf"
    assert (by_prompt["q1"].chosen, by_prompt["q1"].rejected) == ("safe answer", "harmful answer")
    assert (by_prompt["q2"].chosen, by_prompt["q2"].rejected) == ("refusal", "harmful")
    assert (by_prompt["q3"].chosen, by_prompt["q3"].rejected) == ("kind B", "kind A")
    assert (by_prompt["q4"].chosen, by_prompt["q4"].rejected) == ("bad A", "worse B")
    assert by_prompt["q7"].chosen == "only safe"
    assert set(by_prompt) == {"q1", "q2", "q3", "q4", "q7"}
    q2 = by_prompt["q2"].extra
    assert q2 == {"source_index": 1, "pku_case": "one_safe", "chosen_response_index": 1, "is_chosen_safe": True,
                  "is_rejected_safe": False, "safer_response_id": 0, "better_response_id": 0}
    assert by_prompt["q4"].extra["is_chosen_safe"] is False and by_prompt["q4"].extra["is_rejected_safe"] is False
    assert by_prompt["q7"].extra["source_index"] == 6


def test_pku_malformed_rows_are_reported_by_column(write_lines: Callable[..., Path]) -> None:
    rows = [
        PKU_ROWS[0],
        {k: v for k, v in PKU_ROWS[0].items() if k != "response_1"},
        {**PKU_ROWS[0], "is_response_0_safe": "yes"},
        {**PKU_ROWS[0], "response_1": "safe answer"},  # identical responses: caught by pair validation
    ]
    pairs, report = load_pairs(write_lines(rows), preset="pku_saferlhf")
    assert len(pairs) == 1
    assert {(i.row, i.field, i.kind) for i in report.issues} == {
        (2, "response_1", "missing_field"), (3, "is_response_0_safe", "wrong_type"), (4, "rejected", "identical_responses"),
    }
    assert report.preset_counts == {"one_safe": 2, "skipped_malformed": 2} and report.rows_skipped == 3


def test_unknown_preset_names_the_known_ones() -> None:
    with pytest.raises(DatasetError, match="pku_saferlhf"):
        get_preset("nope")
