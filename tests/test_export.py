"""Bulk export ($export, `emr export`): levels, parameters, point-in-time consistency, leases, round trip.

Real Synthea records are loaded through the API; the expected content of each
export is read straight from the database (or, for the snapshot tests, is the
state the test itself wrote before the transaction time).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient, MongoClient

from fhir_store import FhirStore
from fhir_store.bulk.exporter import Exporter, ExportRequest
from fhir_store.bulk.jobs import ExportWorker, JobQueue
from fhir_store.errors import ResourceNotFound
from tests.conftest import LiveServer, make_settings, unique
from tests.synthea import bundle_file, resources

JSON = {"Content-Type": "application/fhir+json"}
ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}
Exported = dict[str, dict[str, dict[str, Any]]]  # type -> id -> resource


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# ---- fixtures -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(mongo_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server with its own database and data folder (exports land in <data>/exports)."""
    settings = make_settings(mongo_uri, data_dir=tmp_path_factory.mktemp("export-data"))
    with LiveServer(settings) as live:
        # Reading starts 2 s after the transaction time instead of 65 s: these tests run no long transactions.
        live.app.state.services.export_worker.settle = timedelta(seconds=2)
        yield live


@pytest.fixture(scope="module")
def db(server: LiveServer, mongo_uri: str) -> Iterator[Any]:
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri, tz_aware=True)
    yield client[server.settings.database]
    client.close()


@pytest.fixture(scope="module")
def patients(server: LiveServer) -> dict[str, str]:
    """Three Synthea patients' records, PUT with their own ids; given name -> patient id."""
    out: dict[str, str] = {}
    with server.client() as fhir:
        for prefix in ("Alfreda", "Gustavo", "Chet"):
            for resource in resources(bundle_file(prefix)):
                r = fhir.put(f"/{resource['resourceType']}/{resource['id']}", json=resource, headers=JSON)
                assert r.status_code in (200, 201), r.text
                if resource["resourceType"] == "Patient":
                    out[prefix] = resource["id"]
        group = {"resourceType": "Group", "id": "export-group", "type": "person", "actual": True,
                 "member": [{"entity": {"reference": f"Patient/{out['Alfreda']}"}},
                            {"entity": {"reference": f"Patient/{out['Chet']}"}, "inactive": True}]}
        assert fhir.put("/Group/export-group", json=group, headers=JSON).status_code in (200, 201)
    return out


@pytest.fixture
def fhir(server: LiveServer, patients: dict[str, str]) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


# ---- helpers --------------------------------------------------------------------------------

def kick_off(fhir: httpx.Client, path: str, params: dict[str, str] | None = None) -> str:
    r = fhir.get(path, params=params, headers=ASYNC)
    assert r.status_code == 202, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    return r.headers["Content-Location"]


def wait_manifest(fhir: httpx.Client, status_url: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while True:
        r = fhir.get(status_url)
        if r.status_code == 200:
            assert r.headers["content-type"].startswith("application/json")
            manifest: dict[str, Any] = r.json()
            return manifest
        assert r.status_code == 202, r.text
        assert r.headers["X-Progress"]
        assert time.monotonic() < deadline, "the export did not finish"
        time.sleep(0.2)


def download(fhir: httpx.Client, manifest: dict[str, Any]) -> Exported:
    out: Exported = {}
    for item in manifest["output"]:
        r = fhir.get(item["url"], headers={"Accept": "application/fhir+ndjson"})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/fhir+ndjson")
        lines = r.text.splitlines()
        assert len(lines) == item["count"]
        assert item["type"] not in out, "one file per type"
        out[item["type"]] = {}
        for line in lines:
            resource = json.loads(line)
            assert resource["resourceType"] == item["type"]
            out[item["type"]][resource["id"]] = resource
    return out


def export(fhir: httpx.Client, path: str, params: dict[str, str] | None = None) -> tuple[dict[str, Any], Exported]:
    manifest = wait_manifest(fhir, kick_off(fhir, path, params))
    return manifest, download(fhir, manifest)


def current(db: Any, query: dict[str, Any] | None = None) -> Exported:
    """The database's current, non-deleted resources matching `query`, as an export would hold them."""
    out: Exported = {}
    for doc in db["resources"].find({"deleted": False, **(query or {})}, {"res": True, "type": True}):
        out.setdefault(doc["type"], {})[doc["res"]["id"]] = doc["res"]
    return out


def read_dir(folder: Path) -> Exported:
    out: Exported = {}
    for path in sorted(folder.glob("*.ndjson")):
        lines = path.read_text(encoding="utf-8").splitlines()
        out[path.stem] = {r["id"]: r for r in map(json.loads, lines)}
        assert len(out[path.stem]) == len(lines)
    return out


def without_server_meta(resource: dict[str, Any]) -> dict[str, Any]:
    meta = {k: v for k, v in resource.get("meta", {}).items() if k not in ("versionId", "lastUpdated")}
    return {**{k: v for k, v in resource.items() if k != "meta"}, **({"meta": meta} if meta else {})}


def cli(*args: str, database: str, mongo_uri: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EMR_MONGODB_URI": mongo_uri, "EMR_DATABASE": database, "EMR_DATA_DIR": str(cwd / "data")}
    return subprocess.run([sys.executable, "-m", "emr.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)


# ---- levels ---------------------------------------------------------------------------------

def test_system_export_is_the_whole_database(fhir: httpx.Client, db: Any, patients: dict[str, str]) -> None:
    status_url = kick_off(fhir, "/$export")
    assert "/fhir/$export-poll-status?_jobId=" in status_url
    early = fhir.get(status_url)  # the worker waits a moment after the transaction time: still in progress
    assert early.status_code == 202 and early.headers["X-Progress"] and early.headers["Retry-After"]
    manifest = wait_manifest(fhir, status_url)
    exported = download(fhir, manifest)
    assert manifest["request"] == f"{fhir.base_url}/$export".replace("//$", "/$")
    assert manifest["requiresAccessToken"] is True and manifest["error"] == []  # the files are patient data
    assert datetime.fromisoformat(manifest["transactionTime"].replace("Z", "+00:00")) <= datetime.now(UTC)
    assert exported == current(db)
    for prefix in patients:  # every record of the source files, by id and content
        for resource in resources(bundle_file(prefix)):
            got = exported[resource["resourceType"]][resource["id"]]
            assert got["meta"]["versionId"] and got["meta"]["lastUpdated"]
    assert {"Organization", "Practitioner", "Group", "Observation"} <= set(exported)


def test_patient_export_is_every_patient_compartment(fhir: httpx.Client, db: Any) -> None:
    manifest, exported = export(fhir, "/Patient/$export")
    assert manifest["request"].endswith("/fhir/Patient/$export")
    assert exported == current(db, {"cp": {"$regex": "^Patient/"}})
    assert "Organization" not in exported and "Practitioner" not in exported
    assert "export-group" in exported["Group"]  # a Group is in its members' compartments
    assert len(exported["Patient"]) >= 3


def test_group_export_is_its_active_members_compartments(fhir: httpx.Client, db: Any,
                                                         patients: dict[str, str]) -> None:
    alfreda = f"Patient/{patients['Alfreda']}"
    _, exported = export(fhir, "/Group/export-group/$export")
    assert exported == current(db, {"cp": alfreda})
    assert list(exported["Patient"]) == [patients["Alfreda"]]  # Chet's membership is inactive
    assert len(exported["Observation"]) == 79


def test_type_and_since(fhir: httpx.Client, db: Any, patients: dict[str, str]) -> None:
    _, exported = export(fhir, "/$export", {"_type": "Patient,Condition"})
    assert set(exported) == {"Patient", "Condition"}
    assert exported == {t: v for t, v in current(db).items() if t in ("Patient", "Condition")}
    _, exported = export(fhir, "/Patient/$export", {"_type": "Condition,Organization", "_outputFormat": "ndjson"})
    assert set(exported) == {"Condition"}  # Organizations are in no patient's compartment

    condition = next(iter(exported["Condition"].values()))
    condition["note"] = [{"text": "reviewed"}]
    r = fhir.put(f"/Condition/{condition['id']}", json=condition, headers=JSON)
    assert r.status_code == 200
    since = r.json()["meta"]["lastUpdated"]
    observation = {"resourceType": "Observation", "status": "final", "code": {"text": "pulse"},
                   "subject": {"reference": f"Patient/{patients['Gustavo']}"}}
    created = fhir.post("/Observation", json=observation, headers=JSON).json()
    _, exported = export(fhir, "/$export", {"_since": since})
    assert {t: set(v) for t, v in exported.items()} == {"Condition": {condition["id"]},
                                                        "Observation": {created["id"]}}
    assert exported["Condition"][condition["id"]]["note"] == [{"text": "reviewed"}]
    _, exported = export(fhir, "/$export", {"_since": since, "_type": "Observation"})
    assert set(exported) == {"Observation"}


def test_kick_off_refusals(fhir: httpx.Client) -> None:
    def refused(path: str, params: dict[str, str] | None, headers: dict[str, str], status: int) -> None:
        r = fhir.get(path, params=params, headers=headers)
        assert r.status_code == status, r.text
        assert r.json()["resourceType"] == "OperationOutcome"

    refused("/$export", None, {}, 400)  # no Prefer: respond-async
    refused("/Patient/$export", None, {"Prefer": "return=minimal"}, 400)
    refused("/$export", {"_outputFormat": "application/fhir+json"}, ASYNC, 400)
    refused("/$export", {"_type": "Patient,Unicorn"}, ASYNC, 400)
    refused("/$export", {"_since": "yesterday"}, ASYNC, 400)
    refused("/$export", {"includeAssociatedData": "LatestProvenanceResources"}, ASYNC, 400)  # not supported
    refused("/Group/no-such-group/$export", None, ASYNC, 404)
    refused("/$export-poll-status", {"_jobId": "0" * 32}, {}, 404)
    refused("/$export-poll-status", {"_jobId": "../etc"}, {}, 404)
    refused("/$export-file/" + "0" * 32 + "/Patient.ndjson", None, {}, 404)
    lenient = fhir.get("/$export", params={"includeAssociatedData": "x", "_type": "Group"},
                       headers={**ASYNC, "Prefer": "respond-async, handling=lenient"})
    assert lenient.status_code == 202
    wait_manifest(fhir, lenient.headers["Content-Location"])


def test_cancel_deletes_the_job_and_its_files(fhir: httpx.Client, server: LiveServer) -> None:
    status_url = kick_off(fhir, "/$export", {"_type": "Patient"})
    manifest = wait_manifest(fhir, status_url)
    job_id = status_url.rsplit("=", 1)[1]
    folder = Path(server.settings.data_dir) / "exports" / job_id
    assert (folder / "Patient.ndjson").is_file() and not list(folder.glob(".partial-*"))
    assert fhir.delete(status_url).status_code == 202
    assert fhir.get(status_url).status_code == 404
    assert fhir.get(manifest["output"][0]["url"]).status_code == 404
    assert not folder.exists()
    assert fhir.delete(status_url).status_code == 404

    running = kick_off(fhir, "/$export")  # cancelled while the worker holds it
    assert fhir.delete(running).status_code == 202
    assert fhir.get(running).status_code == 404
    time.sleep(3)  # past the worker's settle time: it must not have written anything back
    assert not (Path(server.settings.data_dir) / "exports" / running.rsplit("=", 1)[1]).exists()


# ---- Bulk Data IG v2 housekeeping: POST kick-off, _typeFilter, expiry ---------------------------

HEIGHT = "http://loinc.org|8302-2"  # body height: in every Synthea record, a small share of its observations


def test_post_kick_off_with_parameters_and_a_type_filter(fhir: httpx.Client, db: Any) -> None:
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "_type", "valueString": "Observation"},
        {"name": "_typeFilter", "valueString": f"Observation?code={HEIGHT}"}]}
    r = fhir.post("/$export", json=body, headers={**ASYNC, **JSON})
    assert r.status_code == 202, r.text
    exported = download(fhir, wait_manifest(fhir, r.headers["Content-Location"]))
    heights = current(db, {"type": "Observation", "ix.code": HEIGHT})
    assert exported == heights
    assert 0 < len(heights["Observation"]) < len(current(db, {"type": "Observation"})["Observation"])
    # the same by GET, and a Patient-level export filtered the same way
    _, by_get = export(fhir, "/Patient/$export", {"_type": "Observation", "_typeFilter": f"Observation?code={HEIGHT}"})
    assert by_get == heights


def test_a_type_filter_must_be_a_search_this_server_understands(fhir: httpx.Client) -> None:
    for bad in ("Observation?colour=blue", "Nothing?code=1", "Observation"):
        r = fhir.get("/$export", params={"_typeFilter": bad}, headers=ASYNC)
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["resourceType"] == "OperationOutcome"
    r = fhir.post("/$export", json={"resourceType": "Patient"}, headers={**ASYNC, **JSON})
    assert r.status_code == 400


def test_a_finished_export_expires_with_its_files(mongo_uri: str, tmp_path: Path) -> None:
    settings = make_settings(mongo_uri, data_dir=tmp_path, export_retention=2, export_settle_seconds=2)
    with LiveServer(settings) as live, live.client() as fhir:
        patient = {"resourceType": "Patient", "name": [{"family": "Huỳnh", "given": ["Văn", "Tư"]}]}
        assert fhir.post("/Patient", json=patient, headers=JSON).status_code == 201
        status_url = kick_off(fhir, "/$export", {"_type": "Patient"})
        wait_manifest(fhir, status_url)
        finished = fhir.get(status_url)
        assert "Expires" in finished.headers
        folder = tmp_path / "exports" / status_url.rsplit("=", 1)[1]
        assert (folder / "Patient.ndjson").is_file()
        deadline = time.monotonic() + 30
        while fhir.get(status_url).status_code != 404:
            assert time.monotonic() < deadline, "the finished export was not deleted after its retention"
            time.sleep(0.3)
        assert not folder.exists()


# ---- consistency: the export is the database as it was at the transaction time -----------------

@pytest.fixture
async def store(mongo_uri: str) -> AsyncIterator[FhirStore]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    store = FhirStore(client[f"test_{unique('export').replace('-', '_')}"])
    await store.ensure_indexes()
    yield store
    await store.close()
    await client.drop_database(store.db.name)
    await client.close()


def patient(pid: str, family: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "name": [{"family": family}]}


def observation(oid: str, subject: str, text: str = "pulse") -> dict[str, Any]:
    return {"resourceType": "Observation", "id": oid, "status": "final", "code": {"text": text},
            "subject": {"reference": subject}}


def group(gid: str, *members: str) -> dict[str, Any]:
    return {"resourceType": "Group", "id": gid, "type": "person", "actual": True,
            "member": [{"entity": {"reference": m}} for m in members]}


async def put(store: FhirStore, resource: dict[str, Any]) -> None:
    await store.update(resource, resource_type=resource["resourceType"], resource_id=resource["id"])


@pytest.mark.anyio
async def test_export_is_the_state_at_transaction_time(store: FhirStore, tmp_path: Path) -> None:
    for resource in (patient("p1", "Trần"), patient("p2", "Lê"), patient("gone", "Phạm"), patient("reborn", "Võ"),
                     patient("same", "Đỗ"), observation("o1", "Patient/p1"), group("g1", "Patient/p1"),
                     group("g2", "Patient/p2")):
        await put(store, resource)
    await store.delete("Patient", "reborn")
    await asyncio.sleep(0.02)
    at = datetime.now(UTC)
    await asyncio.sleep(0.02)
    # after T: an update, a deletion, a creation, a resurrection, an Observation moving to another
    # patient, a Group gaining a member, and a new patient in it
    await put(store, patient("p1", "Trần Văn"))
    await store.delete("Patient", "gone")
    await put(store, patient("new", "Mai"))
    await put(store, patient("reborn", "Võ Thị"))
    await put(store, observation("o1", "Patient/p2", "pulse again"))
    await put(store, group("g1", "Patient/p1", "Patient/new"))
    exporter = Exporter(store)

    async def run(request: ExportRequest, name: str) -> Exported:
        result = await exporter.export(request, tmp_path / name, transaction_time=at, settle=timedelta(0))
        assert result.transaction_time <= at and at - result.transaction_time < timedelta(milliseconds=1)
        assert {f.type: f.count for f in result.files} == {t: len(v) for t, v in read_dir(tmp_path / name).items()}
        return read_dir(tmp_path / name)

    everything = await run(ExportRequest(), "system")
    assert set(everything["Patient"]) == {"p1", "p2", "gone", "same"}  # "new" absent, "reborn" was deleted at T
    assert everything["Patient"]["p1"]["name"] == [{"family": "Trần"}]
    assert everything["Patient"]["p1"]["meta"]["versionId"] == "1"
    assert everything["Observation"]["o1"]["subject"] == {"reference": "Patient/p1"}
    assert len(everything["Group"]["g1"]["member"]) == 1

    # membership is judged on the version at T: o1 was p1's then
    g1 = await run(ExportRequest("group", group_id="g1"), "g1")
    assert {t: set(v) for t, v in g1.items()} == {"Patient": {"p1"}, "Observation": {"o1"}, "Group": {"g1"}}
    g2 = await run(ExportRequest("group", group_id="g2"), "g2")
    assert {t: set(v) for t, v in g2.items()} == {"Patient": {"p2"}, "Group": {"g2"}}
    patients = await run(ExportRequest("patient", types=("Patient", "Group", "Organization")), "patients")
    assert {t: set(v) for t, v in patients.items()} == {"Patient": {"p1", "p2", "gone", "same"},
                                                        "Group": {"g1", "g2"}}
    # _since is judged on the version at T too: p1's version at T is older than this
    since = await run(ExportRequest(since=at - timedelta(milliseconds=10)), "since")
    assert since == {}
    with pytest.raises(ResourceNotFound, match="did not exist"):
        await exporter.export(ExportRequest("group", group_id="g3"), tmp_path / "g3", transaction_time=at,
                              settle=timedelta(0))


@pytest.mark.anyio
async def test_export_while_writes_go_on_is_the_state_at_transaction_time(store: FhirStore, tmp_path: Path) -> None:
    for i in range(120):
        await put(store, patient(f"p{i:03d}", f"Nguyễn {i}"))
        await put(store, observation(f"o{i:03d}", f"Patient/p{i:03d}"))
    await put(store, group("g", *(f"Patient/p{i:03d}" for i in range(0, 120, 3))))
    at_t: dict[str, dict[str, Any]] = {}
    cp_at_t: dict[str, list[str]] = {}
    async for doc in store.resources.find({"deleted": False}):
        at_t[doc["_id"]] = doc["res"]
        cp_at_t[doc["_id"]] = doc["cp"]
    await asyncio.sleep(0.01)
    at = datetime.now(UTC)
    await asyncio.sleep(0.01)
    rng = random.Random(7)
    writes = 0
    stop = asyncio.Event()

    async def writer() -> None:  # updates, deletions, creations, patients changing groups, while the export reads
        nonlocal writes
        while not stop.is_set():
            i, kind = rng.randrange(120), rng.randrange(5)
            if kind == 0:
                await put(store, patient(f"p{i:03d}", f"Trần {writes}"))
            elif kind == 1:
                await store.delete("Observation", f"o{i:03d}")
            elif kind == 2:
                await put(store, patient(f"late{writes}", "Lê"))
            elif kind == 3:
                await put(store, observation(f"o{i:03d}", f"Patient/p{rng.randrange(120):03d}", f"v{writes}"))
            else:
                await put(store, group("g", *(f"Patient/p{rng.randrange(120):03d}" for _ in range(10))))
            writes += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(writer())
    exporter = Exporter(store, batch_size=7)  # many small batches, so writes land between them
    try:
        for request, name in ((ExportRequest(), "system"), (ExportRequest("patient"), "patient"),
                              (ExportRequest("group", group_id="g"), "group")):
            await exporter.export(request, tmp_path / name, transaction_time=at, settle=timedelta(0))
    finally:
        stop.set()
        await task
    assert writes > 20

    def expected(keep: Any) -> Exported:
        out: Exported = {}
        for key, res in at_t.items():
            if keep(cp_at_t[key]):
                out.setdefault(res["resourceType"], {})[res["id"]] = res
        return out

    members = {f"Patient/p{i:03d}" for i in range(0, 120, 3)}
    assert read_dir(tmp_path / "system") == expected(lambda cp: True)
    assert read_dir(tmp_path / "patient") == expected(lambda cp: any(c.startswith("Patient/") for c in cp))
    assert read_dir(tmp_path / "group") == expected(lambda cp: bool(members & set(cp)))


def test_export_through_the_api_ignores_writes_after_kick_off(fhir: httpx.Client) -> None:
    tag = unique("snap")
    ids = {name: f"{tag}-{name}" for name in ("kept", "changed", "deleted", "new")}
    for name in ("kept", "changed", "deleted"):
        assert fhir.put(f"/Patient/{ids[name]}", json=patient(ids[name], name), headers=JSON).status_code == 201
    status_url = kick_off(fhir, "/$export", {"_type": "Patient"})
    # the worker reads only a moment after the transaction time: these writes land before it does
    assert fhir.put(f"/Patient/{ids['changed']}", json=patient(ids["changed"], "CHANGED"),
                    headers=JSON).status_code == 200
    assert fhir.delete(f"/Patient/{ids['deleted']}").status_code == 200
    assert fhir.put(f"/Patient/{ids['new']}", json=patient(ids["new"], "new"), headers=JSON).status_code == 201
    exported = download(fhir, wait_manifest(fhir, status_url))["Patient"]
    mine = {pid: r for pid, r in exported.items() if pid.startswith(tag)}
    assert set(mine) == {ids["kept"], ids["changed"], ids["deleted"]}
    assert mine[ids["changed"]]["name"] == [{"family": "changed"}]


# ---- the job queue: leases -------------------------------------------------------------------

@pytest.mark.anyio
async def test_a_job_whose_worker_died_is_taken_over_after_its_lease(store: FhirStore, tmp_path: Path,
                                                                      mongo_uri: str) -> None:
    await put(store, patient("p1", "Nguyễn"))
    await put(store, observation("o1", "Patient/p1"))
    queue = JobQueue(store.db)
    job = await queue.submit(ExportRequest(), "http://example.org/fhir/$export")
    dead = await queue.claim("worker-that-dies")  # claims the job, starts writing, then dies
    assert dead is not None and dead.id == job.id and dead.status == "running" and dead.attempts == 1
    partial = tmp_path / "exports" / job.id / ".partial-dead"
    partial.mkdir(parents=True)
    (partial / "Patient.ndjson").write_text('{"resourceType": "Pat')
    await put(store, patient("p1", "Nguyễn Văn"))  # after the transaction time

    worker = ExportWorker(store, tmp_path / "exports", settle=timedelta(0), owner="survivor")
    assert await worker.run_once() is None  # the lease still holds: nothing to take
    await queue.expire_lease(job.id)
    finished = await worker.run_once()
    assert finished is not None and finished.id == job.id
    assert finished.status == "complete" and finished.attempts == 2 and finished.owner is None
    assert finished.transaction_time == job.transaction_time
    assert sorted((o["type"], o["file"], o["count"]) for o in finished.output) == [
        ("Observation", "Observation.ndjson", 1), ("Patient", "Patient.ndjson", 1)]
    folder = tmp_path / "exports" / job.id
    assert sorted(p.name for p in folder.iterdir()) == ["Observation.ndjson", "Patient.ndjson"]
    assert read_dir(folder)["Patient"]["p1"]["name"] == [{"family": "Nguyễn"}]

    # the API serves what the surviving worker wrote
    settings = make_settings(mongo_uri, database=store.db.name, data_dir=tmp_path)
    with LiveServer(settings) as live, live.client() as client:
        manifest = wait_manifest(client, f"/$export-poll-status?_jobId={job.id}")
        assert manifest["request"] == "http://example.org/fhir/$export"
        assert download(client, manifest)["Observation"]["o1"]["subject"] == {"reference": "Patient/p1"}


@pytest.mark.anyio
async def test_a_job_that_keeps_killing_workers_fails(store: FhirStore) -> None:
    queue = JobQueue(store.db, max_attempts=2)
    job = await queue.submit(ExportRequest(), "http://example.org/fhir/$export")
    for attempt in (1, 2):
        claimed = await queue.claim(f"worker-{attempt}")
        assert claimed is not None and claimed.attempts == attempt
        await queue.expire_lease(job.id)
    assert await queue.claim("worker-3") is None
    failed = await queue.get(job.id)
    assert failed is not None and failed.status == "failed" and "abandoned" in str(failed.error)


@pytest.mark.anyio
async def test_a_worker_shut_down_mid_job_hands_it_back(store: FhirStore, tmp_path: Path) -> None:
    queue = JobQueue(store.db)
    job = await queue.submit(ExportRequest(), "http://example.org/fhir/$export")
    worker = ExportWorker(store, tmp_path, settle=timedelta(seconds=30), owner="leaving")
    worker.start()
    for _ in range(500):
        current = await queue.get(job.id)
        if current is not None and current.status == "running":
            break
        await asyncio.sleep(0.01)
    await worker.stop()
    back = await queue.get(job.id)
    assert back is not None and back.status == "queued" and back.owner is None and back.attempts == 1
    assert not list((tmp_path / job.id).glob(".partial-*"))


# ---- the command line -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cli_export(server: LiveServer, db: Any, patients: dict[str, str], mongo_uri: str,
               tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """`emr export --out DIR --json` of the module's database: the folder and the printed summary."""
    folder = tmp_path_factory.mktemp("cli-export")
    done = cli("export", "--out", str(folder / "all"), "--json", "--settle", "0.5", database=server.settings.database,
               mongo_uri=mongo_uri, cwd=folder)
    assert done.returncode == 0, done.stderr
    return folder / "all", json.loads(done.stdout)


def test_cli_export(server: LiveServer, db: Any, cli_export: tuple[Path, dict[str, Any]], mongo_uri: str,
                    tmp_path: Path) -> None:
    folder, summary = cli_export
    assert read_dir(folder) == current(db)
    assert summary["total"] == sum(len(v) for v in current(db).values())
    assert {o["type"]: o["count"] for o in summary["output"]} == {t: len(v) for t, v in current(db).items()}
    assert {Path(o["path"]).name for o in summary["output"]} == {p.name for p in folder.iterdir()}

    database = server.settings.database
    done = cli("export", "--out", str(tmp_path / "some"), "--type", "Patient,Encounter", "--since",
               "2000-01-01T00:00:00Z", "--settle", "0.5", database=database, mongo_uri=mongo_uri, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "some").iterdir()) == ["Encounter.ndjson", "Patient.ndjson"]
    assert "resources in 2 files" in done.stdout

    for args in (["--out", str(folder)], ["--out", str(tmp_path / "x"), "--type", "Unicorn"],
                 ["--out", str(tmp_path / "x"), "--since", "soon"]):
        refused = cli("export", *args, database=database, mongo_uri=mongo_uri, cwd=tmp_path)
        assert refused.returncode == 2, refused.stderr


def test_round_trip_export_then_import_into_an_empty_database(cli_export: tuple[Path, dict[str, Any]], db: Any,
                                                              mongo_uri: str, tmp_path: Path) -> None:
    folder, _ = cli_export
    fresh = f"test_{unique('roundtrip').replace('-', '_')}"
    imported = cli("import", str(folder), database=fresh, mongo_uri=mongo_uri, cwd=tmp_path)
    assert imported.returncode == 0, imported.stdout + imported.stderr
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri, tz_aware=True)
    try:
        source = current(db)
        copy = current(client[fresh])
        assert {t: set(v) for t, v in copy.items()} == {t: set(v) for t, v in source.items()}
        for rtype, items in source.items():
            for rid, resource in items.items():
                assert without_server_meta(copy[rtype][rid]) == without_server_meta(resource), f"{rtype}/{rid}"
    finally:
        client.drop_database(fresh)
        client.close()
