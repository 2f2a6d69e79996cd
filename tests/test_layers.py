"""The layer rules (scripts/check_layers.py) hold, and break when a forbidden import is written."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHECK = REPO / "scripts" / "check_layers.py"


def check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(CHECK), "--root", str(root)], capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """A copy of the project's packages to break on purpose."""
    for package in ("emr", "fhir_store"):
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__", "data"))
    return tmp_path


def test_the_project_keeps_its_layers() -> None:
    done = check(REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "broken" in done.stdout and "0 broken" in done.stdout


def test_the_store_importing_a_web_framework_breaks_the_rules(scratch: Path) -> None:
    store = scratch / "fhir_store" / "store.py"
    store.write_text(store.read_text(encoding="utf-8") + "\nimport fastapi  # noqa\n", encoding="utf-8")
    done = check(scratch)
    assert done.returncode == 1
    assert "fhir_store is not allowed to import fastapi" in done.stdout


def test_the_application_reaching_into_the_store_breaks_the_rules(scratch: Path) -> None:
    app = scratch / "emr" / "app.py"
    app.write_text(app.read_text(encoding="utf-8") + "\nfrom fhir_store.search.engine import parse_request  # noqa\n",
                   encoding="utf-8")
    done = check(scratch)
    assert done.returncode == 1
    assert "emr is not allowed to import fhir_store.search" in done.stdout


def test_a_new_room_is_held_to_the_rules_from_its_first_commit(scratch: Path) -> None:
    (scratch / "printing").mkdir()
    (scratch / "printing" / "__init__.py").write_text('"""PDF papers."""\nimport emr.settings  # noqa\n',
                                                      encoding="utf-8")
    done = check(scratch)
    assert done.returncode == 1
    assert "printing is not allowed to import emr" in done.stdout
