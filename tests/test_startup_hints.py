"""`emr serve` that cannot start says why in one sentence with the fix, and exits 1: no traceback to decode."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path


def _serve(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EMR_")}
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "emr.cli", "serve"], capture_output=True, text=True, timeout=120,
                         env={**clean, "EMR_DATA_DIR": str(tmp_path / "emr-data"), **env})
    return run, time.monotonic() - started


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_port_in_use_names_the_setting_to_change(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        run, _ = _serve(tmp_path, EMR_PORT=str(taken.getsockname()[1]))
    assert run.returncode == 1
    assert "uses that port" in run.stderr and "--port or EMR_PORT" in run.stderr and "Traceback" not in run.stderr


def test_an_unreachable_database_names_the_setting_to_check(tmp_path: Path) -> None:
    run, seconds = _serve(tmp_path, EMR_MONGODB_URI=f"mongodb://127.0.0.1:{_free_port()}/", EMR_PORT=str(_free_port()))
    assert run.returncode == 1 and seconds < 60
    assert "cannot reach the database" in run.stderr and "EMR_MONGODB_URI" in run.stderr
    assert "Traceback" not in run.stderr


def test_a_missing_embedded_extra_says_how_to_install_it(tmp_path: Path) -> None:
    # An installation without the [embedded] extra: the package cannot be imported.
    missing = tmp_path / "without-extra" / "secantus"
    missing.mkdir(parents=True)
    (missing / "__init__.py").write_text("raise ImportError(\"No module named 'secantus'\")\n")
    path = os.pathsep.join([str(missing.parent), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    run, _ = _serve(tmp_path, PYTHONPATH=path, EMR_PORT=str(_free_port()))
    assert run.returncode == 1
    assert 'pip install -e ".[embedded]"' in run.stderr and "Traceback" not in run.stderr
