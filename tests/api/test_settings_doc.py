"""README's settings table is what `python -m api.settings_doc` generates from `Settings`: every `REALIGN_*`
setting is documented, described, and the table cannot drift from the code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from api.settings_doc import BEGIN, END, README, main, replace_table, settings_table
from core.settings import JudgeProfile, Settings

REPO = Path(__file__).resolve().parents[2]


def test_readme_holds_the_generated_table() -> None:
    readme = README.read_text(encoding="utf-8")
    assert replace_table(readme, settings_table()) == readme, "README's settings table is stale: run " \
                                                                "`python -m api.settings_doc`"


def test_every_setting_is_in_the_table_with_a_description() -> None:
    table = settings_table()
    for name, field in Settings.model_fields.items():
        assert field.description, f"Settings.{name} has no description"
        row = next(line for line in table.splitlines() if line.startswith(f"| `REALIGN_{name.upper()}` |"))
        assert row.count(" | ") == 3 and not row.endswith("|  |"), row
    for name, field in JudgeProfile.model_fields.items():
        assert field.description, f"JudgeProfile.{name} has no description"
        assert f"| `{name}` |" in table
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert len(rows) == len(Settings.model_fields) + len(JudgeProfile.model_fields)


def test_the_table_reads_like_the_environment() -> None:
    table = settings_table()
    assert "| `REALIGN_DATA_DIR` | path | `~/.realign` |" in table  # not this machine's home folder
    assert str(Path.home()) not in table
    assert "| `REALIGN_FUSED_KERNELS` | `auto` \\| `on` \\| `off` | `auto` |" in table
    assert "| `REALIGN_RUN_MIGRATIONS` | boolean | `true` |" in table
    assert "| `REALIGN_MAX_UPLOAD_BYTES` | integer, > 0 | `209715200` (200 MiB) |" in table
    assert "unset = REALIGN_DATA_DIR/datasets" in table  # field names become variable names, None becomes unset
    assert "None" not in table


def test_the_check_fails_on_a_stale_table_and_the_script_repairs_it(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    readme = tmp_path / "README.md"
    stale = README.read_text(encoding="utf-8").replace("| `REALIGN_EVAL_SIZE` |", "| `REALIGN_EVAL_SIZES` |")
    readme.write_text(stale, encoding="utf-8")
    assert main(["--readme", str(readme), "--check"]) == 1
    assert "stale" in capsys.readouterr().err
    assert readme.read_text(encoding="utf-8") == stale  # --check writes nothing
    assert main(["--readme", str(readme)]) == 0
    assert readme.read_text(encoding="utf-8") == README.read_text(encoding="utf-8")
    assert main(["--readme", str(readme), "--check"]) == 0


def test_missing_markers_are_a_one_line_error(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{END}\n{BEGIN}\n", encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "api.settings_doc", "--readme", str(readme)], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("error: README must hold the settings markers once, in order")
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    missing = subprocess.run([sys.executable, "-m", "api.settings_doc", "--readme", str(tmp_path / "nope.md")],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr and "nope.md" in missing.stderr
