"""Issue 13, "the first hour", CLI side (in-process; the subprocess sweep over every subcommand is
test_no_tracebacks.py): `--version`, `validate` exits non-zero when no pair is usable and reports a truncated row at
its own line's column and an unexpected error is one line unless REALIGN_DEBUG is set (the demo's next steps:
tests/api/test_embedded_output.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trace_engine.cli import data_cmds, main, package_version
from trace_engine.data.io import iter_jsonl

ROW = {"prompt": "héllo", "chosen": "a", "rejected": "b"}


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"realign {package_version()}" and package_version()[0].isdigit()


def test_validate_exits_1_when_no_pair_is_usable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.jsonl"
    junk.write_text('{"prompt": "p"}\nnot json\n')
    assert main(["validate", "--pairs", str(junk)]) == 1
    assert "error: no usable preference pairs in" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert main(["validate", "--pairs", str(empty)]) == 1
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(ROW) + "\nnot json\n")
    assert main(["validate", "--pairs", str(good)]) == 0  # one usable pair: a report, not a failure


@pytest.mark.parametrize("terminator", ["\n", "\r\n", ""])
def test_a_truncated_row_is_reported_at_its_own_columns(tmp_path: Path, terminator: str) -> None:
    text = json.dumps(ROW, ensure_ascii=False)
    cut = text[:-8]  # '{"prompt": "héllo", "chosen": "a", "rej'
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(ROW) + "\n" + cut + terminator, encoding="utf-8")
    rows = list(iter_jsonl(path))
    assert rows[1].row == 2
    error = str(rows[1].error)
    start = cut.rindex('"') + 1  # the unterminated string's first character, 1-based
    assert f"Unterminated string starting at (column {start})" in error, error
    assert f"the row ends at column {len(cut)}: truncated?" in error
    missing_comma = tmp_path / "q.jsonl"
    missing_comma.write_text('{"prompt": "p", "chosen": "a"' + terminator)
    error = str(next(iter_jsonl(missing_comma)).error)
    assert "(column 30)" in error and "ends at column 29" in error, error  # never "column 1" of the next line


def test_a_mid_row_syntax_error_is_not_called_truncated(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "p" "chosen": "a", "rejected": "b"}\n')
    error = str(next(iter_jsonl(path)).error)
    assert "(column 16)" in error and "truncated" not in error


def test_an_unexpected_error_is_one_line_unless_debugging(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    def broken(args: object) -> int:
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(data_cmds, "run_validate", broken)
    monkeypatch.delenv("REALIGN_DEBUG", raising=False)
    assert main(["validate", "--pairs", "x"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == ("realign validate: error: RuntimeError: disk on fire second line "
                           "(set REALIGN_DEBUG=1 for the traceback)")
    monkeypatch.setenv("REALIGN_DEBUG", "1")
    with pytest.raises(RuntimeError, match="disk on fire"):
        main(["validate", "--pairs", "x"])

