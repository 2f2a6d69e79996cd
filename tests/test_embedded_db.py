"""The embedded database: `emr serve` starts it, keeps data across restarts, and shares it with other commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from emr.embedded_db import ADDRESS_FILE, ensure_embedded
from tests.serving import free_port, sign_in, start_serve, stop_serve


def test_serve_keeps_data_across_restarts_and_shares_the_database(tmp_path: Path) -> None:
    data_dir = tmp_path / "emr-data"
    port = free_port()
    serve = start_serve(data_dir, port)
    try:
        auth = sign_in(data_dir, port)
        body = {"resourceType": "Patient", "name": [{"family": "Trần", "given": ["Văn", "Bình"]}]}
        created = httpx.post(f"http://127.0.0.1:{port}/fhir/Patient", json=body,
                             headers={"Content-Type": "application/fhir+json", **auth}).json()
        # Another process (as `emr import` or `emr backup` will be) reaches the same running database.
        other = ensure_embedded(data_dir)
        assert not other.owned
        script = (
            "import sys; from pymongo import MongoClient; "
            "c = MongoClient(sys.argv[1]); print(c['emr']['resources'].count_documents({'type': 'Patient'}))"
        )
        count = subprocess.run([sys.executable, "-c", script, other.uri], capture_output=True, text=True, check=True)
        assert count.stdout.strip() == "1"
    finally:
        stop_serve(serve)
    assert not (data_dir / ADDRESS_FILE).exists(), "the address of a stopped server was left behind"

    serve = start_serve(data_dir, port)
    try:
        # the token outlives the restart: the signing key and the secret that seals it are kept
        again = httpx.get(f"http://127.0.0.1:{port}/fhir/Patient/{created['id']}", headers=auth)
        assert again.status_code == 200
        assert again.json() == created
    finally:
        stop_serve(serve)


def test_killed_server_leaves_no_orphan_and_restarts(tmp_path: Path) -> None:
    data_dir = tmp_path / "emr-data"
    port = free_port()
    serve = start_serve(data_dir, port)
    serve.kill()  # no chance to clean up
    serve.wait()
    serve = start_serve(data_dir, port)  # stale address file, dead database child: must recover
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/fhir/metadata").status_code == 200
    finally:
        stop_serve(serve)


def test_a_second_server_on_the_same_embedded_database_refuses_to_start(tmp_path: Path) -> None:
    data_dir = tmp_path / "emr-data"
    first = start_serve(data_dir, free_port())
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EMR_")}
        env.update({"EMR_DATA_DIR": str(data_dir), "EMR_PORT": str(free_port())})
        second = subprocess.run([sys.executable, "-m", "emr.cli", "serve"], env=env, capture_output=True,
                                text=True, timeout=60)
        assert second.returncode == 1
        assert f"another emr serve (process {first.pid})" in second.stderr and "EMR_DATA_DIR" in second.stderr
    finally:
        stop_serve(first)
    again = start_serve(data_dir, free_port())  # the first one gone, the lock is free again
    stop_serve(again)
