"""The audit journal: what a request recorded survives the process, is shipped to MongoDB once, and a
journal that cannot be written fails the request instead of answering it unrecorded."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient

from fhir_store import AuditTrail, AuditUnavailable, FhirStore
from tests.conftest import LiveServer, make_settings, run_async

pytestmark = pytest.mark.anyio
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def db_name(mongo_uri: str) -> AsyncIterator[str]:
    name = f"test_journal_{uuid.uuid4().hex[:10]}"
    yield name
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri)
    await client.drop_database(name)
    await client.close()


def event(n: int) -> dict[str, Any]:
    return {"resourceType": "AuditEvent", "type": {"code": "rest"}, "recorded": "2026-12-02T01:00:00.000Z",
            "agent": [{"requestor": True, "altId": f"user-{n}"}], "source": {"observer": {"display": "test"}},
            "entity": [{"what": {"reference": f"Patient/p{n}"}}]}


CHILD = """
import asyncio, sys
from pathlib import Path
from pymongo import AsyncMongoClient
from fhir_store import FhirStore, AuditTrail

async def main(uri, name, folder, count):
    client = AsyncMongoClient(uri, tz_aware=True)
    store = FhirStore(client[name])
    trail = AuditTrail(store.audit_trail.collection, lambda: store._indexer, journal=Path(folder), ship_every=3600)
    for n in range(count):
        await trail.record([{"resourceType": "AuditEvent", "id": f"e{n}", "type": {"code": "rest"},
                             "recorded": "2026-12-02T01:00:00.000Z", "agent": [{"requestor": True}],
                             "source": {"observer": {"display": "child"}}}])
    print("recorded", flush=True)
    await asyncio.sleep(3600)  # killed here, before anything is shipped

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
"""


async def test_events_of_a_killed_process_are_shipped_once_by_the_next(mongo_uri: str, db_name: str,
                                                                       tmp_path: Path) -> None:
    folder = tmp_path / "audit-journal"
    child = subprocess.Popen([sys.executable, "-c", CHILD, mongo_uri, db_name, str(folder), "40"],
                             stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert child.stdout is not None
    assert child.stdout.readline().strip() == b"recorded"  # each record() returned: the request was answered
    child.send_signal(signal.SIGKILL)
    child.wait()
    [journal] = folder.glob("*.ndjson")
    copy = folder / "copy-of-a-journal-shipped-twice.ndjson"
    shutil.copy(journal, copy)

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    try:
        store = FhirStore(client[db_name], audit_journal=folder)
        assert await store.audit_trail.collection.count_documents({}) == 0  # nothing was shipped before the kill
        await store.audit_trail.flush()  # the next process to start (or search, or stop) ships the leftovers
        assert sorted(await store.audit_trail.collection.distinct("id")) == sorted(f"e{n}" for n in range(40))
        assert await store.audit_trail.collection.count_documents({}) == 40  # the copy added nothing
        assert list(folder.glob("*.ndjson")) == []
        found = await store.search("AuditEvent", [("_count", "100")])
        assert len(found.matches) == 40
        await store.close()
    finally:
        await client.close()


async def test_a_journal_that_cannot_be_written_refuses_to_record(mongo_uri: str, db_name: str,
                                                                  tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the journal folder should be")
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    try:
        store = FhirStore(client[db_name], audit_journal=blocked)
        with pytest.raises(AuditUnavailable):
            await store.audit_trail.record([event(1)])
        direct = AuditTrail(store.audit_trail.collection, lambda: store._indexer)  # no journal: straight in
        await direct.record([event(2), event(3)])
        assert await direct.collection.count_documents({}) == 2
    finally:
        await client.close()


def test_a_request_whose_audit_record_cannot_be_written_fails(mongo_uri: str, tmp_path: Path) -> None:
    working = make_settings(mongo_uri, data_dir=tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "audit-journal").write_text("where the journal should be: a disk that failed")
    broken = working.model_copy(update={"data_dir": tmp_path / "b"})  # same database, same keys
    with LiveServer(working) as first, LiveServer(broken) as second:
        token = first.sign_in()
        answer = httpx.get(f"{second.url}/fhir/Patient", headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 503, answer.text
        assert "audit journal could not be written" in answer.json()["issue"][0]["diagnostics"]
        user, password = first.add_user("nurse")
        refused = httpx.post(f"{second.url}/auth/token",
                             data={"grant_type": "password", "username": user, "password": password})
        assert refused.status_code == 503  # a sign-in that cannot be recorded does not happen
        assert httpx.get(f"{first.url}/fhir/Patient", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_journalled_events_reach_the_database_by_themselves(mongo_uri: str, tmp_path: Path) -> None:
    settings = make_settings(mongo_uri, data_dir=tmp_path)
    with LiveServer(settings) as live, live.client() as admin:
        for _ in range(20):
            assert admin.get("/Patient").status_code == 200

        async def count() -> int:
            client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri)
            try:
                return await client[settings.database]["audit"].count_documents({"res.subtype.code": "search-type"})
            finally:
                await client.close()

        deadline = time.monotonic() + 5
        while run_async(count) < 20:  # nobody searched the trail: the shipper alone brought them
            assert time.monotonic() < deadline, "the journal was not shipped"
            time.sleep(0.1)


async def test_journals_rotate_under_concurrent_requests_and_lose_nothing(mongo_uri: str, db_name: str,
                                                                          tmp_path: Path) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    try:
        store = FhirStore(client[db_name])
        trail = AuditTrail(store.audit_trail.collection, lambda: store._indexer, journal=tmp_path / "j",
                           ship_every=0.005, rotate_bytes=4000)  # a new file every few events
        for wave in range(10):
            await asyncio.gather(*(trail.record([{**event(n), "id": f"w{wave}-{n}"}]) for n in range(30)))
        await trail.close()
        assert await trail.collection.count_documents({}) == 300
        assert len(await trail.collection.distinct("id")) == 300
        assert list((tmp_path / "j").glob("*.ndjson")) == []
    finally:
        await client.close()
