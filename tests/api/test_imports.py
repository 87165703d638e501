"""The API process never loads torch, and the names it lists match the engine's (checked in subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_importing_the_app_and_cli_does_not_import_torch() -> None:
    out = run_python("import sys, api.app, api.cli, core.db.access; "
                     "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'peft')))")
    assert out.strip() == "[]"


def test_eval_suites_match_the_engine() -> None:
    engine = json.loads(run_python("import json; from trace_engine.evaluation.runner import SUITES; "
                                   "print(json.dumps(list(SUITES)))"))
    from core.jobspec import EVAL_SUITES, EvalIn

    assert list(EVAL_SUITES) == engine
    literal = EvalIn.model_json_schema()["properties"]["suites"]["items"]["enum"]
    assert literal == engine


def test_registering_the_keys_command_loads_no_service_dependencies() -> None:
    out = run_python("import sys, argparse, api.cli; api.cli.register(argparse.ArgumentParser().add_subparsers()); "
                     "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'fastapi', "
                     "'pydantic_settings', 'alembic')))")
    assert out.strip() == "[]"
