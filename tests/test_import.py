"""`emr import`: Synthea folders counted against their files, idempotent re-runs, bad lines and broken files.

Everything runs against the real embedded database, each test in a database of
its own; the command itself is run as IT staff run it, as a child process.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import subprocess
import sys
import uuid
import zlib
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from fhir_store import FhirStore, dump_json
from fhir_store.bulk.importer import BulkImporter, import_order
from tests.conftest import SHARED_DATA
from tests.synthea import bundle_file, resources

pytestmark = pytest.mark.anyio

SMART = SHARED_DATA / "synthea" / "smart-on-fhir"
HIV = SHARED_DATA / "synthea" / "fhir-data-pipes-hiv"
REPO = Path(__file__).resolve().parents[1]
CCCD = "http://fhir.hl7.org.vn/core/sid/cccd"
ERROR_FIELDS = {"file", "position", "resourceType", "id", "reason"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def store(mongo_uri: str) -> AsyncIterator[FhirStore]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    store = FhirStore(client[f"test_import_{uuid.uuid4().hex[:12]}"])
    await store.ensure_indexes()
    yield store
    await store.close()
    await client.drop_database(store.db.name)
    await client.close()


async def emr_import(store: FhirStore, mongo_uri: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`emr import ARGS` in a child process, on the test's database (in a thread: the test's client stays live)."""
    env = {**os.environ, "EMR_MONGODB_URI": mongo_uri, "EMR_DATABASE": store.db.name, "PYTHONPATH": str(REPO)}
    return await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "emr.cli", "import", *args], env=env,
                                   cwd=cwd, capture_output=True, text=True, timeout=600)


def expected_counts(folder: Path) -> Counter[str]:
    """Resources per type a Synthea folder must leave: one per distinct id, or per ifNoneExist criteria."""
    keys = set()
    for path in folder.glob("*.json"):
        for entry in json.loads(path.read_text(encoding="utf-8"))["entry"]:
            rtype = entry["resource"]["resourceType"]
            criteria = entry["request"].get("ifNoneExist")
            keys.add((rtype, f"?{criteria}" if criteria else entry["fullUrl"].removeprefix("urn:uuid:")))
    return Counter(rtype for rtype, _ in keys)


def entry_count(folder: Path) -> int:
    return sum(len(json.loads(p.read_text(encoding="utf-8"))["entry"]) for p in folder.glob("*.json"))


async def stored(store: FhirStore) -> dict[str, dict[str, Any]]:
    """Every current resource, by "Type/id"."""
    return {doc["_id"]: doc["res"] async for doc in store.resources.find({"deleted": False}, {"res": True})}


async def stored_counts(store: FhirStore) -> Counter[str]:
    return Counter(key.split("/")[0] for key in await stored(store))


async def assert_no_new_versions(store: FhirStore) -> None:
    assert await store.history_versions.count_documents({}) == 0
    assert await store.resources.count_documents({"vid": {"$ne": 1}}) == 0


def references(value: Any) -> list[str]:
    if isinstance(value, dict):
        own = [value["reference"]] if isinstance(value.get("reference"), str) else []
        return own + [r for v in value.values() for r in references(v)]
    if isinstance(value, list):
        return [r for v in value for r in references(v)]
    return []


def ndjson(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines),
                    encoding="utf-8")
    return path


def cut_bundle(entries: list[dict[str, Any]], keep: int) -> str:
    """A transaction Bundle's text cut in the middle of entry `keep`: entries before it are whole."""
    partial = json.dumps(entries[keep])
    return ('{"resourceType": "Bundle", "type": "transaction", "entry": ['
            + "".join(json.dumps(e) + ", " for e in entries[:keep]) + partial[: len(partial) // 2])


async def test_smart_on_fhir_folder_imports_once_and_reruns_without_changes(
        store: FhirStore, mongo_uri: str, tmp_path: Path) -> None:
    expected = expected_counts(SMART)
    entries = entry_count(SMART)
    errors = tmp_path / "errors.ndjson"

    done = await emr_import(store, mongo_uri, tmp_path, str(SMART), "--json", "--error-file", str(errors))

    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["rejected"] == 0 and summary["errorFile"] is None and not errors.exists()
    assert summary["read"] == entries
    assert summary["created"] == sum(expected.values())
    # the Organizations and Practitioners embedded in patient Bundles again
    assert summary["existing"] == entries - summary["created"] == 40
    assert await stored_counts(store) == expected
    assert summary["byType"]["Patient"] == {"created": 16}

    current = await stored(store)
    # hospitalInformation* goes first, so its copies (with Synthea's utilisation extensions) are the ones kept
    hospital = json.loads(next(SMART.glob("hospitalInformation*.json")).read_text(encoding="utf-8"))
    for entry in hospital["entry"]:
        assert current[f"Organization/{entry['resource']['id']}"]["extension"] == entry["resource"]["extension"]
    # every urn:uuid reference now names the resource by Type/id
    refs = [r for resource in current.values() for r in references(resource)]
    assert refs and not [r for r in refs if r.startswith("urn:")]
    assert all(r.startswith("#") or r in current for r in refs)
    alfreda = json.loads(bundle_file("Alfreda").read_text(encoding="utf-8"))
    patient_id = alfreda["entry"][0]["resource"]["id"]
    observations = [r for r in current.values() if r["resourceType"] == "Observation"
                    and r["subject"]["reference"] == f"Patient/{patient_id}"]
    assert len(observations) == sum(1 for e in alfreda["entry"] if e["resource"]["resourceType"] == "Observation")

    again = await BulkImporter(store).run([SMART])

    assert (again.created, again.updated, again.unchanged, again.rejected) == (0, 0, 0, [])
    assert again.existing == entries
    assert await stored_counts(store) == expected
    await assert_no_new_versions(store)


async def test_fhir_data_pipes_folder_resolves_conditional_references(store: FhirStore) -> None:
    ordered, problems = import_order([HIV])
    assert not problems
    assert [p.name.split("1")[0] for p in ordered[:2]] == ["hospitalInformation", "practitionerInformation"]
    # given patients first, the importer still loads the batch Bundles they refer to before them
    paths = sorted(HIV.glob("[A-Z]*.json")) + sorted(HIV.glob("[a-z]*.json"), reverse=True)
    calls: list[tuple[int, int, int]] = []

    summary = await BulkImporter(store, progress=lambda *call: calls.append(call)).run(paths)

    assert summary.rejected == []
    assert summary.read == entry_count(HIV)
    assert summary.created == summary.read
    assert await stored_counts(store) == expected_counts(HIV)
    current = await stored(store)
    refs = [r for resource in current.values() for r in references(resource)]
    assert not [r for r in refs if "?" in r or r.startswith("urn:")]
    assert all(r.startswith("#") or r in current for r in refs)
    # a conditional reference became the Practitioner that has that NPI
    levi = json.loads(next(HIV.glob("Levi*.json")).read_text(encoding="utf-8"))
    encounters = [e["resource"] for e in levi["entry"] if e["resource"]["resourceType"] == "Encounter"]
    for encounter in encounters:
        written = encounter["participant"][0]["individual"]["reference"]
        npi = written.split("|")[1]
        practitioner = current[current[f"Encounter/{encounter['id']}"]["participant"][0]["individual"]["reference"]]
        assert written.startswith("Practitioner?identifier=") and practitioner["identifier"][0]["value"] == npi
    # progress: bytes only grow, and the last call says everything is done
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)
    assert calls[-1] == (summary.bytes, summary.bytes, summary.read)

    again = await BulkImporter(store).run([HIV])

    assert (again.created, again.updated, again.unchanged, again.rejected) == (0, 0, 0, [])
    assert again.existing == summary.read
    assert await stored_counts(store) == expected_counts(HIV)
    await assert_no_new_versions(store)


async def test_bad_ndjson_lines_are_reported_and_the_others_imported(store: FhirStore, tmp_path: Path) -> None:
    await store.update({"resourceType": "Patient", "id": "known", "identifier": [{"system": CCCD, "value": "1"}]},
                       resource_type="Patient", resource_id="known")
    for twin in ("twin-a", "twin-b"):
        await store.update({"resourceType": "Patient", "id": twin, "identifier": [{"system": CCCD, "value": "2"}]},
                           resource_type="Patient", resource_id=twin)

    def observation(oid: str | None, subject: str) -> dict[str, Any]:
        resource = {"resourceType": "Observation", "status": "final", "code": {"text": "pulse"},
                    "subject": {"reference": subject}}
        return {**resource, "id": oid} if oid else resource

    path = ndjson(tmp_path / "mixed.ndjson", [
        {"resourceType": "Patient", "id": "imported", "gender": "female"},                     # 1
        "",                                                                                    # 2
        '{"resourceType": "Patient", "id": "broken", ',                                        # 3
        {"resourceType": "Patient", "id": "bad-gender", "gender": "xyz"},                      # 4
        observation("obs-known", f"Patient?identifier={CCCD}|1"),                              # 5
        observation("obs-twice", f"Patient?identifier={CCCD}|2"),                              # 6
        observation("obs-nobody", f"Patient?identifier={CCCD}|3"),                             # 7
        observation(None, "Patient/imported"),                                                 # 8
        [1, 2],                                                                                # 9
    ])

    summary = await BulkImporter(store).run([path])

    reasons = {r.position: r for r in summary.rejected}
    assert set(reasons) == {"line 3", "line 4", "line 6", "line 7", "line 9"}
    assert all(r.file == str(path) for r in summary.rejected)
    assert "not valid JSON" in reasons["line 3"].reason
    assert (reasons["line 4"].resource_type, reasons["line 4"].id) == ("Patient", "bad-gender")
    assert "Patient.gender" in reasons["line 4"].reason and "xyz" in reasons["line 4"].reason
    assert "matches more than one resource" in reasons["line 6"].reason and reasons["line 6"].id == "obs-twice"
    assert "matches no resource" in reasons["line 7"].reason
    assert "no FHIR resource" in reasons["line 9"].reason
    assert (summary.read, summary.created) == (8, 3)
    current = await stored(store)
    assert current["Observation/obs-known"]["subject"]["reference"] == "Patient/known"
    assert "Patient/bad-gender" not in current and "Observation/obs-twice" not in current
    assert len([k for k in current if k.startswith("Observation/")]) == 2  # obs-known and the one without id

    again = await BulkImporter(store).run([path])

    assert (again.created, again.updated, again.unchanged) == (0, 0, 3)
    assert len(again.rejected) == 5
    assert await stored(store) == current  # the resource without an id got the same id again
    await assert_no_new_versions(store)


async def test_truncated_bundle_imports_what_comes_before_the_break(store: FhirStore, tmp_path: Path) -> None:
    source = json.loads(bundle_file("Alfreda").read_text(encoding="utf-8"))["entry"]
    # move the first Encounter past the break, so the entries that refer to it cannot be imported yet
    entries = source[:3] + source[4:] + source[3:4]
    assert entries[-1]["resource"]["resourceType"] == "Encounter"
    keep = 40
    path = tmp_path / "cut.json"
    path.write_text(cut_bundle(entries, keep), encoding="utf-8")
    before = {e["fullUrl"] for e in entries[:keep]}
    importable = {e["resource"]["id"] for e in entries[:keep]
                  if all(r in before for r in references(e["resource"]) if r.startswith("urn:"))}
    assert 0 < len(importable) < keep

    summary = await BulkImporter(store).run([path])

    assert summary.read == keep and summary.created == len(importable)
    broken = [r for r in summary.rejected if r.resource_type is None]
    assert [(r.file, r.position) for r in broken] == [(str(path), f"Bundle.entry[{keep}]")]
    assert "cut short" in broken[0].reason and f"the {keep} entries before it were read" in broken[0].reason
    refused = [r for r in summary.rejected if r.resource_type is not None]
    assert {r.id for r in refused} == {e["resource"]["id"] for e in entries[:keep]} - importable
    assert all(entries[-1]["fullUrl"] in r.reason and "before the file breaks" in r.reason for r in refused)
    assert {key.split("/")[1] for key in await stored(store)} == importable

    # the mended file completes the import, and leaves what is there as it was
    path.write_text(json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries}),
                    encoding="utf-8")
    mended = await BulkImporter(store).run([path])

    assert mended.rejected == []
    assert (mended.created, mended.existing) == (len(entries) - len(importable), len(importable))
    await assert_no_new_versions(store)


async def test_truncated_ndjson_gz_imports_the_lines_before_the_break(store: FhirStore, tmp_path: Path) -> None:
    lines = [json.dumps(r) + "\n" for r in resources(bundle_file("Buster"))]
    packed = gzip.compress("".join(lines).encode())
    cut = packed[: len(packed) * 6 // 10]
    whole_lines = zlib.decompressobj(wbits=31).decompress(cut).count(b"\n")
    assert 0 < whole_lines < len(lines)
    path = tmp_path / "Observation.ndjson.gz"
    path.write_bytes(cut)

    summary = await BulkImporter(store).run([path])

    assert (summary.read, summary.created) == (whole_lines, whole_lines)
    [broken] = summary.rejected
    assert (broken.file, broken.position) == (str(path), f"line {whole_lines + 1}")
    assert "cut short" in broken.reason
    expected = {f"{r['resourceType']}/{r['id']}" for r in map(json.loads, lines[:whole_lines])}
    assert set(await stored(store)) == expected


async def test_bundle_entries_ids_and_conditional_entries(store: FhirStore, tmp_path: Path) -> None:
    existing = await store.create({"resourceType": "Organization", "name": "Bệnh viện Đa khoa An Giang",
                                   "identifier": [{"system": "urn:ag:org", "value": "bvag"}]})
    org_url, odd_url, obs_url, cond_url = (f"urn:uuid:{uuid.uuid4()}" for _ in range(4))
    odd_id = str(uuid.uuid5(uuid.NAMESPACE_URL, "urn:uuid:not_a_fhir_id!"))

    def observation(subject: str) -> dict[str, Any]:
        return {"resourceType": "Observation", "status": "final", "code": {"text": "pulse"},
                "subject": {"reference": subject}}

    entries = [
        {"fullUrl": org_url, "resource": {"resourceType": "Organization", "name": "BVAG",
                                          "identifier": [{"system": "urn:ag:org", "value": "bvag"}]},
         "request": {"method": "POST", "url": "Organization", "ifNoneExist": "identifier=urn:ag:org|bvag"}},
        {"fullUrl": "urn:uuid:not_a_fhir_id!",
         "resource": {"resourceType": "Patient", "managingOrganization": {"reference": org_url}},
         "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": obs_url, "resource": {**observation("urn:uuid:not_a_fhir_id!"), "id": "obs-put"},
         "request": {"method": "PUT", "url": "Observation/obs-put"}},
        {"request": {"method": "DELETE", "url": "Patient/someone"}},
        {"fullUrl": obs_url, "resource": observation("urn:uuid:not_a_fhir_id!"),
         "request": {"method": "POST", "url": "Observation"}},
        {"fullUrl": cond_url, "resource": {"resourceType": "Patient", "identifier": [{"system": CCCD, "value": "9"}]},
         "request": {"method": "PUT", "url": f"Patient?identifier={CCCD}|9"}},
        {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": observation(cond_url),
         "request": {"method": "POST", "url": "Observation"}},
        {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": observation(f"urn:uuid:{uuid.uuid4()}"),
         "request": {"method": "POST", "url": "Observation"}},
    ]
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries}),
                    encoding="utf-8")
    document = tmp_path / "document.json"
    document.write_text(json.dumps({
        "resourceType": "Bundle", "id": "discharge-1", "type": "document", "timestamp": "2025-01-31T08:00:00+07:00",
        "identifier": {"system": "urn:ag:doc", "value": "1"},
        "entry": [{"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": {
            "resourceType": "Composition", "status": "final", "type": {"text": "Giấy ra viện"},
            "date": "2025-01-31", "author": [{"display": "BS. Trần"}], "title": "Giấy ra viện"}}]}),
        encoding="utf-8")

    summary = await BulkImporter(store).run([path, document])

    reasons = {r.position: r.reason for r in summary.rejected}
    assert set(reasons) == {"Bundle.entry[3]", "Bundle.entry[4]", "Bundle.entry[7]"}
    assert "DELETE Patient/someone" in reasons["Bundle.entry[3]"]
    assert "used by an earlier entry" in reasons["Bundle.entry[4]"]
    assert "fullUrl of no entry" in reasons["Bundle.entry[7]"]
    current = await stored(store)
    # ifNoneExist matched the Organization already there: no second one, references point at it
    assert [k for k in current if k.startswith("Organization/")] == [f"Organization/{existing.version.id}"]
    assert current[f"Patient/{odd_id}"]["managingOrganization"]["reference"] == f"Organization/{existing.version.id}"
    assert current["Observation/obs-put"]["subject"]["reference"] == f"Patient/{odd_id}"
    [conditional] = [k for k, r in current.items()
                     if k.startswith("Patient/") and r.get("identifier", [{}])[0].get("value") == "9"]
    assert [r["subject"]["reference"] for k, r in current.items()
            if k.startswith("Observation/") and k != "Observation/obs-put"] == [conditional]
    assert current["Bundle/discharge-1"]["entry"][0]["resource"]["resourceType"] == "Composition"
    assert not [k for k in current if k.startswith("Composition/")]

    again = await BulkImporter(store).run([path, document])

    assert (again.created, again.updated) == (0, 0)
    assert (again.unchanged, again.existing) == (3, 3)
    assert await stored(store) == current
    await assert_no_new_versions(store)



async def test_single_resources_compressed_or_with_a_bom_and_unusable_paths(store: FhirStore, tmp_path: Path) -> None:
    patient = {"resourceType": "Patient", "id": "bom", "name": [{"family": "Nguyễn", "given": ["Thị", "Ánh"]}]}
    (tmp_path / "patient.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(patient, ensure_ascii=False).encode())
    (tmp_path / "org.json.gz").write_bytes(gzip.compress(json.dumps({"resourceType": "Organization",
                                                                     "name": "BV An Giang"}).encode()))
    (tmp_path / "array.json").write_text("[1, 2]", encoding="utf-8")
    (tmp_path / "notes.csv").write_text("a,b", encoding="utf-8")

    summary = await BulkImporter(store).run([tmp_path, tmp_path / "notes.csv", tmp_path / "missing.ndjson"])

    assert {(Path(r.file).name, r.position): r.reason for r in summary.rejected} == {
        ("array.json", "file"): "the file holds a JSON array, not a FHIR resource or Bundle",
        ("notes.csv", "file"): "not a .json, .json.gz, .ndjson or .ndjson.gz file",
        ("missing.ndjson", "file"): "no such file or folder",
    }
    assert (summary.files, summary.created) == (3, 2)
    current = await stored(store)
    assert current["Patient/bom"]["name"][0]["given"] == ["Thị", "Ánh"]
    [org] = [k for k in current if k.startswith("Organization/")]

    again = await BulkImporter(store).run([tmp_path])

    assert (again.created, again.unchanged) == (0, 2)
    assert [k for k in await stored(store) if k.startswith("Organization/")] == [org]  # same content, same id

async def test_command_exit_code_error_file_and_json(store: FhirStore, mongo_uri: str, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    ndjson(folder / "good.ndjson", [{"resourceType": "Patient", "id": "p1"}, {"resourceType": "Patient", "id": "p2"}])
    ndjson(folder / "sub" / "bad.ndjson", [{"resourceType": "Patient", "id": "p3"}, '{"resourceType": "Pat'])
    three = [{"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": {"resourceType": "Patient", "gender": "male"},
              "request": {"method": "POST", "url": "Patient"}} for _ in range(3)]
    (folder / "cut.json").write_text(cut_bundle(three, 2), encoding="utf-8")
    (folder / "notes.txt").write_text("not imported", encoding="utf-8")
    errors = tmp_path / "out" / "errors.ndjson"

    done = await emr_import(store, mongo_uri, tmp_path, str(folder), "--error-file", str(errors))

    assert done.returncode == 1, done.stderr
    assert "Patient" in done.stdout and "6 resources read" in done.stdout
    assert "2 rejected (0 resources, 2 unreadable lines or files)" in done.stdout and errors.name in done.stdout
    rejected = [json.loads(line) for line in errors.read_text(encoding="utf-8").splitlines()]
    assert all(set(r) == ERROR_FIELDS for r in rejected)
    by_file = {Path(r["file"]).name: r for r in rejected}
    assert set(by_file) == {"bad.ndjson", "cut.json"}
    assert by_file["bad.ndjson"]["position"] == "line 2" and "not valid JSON" in by_file["bad.ndjson"]["reason"]
    assert by_file["cut.json"]["position"] == "Bundle.entry[2]" and "cut short" in by_file["cut.json"]["reason"]
    assert await stored_counts(store) == {"Patient": 5}

    clean = await emr_import(store, mongo_uri, tmp_path, str(folder / "good.ndjson"), "--json",
                             "--error-file", str(errors))

    assert clean.returncode == 0, clean.stderr
    summary = json.loads(clean.stdout)
    assert (summary["files"], summary["read"], summary["unchanged"], summary["rejected"]) == (1, 2, 2, 0)
    assert summary["byType"] == {"Patient": {"unchanged": 2}} and summary["errorFile"] is None
    assert errors.read_text(encoding="utf-8") == ""  # the earlier run's errors do not linger

    helped = await emr_import(store, mongo_uri, tmp_path, "--help")
    assert helped.returncode == 0
    text = " ".join(helped.stdout.split())
    for words in (".ndjson.gz", "urn:uuid", "ifNoneExist", "--error-file", "Exit code: 0"):
        assert words in text



async def test_imported_decimals_keep_their_text(store: FhirStore, tmp_path: Path) -> None:
    line = ('{"resourceType": "Observation", "id": "hba1c", "status": "final", "code": {"text": "HbA1c"},'
            ' "valueQuantity": {"value": 6.50, "unit": "%"}, "component": [{"code": {"text": "tiny"},'
            ' "valueQuantity": {"value": 1e-3}}]}')
    path = ndjson(tmp_path / "decimals.ndjson", [line])
    summary = await BulkImporter(store).run([path])
    assert summary.created == 1
    version = await store.read("Observation", "hba1c")
    written = json.loads(dump_json(version.resource), parse_float=str)
    assert written["valueQuantity"]["value"] == "6.50"
    assert written["component"][0]["valueQuantity"]["value"] == "1e-3"
    again = await BulkImporter(store).run([path])
    assert (again.created, again.updated, again.unchanged) == (0, 0, 1)
