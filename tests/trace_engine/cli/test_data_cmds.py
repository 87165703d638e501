"""`realign validate` and `realign split`, in-process through `trace_engine.cli.main` and once as a subprocess."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from trace_engine.cli import build_parser, main

REPO_ROOT = Path(__file__).resolve().parents[3]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def triaged_rows(n_prompts: int = 40) -> list[dict[str, Any]]:
    categories = ["INVERT", "PUNISH", "RETAIN", "RETAIN"]
    rows = []
    for p in range(n_prompts):
        for j in range(1 + p % 3):
            rows.append({"id": f"{p}-{j}", "prompt": f"prompt {p}", "chosen": f"c{p}-{j}", "rejected": f"r{p}-{j}",
                         "category": categories[(p + j) % 4]})
    return rows


def good_row(i: int) -> dict[str, Any]:
    return {"id": str(i), "prompt": [{"role": "user", "content": f"q{i}"}], "chosen": f"a{i}", "rejected": f"b{i}"}


def test_validate_prints_report_and_keeps_going_past_bad_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [good_row(1), {**good_row(2), "chosen": ""}, "{bad", good_row(1)])
    assert main(["validate", "--pairs", str(path)]) == 0
    out = capsys.readouterr().out
    assert "rows read: 4; pairs kept: 1; rows skipped (errors): 2; duplicates dropped: 1" in out
    assert "row 2, field 'chosen': chosen is empty" in out and "row 3: invalid JSON" in out


def test_validate_strict_exits_1_and_writes_json_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [good_row(1), {**good_row(2), "rejected": None}])
    report_path = tmp_path / "report.json"
    assert main(["validate", "--pairs", str(path), "--strict", "--json", "--report", str(report_path)]) == 1
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert printed["issues"][0] == {"row": 2, "field": "rejected", "kind": "missing_field", "severity": "error",
                                    "message": "rejected is missing"}
    assert json.loads(report_path.read_text(encoding="utf-8")) == printed
    assert "1 row error(s) under --strict" in captured.err


def test_validate_preset_converts_to_pairs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pku = [{"prompt": "q", "response_0": "no", "response_1": "sure, here is how", "is_response_0_safe": True,
            "is_response_1_safe": False, "safer_response_id": 0},
           {"prompt": "q2", "response_0": "a", "response_1": "b", "is_response_0_safe": True,
            "is_response_1_safe": True, "safer_response_id": None}]
    source = write_jsonl(tmp_path / "pku.jsonl", pku)
    out = tmp_path / "pairs.jsonl"
    assert main(["validate", "--pairs", str(source), "--preset", "pku_saferlhf", "--out", str(out)]) == 0
    assert "preset pku_saferlhf: one_safe=1, skipped_no_preference=1" in capsys.readouterr().out
    (row,) = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert (row["chosen"], row["rejected"], row["pku_case"]) == ("no", "sure, here is how", "one_safe")


@pytest.mark.parametrize("argv_tail, message", [
    (["--pairs", "{tmp}/missing.jsonl"], "no such file"),
    (["--pairs", "{tmp}/data.txt"], "--format"),
    (["--pairs", "hf://org/name:train"], "no revision"),
])
def test_validate_user_errors_exit_2_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv_tail: list[str], message: str
) -> None:
    (tmp_path / "data.txt").write_text("{}", encoding="utf-8")
    assert main(["validate", *[a.format(tmp=tmp_path) for a in argv_tail]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("realign: error:") and message in err and "Traceback" not in err


def test_split_writes_all_files_and_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_jsonl(tmp_path / "triaged.jsonl", triaged_rows())
    out = tmp_path / "splits"
    argv = ["split", "--triaged", str(source), "--out", str(out), "--train-size", "40", "--train2-size", "15",
            "--val-size", "10", "--seed", "5", "--noise-rates", "0.2", "0.1", "0.10"]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert "train1: 40 pairs" in stdout and "train1 noisy 10pct: 4 corrupted" in stdout
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert {k: v["pairs"] for k, v in manifest["splits"].items()} == {"train1": 40, "train2": 15, "val": 10, "test": 29}
    assert manifest["seed"] == 5 and manifest["checks"]["train_test_prompt_overlap"] == 0
    assert manifest["input"]["validation"]["pairs_kept"] == 79 and len(manifest["input"]["sha256"]) == 64
    assert sorted(p.name for p in (out / "noisy").iterdir()) == [
        "train1_noisy10pct.jsonl", "train1_noisy20pct.jsonl", "train2_noisy10pct.jsonl", "train2_noisy20pct.jsonl"]
    first = (out / "train1.jsonl").read_text(encoding="utf-8")
    assert main(argv) == 0  # same seed, same files
    assert (out / "train1.jsonl").read_text(encoding="utf-8") == first


@pytest.mark.parametrize("sizes, message", [
    (["--train-size", "10", "--train2-size", "11"], "must not exceed"),
    (["--train-size", "80", "--train2-size", "1"], "at least one"),
])
def test_split_bad_sizes_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], sizes: list[str], message: str) -> None:
    source = write_jsonl(tmp_path / "triaged.jsonl", triaged_rows())
    assert main(["split", "--triaged", str(source), "--out", str(tmp_path / "o"), *sizes]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_split_strict_refuses_rows_without_category(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = triaged_rows()
    rows[3]["category"] = "MAYBE"
    source = write_jsonl(tmp_path / "triaged.jsonl", rows)
    argv = ["split", "--triaged", str(source), "--out", str(tmp_path / "o"), "--train-size", "20",
            "--train2-size", "5"]
    assert main([*argv, "--strict"]) == 1
    assert "row 4, field 'category'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert main(argv) == 0  # default: the bad row is skipped and reported


def test_bad_option_values_are_argparse_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["split", "--triaged", "x", "--out", "o", "--train-size", "5", "--train2-size", "1", "--noise-rates", "2"])
    assert exited.value.code == 2 and "noise rate must be in (0, 1]" in capsys.readouterr().err


def test_every_option_has_help_text() -> None:
    parser = build_parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("validate", "split"):
        for action in subcommands.choices[name]._actions:
            assert action.help, f"realign {name} {action.option_strings} has no help"


def test_cli_as_a_subprocess(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [good_row(1), {**good_row(2), "prompt": [{"role": "user"}]}])
    command = [sys.executable, "-c", "import sys; from trace_engine.cli import main; sys.exit(main())"]
    done = subprocess.run([*command, "validate", "--pairs", str(path), "--strict"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "row 2, field 'prompt[0].content'" in done.stdout and "Traceback" not in done.stderr
