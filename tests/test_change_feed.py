"""The change feed: polling `_history?_since=` from each answer's `meta.lastUpdated` sees every version once.

Transactions stamp their versions before they commit, up to seconds later; two servers write to the
same database (each its own writer); pollers run all the while. No version may be missed or repeated.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from fhir_store import Issue, WriteContext
from tests.conftest import LiveServer, make_settings

FHIR_JSON = {"Content-Type": "application/fhir+json"}
Key = tuple[str, str, str]


async def slow_when_asked(resource: dict[str, Any], ctx: WriteContext) -> list[Issue]:
    """A write check that holds its transaction open for a second when a Basic says "slow"."""
    if resource.get("resourceType") == "Basic" and (resource.get("code") or {}).get("text") == "slow":
        await asyncio.sleep(1.0)
    return []


@pytest.fixture(scope="module")
def servers(mongo_uri: str) -> Iterator[tuple[LiveServer, LiveServer]]:
    settings = make_settings(mongo_uri)
    with LiveServer(settings, write_checks=[slow_when_asked]) as first, \
            LiveServer(settings, write_checks=[slow_when_asked]) as second:
        yield first, second


def poll(fhir: httpx.Client, since: str, seen: list[Key]) -> str:
    """One poll: every page of `_history?_since=`, its versions added to `seen`; the next `_since`."""
    url: str | None = str(httpx.URL(f"{str(fhir.base_url).rstrip('/')}/_history",
                                    params={"_since": since, "_count": 20}))
    resume = None
    while url:
        bundle = fhir.get(url).json()
        resume = resume or bundle["meta"]["lastUpdated"]
        assert bundle["meta"]["lastUpdated"] == resume, "every page of one read resumes from the same moment"
        for entry in bundle.get("entry", []):
            rtype, rid = entry["fullUrl"].rsplit("/", 2)[-2:]
            seen.append((rtype, rid, entry["response"]["etag"]))
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
    assert resume is not None
    return str(resume)


def test_polling_from_each_answer_misses_nothing_and_repeats_nothing(
        servers: tuple[LiveServer, LiveServer]) -> None:
    first, second = servers
    start = datetime.now(UTC).isoformat()
    stop = threading.Event()
    written: set[tuple[str, str]] = set()
    lock = threading.Lock()
    failures: list[str] = []

    def record(response: httpx.Response) -> None:
        if response.status_code >= 300:
            failures.append(f"{response.status_code} {response.text[:200]}")
            return
        body = response.json()
        found = [e["response"]["location"] for e in body["entry"]] if body.get("resourceType") == "Bundle" \
            else [f"{body['resourceType']}/{body['id']}"]
        with lock:
            written.update(tuple(loc.split("/")[:2]) for loc in found)  # type: ignore[misc]

    def single_writes(server: LiveServer) -> None:
        with server.client() as fhir:
            while not stop.is_set():
                created = fhir.post("/Basic", json={"resourceType": "Basic", "code": {"text": "quick"}},
                                    headers=FHIR_JSON)
                record(created)
                if created.status_code == 201:
                    rid = created.json()["id"]
                    record(fhir.put(f"/Basic/{rid}", json={"resourceType": "Basic", "id": rid,
                                                           "code": {"text": "quick, updated"}}, headers=FHIR_JSON))
                time.sleep(0.03)

    def slow_transactions(server: LiveServer) -> None:
        with server.client() as fhir:
            while not stop.is_set():
                early, late = uuid.uuid4().hex, uuid.uuid4().hex
                bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
                    {"resource": {"resourceType": "Basic", "id": early, "code": {"text": "stamped early"}},
                     "request": {"method": "PUT", "url": f"Basic/{early}"}},
                    {"resource": {"resourceType": "Basic", "id": late, "code": {"text": "slow"}},
                     "request": {"method": "PUT", "url": f"Basic/{late}"}}]}
                record(fhir.post("", json=bundle, headers=FHIR_JSON))

    seen: list[Key] = []
    workers = [threading.Thread(target=single_writes, args=(first,)),
               threading.Thread(target=single_writes, args=(second,)),
               threading.Thread(target=slow_transactions, args=(first,)),
               threading.Thread(target=slow_transactions, args=(second,))]
    for worker in workers:
        worker.start()
    polls = 0
    with first.client() as fhir:
        since = start
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            since = poll(fhir, since, seen)
            polls += 1
            time.sleep(0.05)
        stop.set()
        for worker in workers:
            worker.join(timeout=60)
        time.sleep(0.5)  # both writers go idle
        for _ in range(3):
            since = poll(fhir, since, seen)

        assert not failures, failures
        expected: set[Key] = set()
        for rtype, rid in written:
            for entry in fhir.get(f"/{rtype}/{rid}/_history").json()["entry"]:
                expected.add((rtype, rid, entry["response"]["etag"]))
    assert polls > 10
    assert len(written) > 20
    assert len(seen) == len(set(seen)), "a version was repeated"
    missed = expected - set(seen)
    assert not missed, f"{len(missed)} versions were missed, e.g. {sorted(missed)[:3]}"
