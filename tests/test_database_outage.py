"""The database goes away under a running `emr serve`: the first request is answered 503 within
EMR_DATABASE_TIMEOUT, the next ones at once, not after 30 s; the log says so in one plain line; the embedded
database is started again and service resumes by itself; and the server still stops in seconds."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx

from emr.embedded_db import ADDRESS_FILE, ensure_embedded
from tests.serving import free_port, sign_in, start_serve, stop_serve

TIMEOUT = "2"  # EMR_DATABASE_TIMEOUT for these servers, seconds


def _embedded_pid(data_dir: Path) -> int:
    return int(json.loads((data_dir / ADDRESS_FILE).read_text())["pid"])


def test_a_killed_embedded_database_is_started_again_and_service_resumes(tmp_path: Path) -> None:
    data_dir, port = tmp_path / "data", free_port()
    serve = start_serve(data_dir, port, EMR_DATABASE_TIMEOUT=TIMEOUT)
    try:
        headers = sign_in(data_dir, port)
        base = f"http://127.0.0.1:{port}/fhir"
        with httpx.Client(base_url=base, headers=headers, timeout=30) as fhir:
            patient = fhir.post("/Patient", json={"resourceType": "Patient", "name": [{"family": "Phạm"}]}).json()
            first = _embedded_pid(data_dir)
            os.kill(first, signal.SIGKILL)
            answers = []
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                started = time.monotonic()
                answer = fhir.get(f"/Patient/{patient['id']}")
                answers.append((answer.status_code, time.monotonic() - started))
                if answer.status_code == 503:
                    assert answer.json()["resourceType"] == "OperationOutcome"
                    assert answer.headers["Retry-After"]
                if answer.status_code == 200 and _embedded_pid(data_dir) != first:
                    break
                time.sleep(0.2)
            assert answers[-1][0] == 200, answers
            assert {status for status, _ in answers} <= {200, 503}, answers
            assert max(took for _, took in answers) < float(TIMEOUT) + 3, answers
            assert fhir.get(f"/Patient/{patient['id']}").json()["name"] == [{"family": "Phạm"}]
            assert fhir.post("/Patient", json={"resourceType": "Patient"}).status_code == 201
    finally:
        stopped = time.monotonic()
        stop_serve(serve)
        assert time.monotonic() - stopped < 15
    log = serve.stderr.read().decode() if serve.stderr else ""
    assert f"the embedded database (process {first}" in log and "stopped" in log, log[-3000:]
    assert "the embedded database is back" in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]


def test_an_unreachable_database_answers_503_fast_and_the_server_still_stops_quickly(tmp_path: Path) -> None:
    database = ensure_embedded(tmp_path / "db")  # a MongoDB of its own, as EMR_MONGODB_URI names one
    data_dir, port = tmp_path / "data", free_port()
    settings = {"EMR_MONGODB_URI": database.uri, "EMR_DATABASE_TIMEOUT": TIMEOUT}
    serve = start_serve(data_dir, port, **settings)
    try:
        headers = sign_in(data_dir, port, **settings)
        base = f"http://127.0.0.1:{port}/fhir"
        with httpx.Client(base_url=base, headers=headers, timeout=60) as fhir:
            assert fhir.get("/Patient").status_code == 200
            database.close()  # the database server stops, and nobody starts it again
            took = []
            for _ in range(4):
                started = time.monotonic()
                answer = fhir.get("/Patient")
                took.append(time.monotonic() - started)
                assert answer.status_code == 503, answer.text
                assert "database is unreachable" in answer.json()["issue"][0]["diagnostics"]
                assert answer.headers["Retry-After"]
            assert took[0] < float(TIMEOUT) + 3, took  # the first finds out, within EMR_DATABASE_TIMEOUT
            assert max(took[1:]) < 0.5, took  # the rest are told at once
            assert fhir.get("/metadata").status_code == 200  # the server itself still answers
    finally:
        stopped = time.monotonic()
        stop_serve(serve)
        took_to_stop = time.monotonic() - stopped
        database.close()
    log = serve.stderr.read().decode() if serve.stderr else ""
    assert took_to_stop < 15, (took_to_stop, log[-3000:])
    assert log.count("the database is unreachable") == 1, log[-3000:]  # one plain line, not one per request
    assert "Traceback" not in log, log[-3000:]
