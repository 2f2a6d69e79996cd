"""An answered write survives the death of the database process: SIGKILL mid-traffic, restart, count.

Four writers post Patients (201) and 20-entry transactions (200) through the
real API while the embedded database process is killed with SIGKILL. After a
restart on the same data directory, every write that was answered as done is
there exactly once, and every transaction, answered or not, is all there or
not there at all.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from pymongo import MongoClient

from emr.embedded_db import ensure_embedded
from tests.conftest import LiveServer, make_settings

JSON = {"Content-Type": "application/fhir+json"}
TAG = "urn:test:durability"
ENTRIES = 20


def _transaction(batch: str) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "request": {"method": "POST", "url": "Observation"},
         "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "mạch"},
                      "identifier": [{"system": TAG, "value": f"{batch}-{i}"}]}}
        for i in range(ENTRIES)]}


def test_acknowledged_writes_survive_sigkill_of_the_database() -> None:
    data = Path(tempfile.mkdtemp(prefix="emr-durability-"))
    database = ensure_embedded(data)
    assert database.process is not None
    settings = make_settings(f"{database.uri}&serverSelectionTimeoutMS=2000")
    created: list[tuple[str, str]] = []  # (patient id, its identifier value), answered 201
    committed: list[str] = []  # transaction batches answered 200
    attempted: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def writer(n: int, token: str) -> None:
        with httpx.Client(base_url=f"{live.url}/fhir", timeout=10,
                          headers={"Authorization": f"Bearer {token}"}) as client:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    if i % 5 == 0:
                        batch = f"w{n}-{i}"
                        with lock:
                            attempted.append(batch)
                        answer = client.post("/", json=_transaction(batch), headers=JSON)
                        if answer.status_code == 200:
                            with lock:
                                committed.append(batch)
                    else:
                        value = f"w{n}-{i}-{uuid.uuid4().hex[:6]}"
                        answer = client.post("/Patient", headers=JSON, json={
                            "resourceType": "Patient", "identifier": [{"system": TAG, "value": value}]})
                        if answer.status_code == 201:
                            with lock:
                                created.append((answer.json()["id"], value))
                except httpx.HTTPError:
                    pass  # the database is gone: the request fails, which is allowed

    with LiveServer(settings) as live:
        token = live.sign_in("it-admin")
        threads = [threading.Thread(target=writer, args=(n, token)) for n in range(4)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while (len(created) < 150 or len(committed) < 10) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(database.process.pid, signal.SIGKILL)  # mid-traffic: writes are in flight
        database.process.wait()
        time.sleep(1.0)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        database.close()
    assert len(created) >= 150 and len(committed) >= 10, "the writers did not get going"

    restarted = ensure_embedded(data)
    try:
        client: MongoClient[dict[str, Any]] = MongoClient(restarted.uri)
        resources = client[settings.database]["resources"]
        for pid, value in created:
            assert resources.count_documents({"_id": f"Patient/{pid}"}) == 1, f"answered 201, lost: Patient/{pid}"
            assert resources.count_documents({"type": "Patient", "ix.identifier": f"{TAG}|{value}"}) == 1
        for batch in attempted:
            found = resources.count_documents({"type": "Observation", "ix.identifier": {
                "$in": [f"{TAG}|{batch}-{i}" for i in range(ENTRIES)]}})
            if batch in committed:
                assert found == ENTRIES, f"transaction {batch} answered 200 but {found} of {ENTRIES} entries kept"
            else:
                assert found in (0, ENTRIES), f"transaction {batch} half kept: {found} of {ENTRIES}"
        client.close()
    finally:
        restarted.close()
