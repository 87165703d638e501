from __future__ import annotations

import json
import subprocess
import sys

from trace_engine.categories import CATEGORIES, CATEGORY_ORDER, CONFLICT_CATEGORIES, Category


def test_members_read_as_their_strings() -> None:
    assert Category.INVERT == "INVERT"
    assert f"{Category.PUNISH}" == "PUNISH"
    assert ", ".join(CATEGORIES) == "INVERT, PUNISH, RETAIN"
    assert json.dumps({Category.RETAIN: [Category.ERROR]}) == '{"RETAIN": ["ERROR"]}'
    assert {"INVERT": 1}[Category.INVERT] == 1


def test_error_is_reported_but_never_decided() -> None:
    assert Category.ERROR not in CATEGORIES
    assert (*CATEGORIES, Category.ERROR) == CATEGORY_ORDER
    assert set(CONFLICT_CATEGORIES) == set(CATEGORIES) - {Category.RETAIN}


def test_importing_it_does_not_import_torch() -> None:
    """The API imports the enum and must stay torch-free."""
    code = "import sys, trace_engine.categories; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
