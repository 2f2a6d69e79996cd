"""Issue 17, case by case: each hostile request gets a quick 4xx OperationOutcome (or the documented answer),
stores nothing, and leaves the server answering an ordinary read and search at once.

Through the real HTTP API on a server of its own (one database for the module), signed in as IT staff;
the store-level tests at the end check what HTTP cannot show: the defaults of a store built without
settings (tests, `emr import`) and that every query of a search carries the time limit to the database.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient, MongoClient, monitoring
from pymongo.errors import ExecutionTimeout

from fhir_store import BulkImporter, FhirStore, StoreError
from tests.conftest import LiveServer, make_settings, run_async, unique

JSON = {"Content-Type": "application/fhir+json"}
PATCH = {"Content-Type": "application/json-patch+json"}
#: An ordinary read or search right after a hostile request must take less than this (seconds).
FAST = 1.0
#: Unicode digits that `str.isdigit()`, `int()`, `Decimal()` or `\d` take for numbers: superscript two,
#: Arabic-Indic three, full-width five, mathematical bold five.
UNICODE_DIGITS = ["²", "٣", "５", "𝟓"]


# ---- the server, a client, the database underneath --------------------------------------------

@pytest.fixture(scope="module")
def server(mongo_uri: str) -> Iterator[LiveServer]:
    with LiveServer(make_settings(mongo_uri)) as live:
        yield live


@pytest.fixture(scope="module")
def fhir(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


@pytest.fixture(scope="module")
def db(server: LiveServer) -> Iterator[Any]:
    client: MongoClient[dict[str, Any]] = MongoClient(server.settings.mongodb_uri)
    yield client[server.settings.database]
    client.close()


@pytest.fixture(scope="module")
def patient(fhir: httpx.Client) -> str:
    """An ordinary patient: what the read and search after each hostile request look for."""
    response = fhir.post("/Patient", json={"resourceType": "Patient", "name": [{"family": "Trần", "given": ["Bình"]}],
                                           "birthDate": "1980-05-01"}, headers=JSON)
    assert response.status_code == 201, response.text
    rid: str = response.json()["id"]
    return rid


def refused(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The OperationOutcome of a refusal, with its status (and issue code)."""
    assert response.status_code == status, response.text[:1000]
    body: dict[str, Any] = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    assert body["issue"][0]["severity"] == "error"
    if code is not None:
        assert body["issue"][0]["code"] == code, body
    return body


def diagnostics(body: dict[str, Any]) -> str:
    return " | ".join(issue.get("diagnostics", "") for issue in body["issue"])


def still_fast(fhir: httpx.Client, rid: str) -> None:
    """The server answers an ordinary read and an ordinary search at once."""
    for call in (lambda: fhir.get(f"/Patient/{rid}"),
                 lambda: fhir.get("/Patient", params={"family": "tran", "birthdate": "1980-05-01"})):
        start = time.monotonic()
        response = call()
        seconds = time.monotonic() - start
        assert response.status_code == 200, response.text[:500]
        assert seconds < FAST, f"{response.request.url} took {seconds:.2f} s"


def timed(call: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    response = call()
    return response, time.monotonic() - start


def kept(db: Any, marker: str) -> int:
    """Resources, current or past, carrying the test's marker identifier."""
    return int(db["resources"].count_documents({"ix.identifier": marker}))


def marked(resource: dict[str, Any]) -> tuple[dict[str, Any], str]:
    marker = unique("r17")
    return {**resource, "identifier": [*resource.get("identifier", []), {"system": "urn:r17", "value": marker}]}, marker


# ---- numbers and dates in requests: ASCII digits only ------------------------------------------

@pytest.mark.parametrize("digit", UNICODE_DIGITS)
def test_count_of_unicode_digits_is_400(fhir: httpx.Client, patient: str, digit: str) -> None:
    for path in ("/Patient", "/Patient/_history", f"/Patient/{patient}/$everything"):
        body = refused(fhir.get(path, params={"_count": digit}), 400)
        assert "_count must be a whole number" in diagnostics(body)
    still_fast(fhir, patient)


@pytest.mark.parametrize("digit", ["¹", "٣", "１"])
def test_a_version_id_of_unicode_digits_is_404(fhir: httpx.Client, patient: str, digit: str) -> None:
    refused(fhir.get(f"/Patient/{patient}/_history/{digit}"), 404)
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"Patient/{patient}/_history/{digit}"}}]}
    response = fhir.post("", json=bundle, headers=JSON)
    assert response.status_code == 200, response.text
    assert response.json()["entry"][0]["response"]["status"][0] == "4"
    still_fast(fhir, patient)


@pytest.mark.parametrize(("path", "params"), [
    ("/Patient", {"birthdate": "２０２０"}),
    ("/Patient", {"birthdate": "ge٢٠٢٠-01-01"}),
    ("/Patient", {"birthdate": "2020-0１"}),
    ("/Patient", {"_lastUpdated": "gt２０２０"}),
    ("/Patient", {"birthdate": "2020-01-01T08:00:00+0٧:00"}),
    ("/RiskAssessment", {"probability": "٣"}),
    ("/RiskAssessment", {"probability": "gt0.５"}),
    ("/RiskAssessment", {"probability": "1_000"}),
    ("/RiskAssessment", {"probability": " 5"}),
    ("/Observation", {"value-quantity": "５|http://unitsofmeasure.org|mg"}),
    ("/Observation", {"component-code-value-quantity": "http://loinc.org|8480-6$lt６0"}),
])
def test_dates_and_numbers_of_unicode_digits_are_400(fhir: httpx.Client, patient: str, path: str,
                                                      params: dict[str, str]) -> None:
    body = refused(fhir.get(path, params=params), 400)
    assert "digits 0-9" in diagnostics(body)
    still_fast(fhir, patient)


def test_ascii_dates_and_numbers_still_search(fhir: httpx.Client, patient: str) -> None:
    found = fhir.get("/Patient", params={"birthdate": "1980-05", "_id": patient}).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [patient]
    for path, params in (("/RiskAssessment", {"probability": "gt0.5"}), ("/RiskAssessment", {"probability": "1e3"}),
                         ("/Observation", {"value-quantity": "ap5.4|http://unitsofmeasure.org|mg"})):
        assert fhir.get(path, params=params).status_code == 200


@pytest.mark.parametrize("value", ["²", "٣", "-1"])
def test_terminology_operation_numbers_are_ascii_whole_numbers(fhir: httpx.Client, value: str) -> None:
    value_set = {"resourceType": "ValueSet", "id": "r17", "url": "urn:r17:vs", "status": "active",
                 "compose": {"include": [{"system": "urn:r17:cs", "concept": [{"code": "a"}, {"code": "b"}]}]}}
    assert fhir.put("/ValueSet/r17", json=value_set, headers=JSON).status_code in (200, 201)
    assert fhir.get("/ValueSet/$expand", params={"url": "urn:r17:vs", "count": "1"}).status_code == 200
    for name in ("count", "offset"):
        response = fhir.get("/ValueSet/$expand", params={"url": "urn:r17:vs", name: value})
        assert f"Parameter '{name}' must be a whole number" in diagnostics(refused(response, 400))


# ---- shape and size of bodies --------------------------------------------------------------------

def nested_extension(levels: int) -> dict[str, Any]:
    extension: dict[str, Any] = {"url": "http://x", "valueString": "v"}
    for _ in range(levels):
        extension = {"url": "http://x", "extension": [extension]}
    return {"resourceType": "Patient", "extension": [extension]}


def test_an_extension_nested_200_deep_is_400(fhir: httpx.Client, db: Any, patient: str) -> None:
    resource, marker = marked(nested_extension(200))
    response, seconds = timed(lambda: fhir.post("/Patient", json=resource, headers=JSON))
    assert "nested more than 64 levels deep" in diagnostics(refused(response, 400, "structure"))
    assert seconds < 2
    assert kept(db, marker) == 0
    still_fast(fhir, patient)


#: (resource, the element path the answer names, the limit it names): each one past its limit by a little or
#: by a lot, in every kind of place a value can hide.
OVERSIZED = [
    pytest.param({"name": [{"family": "x" * 3_000_000}]}, "Patient.name[0].family", 4096, id="family-3M"),
    pytest.param({"name": [{"family": "Lê", "given": ["An", "b" * 4097]}]}, "Patient.name[0].given[1]", 4096,
                 id="given-4097"),
    pytest.param({"name": [{"text": "t" * 5000}]}, "Patient.name[0].text", 4096, id="name-text"),
    pytest.param({"identifier": [{"system": "urn:x", "value": "9" * 10_000}]}, "Patient.identifier[0].value", 4096,
                 id="identifier-value"),
    pytest.param({"identifier": [{"system": "urn:" + "s" * 5000, "value": "1"}]}, "Patient.identifier[0].system",
                 4096, id="identifier-system-uri"),
    pytest.param({"telecom": [{"system": "phone", "value": "0" * 5000}]}, "Patient.telecom[0].value", 4096,
                 id="phone"),
    pytest.param({"address": [{"line": ["1 Trần Hưng Đạo", "l" * 5000]}]}, "Patient.address[0].line[1]", 4096,
                 id="address-line"),
    pytest.param({"maritalStatus": {"coding": [{"system": "urn:x", "code": "c" * 5000}]}},
                 "Patient.maritalStatus.coding[0].code", 4096, id="coding-code"),
    pytest.param({"maritalStatus": {"coding": [{"system": "urn:x", "code": "M", "display": "d" * 5000}]}},
                 "Patient.maritalStatus.coding[0].display", 4096, id="coding-display"),
    pytest.param({"generalPractitioner": [{"reference": "Practitioner/" + "p" * 5000}]},
                 "Patient.generalPractitioner[0].reference", 4096, id="reference"),
    pytest.param({"extension": [{"url": "http://x", "valueString": "v" * (1024 * 1024 + 1)}]},
                 "Patient.extension[0].valueString", 1024 * 1024, id="string-1MiB+1"),
    pytest.param({"extension": [{"url": "http://x", "valueCode": "c" * 5000}]}, "Patient.extension[0].valueCode",
                 4096, id="valueCode"),
    pytest.param({"name": [{"family": "Lê", "_family": {"extension": [{"url": "http://x",
                                                                       "valueString": "v" * 2_000_000}]}}]},
                 "Patient.name[0]._family.extension[0].valueString", 1024 * 1024, id="primitive-extension"),
    pytest.param({"contained": [{"resourceType": "Practitioner", "id": "gp", "name": [{"family": "f" * 5000}]}]},
                 "Patient.contained[0].name[0].family", 4096, id="contained"),
]


@pytest.mark.parametrize(("extra", "path", "limit"), OVERSIZED)
def test_an_oversized_value_is_413_with_its_path(fhir: httpx.Client, db: Any, patient: str, extra: dict[str, Any],
                                                 path: str, limit: int) -> None:
    resource, marker = marked({"resourceType": "Patient", **extra})
    response, seconds = timed(lambda: fhir.post("/Patient", json=resource, headers=JSON))
    body = refused(response, 413, "too-long")
    assert body["issue"][0]["expression"] == [path]
    assert f"it may be at most {limit:,} (the limit)" in diagnostics(body)
    assert seconds < 5
    rid = unique()
    refused(fhir.put(f"/Patient/{rid}", json={**resource, "id": rid}, headers=JSON), 413, "too-long")
    assert kept(db, marker) == 0 and db["resources"].count_documents({"_id": f"Patient/{rid}"}) == 0
    still_fast(fhir, patient)


def test_an_oversized_value_through_patch_keeps_the_version(fhir: httpx.Client, db: Any, patient: str) -> None:
    rid = fhir.post("/Patient", json={"resourceType": "Patient", "name": [{"family": "Lê"}]}, headers=JSON).json()["id"]
    operations = [{"op": "replace", "path": "/name/0/family", "value": "x" * 3_000_000}]
    response = fhir.patch(f"/Patient/{rid}", json=operations, headers=PATCH)
    assert refused(response, 413, "too-long")["issue"][0]["expression"] == ["Patient.name[0].family"]
    assert db["resources"].find_one({"_id": f"Patient/{rid}"})["vid"] == 1
    still_fast(fhir, patient)


def test_an_oversized_value_in_a_transaction_keeps_all_of_it_out(fhir: httpx.Client, db: Any, patient: str) -> None:
    good, marker = marked({"resourceType": "Patient", "name": [{"family": "Lê"}]})
    bad = {**good, "name": [{"family": "x" * 3_000_000}]}
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "POST", "url": "Patient"}, "resource": good},
        {"request": {"method": "PUT", "url": "Patient/r17-tx"}, "resource": {**bad, "id": "r17-tx"}},
    ]}
    body = refused(fhir.post("", json=bundle, headers=JSON), 413, "too-long")
    assert body["issue"][0]["expression"] == ["Bundle.entry[1]", "Patient.name[0].family"]
    assert kept(db, marker) == 0 and db["resources"].count_documents({"_id": "Patient/r17-tx"}) == 0
    bundle["type"] = "batch"
    response = fhir.post("", json=bundle, headers=JSON)
    assert [e["response"]["status"][:3] for e in response.json()["entry"]] == ["201", "413"]
    assert kept(db, marker) == 1
    still_fast(fhir, patient)


def test_values_at_their_limits_and_large_by_nature_are_kept(fhir: httpx.Client, patient: str) -> None:
    """4096-character names, a 1 MiB string, and what is large by nature (an attachment, markdown, the narrative):
    bounded by the resource's size alone."""
    resource = {
        "resourceType": "Patient",
        "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">' + "n" * 2_000_000
                                               + "</div>"},
        "name": [{"family": "f" * 4096, "given": ["g" * 4096]}],
        "extension": [{"url": "http://x", "valueString": "v" * 1024 * 1024},
                      {"url": "http://y", "valueMarkdown": "m" * 2_000_000}],
        "photo": [{"contentType": "image/png", "data": base64.b64encode(b"\x89PNG" * 750_000).decode()}],
    }
    response, seconds = timed(lambda: fhir.post("/Patient", json=resource, headers=JSON))
    assert response.status_code == 201, response.text[:1000]
    assert seconds < 10
    back = fhir.get(f"/Patient/{response.json()['id']}").json()
    assert back["name"] == resource["name"] and back["photo"] == resource["photo"]
    still_fast(fhir, patient)


# ---- search parameters -----------------------------------------------------------------------------

def test_contains_of_50000_characters_is_400(fhir: httpx.Client, patient: str) -> None:
    response, seconds = timed(lambda: fhir.post("/Patient/_search", data={"name:contains": "a" * 50_000}))
    assert "name:contains takes at most 200 characters (the limit)" in diagnostics(refused(response, 400))
    assert seconds < 2
    still_fast(fhir, patient)


def test_5000_ored_values_are_400(fhir: httpx.Client, patient: str) -> None:
    values = ",".join(f"v{i}" for i in range(1, 5001))
    response, seconds = timed(lambda: fhir.post("/Patient/_search", data={"name": values}))
    body = refused(response, 400, "too-costly")
    assert "has 5000 values; one occurrence may carry at most 1000 (the limit)" in diagnostics(body)
    assert seconds < 2
    still_fast(fhir, patient)


@pytest.mark.parametrize("query", ["name%5B%24ne%5D=x", "_id%5B%24gt%5D=", "name[$ne]=x", "_id[$gt]="])
def test_operator_parameter_names_are_unknown_parameters(fhir: httpx.Client, patient: str, query: str) -> None:
    """Ignored with a warning (lenient, the default): never a query operator, so nothing more is found."""
    response = fhir.get(f"/Patient?{query}&_id={patient}")
    assert response.status_code == 200, response.text
    bundle = response.json()
    assert [e["resource"]["id"] for e in bundle["entry"] if e["search"]["mode"] == "match"] == [patient]
    warnings = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert warnings and "Unknown search parameter" in diagnostics(warnings[0])
    assert warnings[0]["issue"][0]["severity"] == "warning"
    still_fast(fhir, patient)


# ---- the time one search may keep the database busy -------------------------------------------------

@pytest.fixture(scope="module")
def hurried(mongo_uri: str) -> Iterator[LiveServer]:
    """A server whose searches may take the database 1 ms each, and enough patients that a scan takes longer."""
    with LiveServer(make_settings(mongo_uri, search_time_limit=0.001)) as live:
        with live.client() as fhir:
            entries = [{"request": {"method": "POST", "url": "Patient"},
                        "resource": {"resourceType": "Patient", "name": [{"family": f"Nguyễn {i}", "given": ["Văn"]}],
                                     "gender": "male", "birthDate": "1990-01-01"}} for i in range(300)]
            response = fhir.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": entries},
                                 headers=JSON)
            assert response.status_code == 200, response.text[:500]
        yield live


@pytest.mark.parametrize("params", [
    {"name:contains": "zzz"},
    {"gender": "female", "_total": "accurate"},
    {"_summary": "count"},
])
def test_a_search_past_the_time_limit_is_stopped_as_too_costly(hurried: LiveServer, params: dict[str, str]) -> None:
    with hurried.client() as fhir:
        response, seconds = timed(lambda: fhir.get("/Patient", params=params))
        body = refused(response, 400, "too-costly")
        assert "ran for longer than 0.001 s (the limit) and was stopped" in diagnostics(body)
        assert seconds < 5
        rid = fhir.post("/Patient", json={"resourceType": "Patient"}, headers=JSON).json()["id"]
        read, seconds = timed(lambda: fhir.get(f"/Patient/{rid}"))  # reads have no time limit: not searches
        assert read.status_code == 200 and seconds < FAST


# ---- the store itself: defaults without settings, and the time limit on every query --------------

#: Runs `work(store)` on a `FhirStore` built with nothing but its database; options go to the client.
StoreRunner = Callable[..., Any]


@pytest.fixture
def bare_store(mongo_uri: str) -> Iterator[StoreRunner]:
    """A store as tests and commands may build it: no settings, so the store's own defaults."""
    name = f"test_r17_{uuid.uuid4().hex[:12]}"

    def run(work: Callable[[FhirStore], Any], **options: Any) -> Any:
        async def go() -> Any:
            client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True, **options)
            store = FhirStore(client[name])
            try:
                await store.ensure_indexes()
                return await work(store)
            finally:
                await store.close()
                await client.close()
        return run_async(go)

    yield run
    MongoClient(mongo_uri).drop_database(name)


def test_a_store_without_settings_has_the_default_limits(bare_store: StoreRunner) -> None:
    async def write(store: FhirStore) -> StoreError:
        with pytest.raises(StoreError) as refused_:
            await store.create({"resourceType": "Patient", "name": [{"family": "x" * 4097}]})
        await store.create({"resourceType": "Patient", "name": [{"family": "x" * 4096}]})
        return refused_.value

    error = bare_store(write)
    assert error.status == 413 and error.issues[0].expression == ("Patient.name[0].family",)


def test_import_rejects_an_oversized_value_and_keeps_the_rest(bare_store: StoreRunner, tmp_path: Path) -> None:
    lines = [{"resourceType": "Patient", "id": "ok", "name": [{"family": "Lê"}]},
             {"resourceType": "Patient", "id": "huge", "name": [{"family": "x" * 3_000_000}]}]
    (tmp_path / "Patient.ndjson").write_text("\n".join(json.dumps(line) for line in lines) + "\n", encoding="utf-8")

    async def load(store: FhirStore) -> Any:
        summary = await BulkImporter(store).run([tmp_path])
        return summary, [v.id async for v in store.iter_current("Patient")]

    summary, ids = bare_store(load)
    assert ids == ["ok"] and summary.created == 1
    assert [r.id for r in summary.rejected] == ["huge"]
    assert "Patient.name[0].family is 3,000,000 characters long" in summary.rejected[0].reason


class Aggregations(monitoring.CommandListener):
    """The `maxTimeMS` of every aggregate command sent (None when it has none)."""

    def __init__(self) -> None:
        self.sent: list[int | None] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "aggregate":
            self.sent.append(event.command.get("maxTimeMS"))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def test_every_query_of_a_search_carries_the_time_limit_but_an_exports(bare_store: StoreRunner) -> None:
    """Stages of chains and `_has`, the page, the count, includes, `$everything`, conditional criteria: each
    aggregation asks the database to stop after 10 s (the default); an export's `_typeFilter` does not."""
    listener = Aggregations()

    async def searches(store: FhirStore) -> tuple[list[int | None], list[int | None]]:
        gp = (await store.create({"resourceType": "Practitioner", "name": [{"family": "Bác sĩ"}]})).version.id
        pid = (await store.create({"resourceType": "Patient", "name": [{"family": "Lê"}],
                                   "generalPractitioner": [{"reference": f"Practitioner/{gp}"}]})).version.id
        await store.create({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                            "subject": {"reference": f"Patient/{pid}"}})
        listener.sent.clear()
        await store.search("Patient", [("general-practitioner:Practitioner.name", "bac"), ("_total", "accurate"),
                                       ("_include", "Patient:general-practitioner"),
                                       ("_revinclude", "Observation:subject"),
                                       ("_has:Observation:patient:status", "final")])
        await store.search("Patient", [("_summary", "count")])
        await store.everything(pid)
        await store.find("Patient", "family=Lê")
        limited = list(listener.sent)
        listener.sent.clear()
        assert await store.ids_matching("Patient", "general-practitioner:Practitioner.name=bac") == {pid}
        return limited, list(listener.sent)

    limited, export = bare_store(searches, event_listeners=[listener])
    assert len(limited) >= 9 and set(limited) == {10_000}, limited
    assert export and set(export) == {None}, export


def test_secantusdb_stops_an_aggregation_at_its_max_time_ms(bare_store: StoreRunner) -> None:
    """The embedded server honours `maxTimeMS` as MongoDB does (ExecutionTimeout, code 50), the experiment behind
    relying on the database, not the client, to stop a search. (It stops a scan late: past the first part of it.)"""
    async def experiment(store: FhirStore) -> int:
        scratch = store.db["r17_scratch"]  # no indexes: quick to fill
        await scratch.insert_many([{"_id": i, "v": "a" * 50} for i in range(2000)])
        with pytest.raises(ExecutionTimeout) as stopped:
            await (await scratch.aggregate([{"$match": {"v": {"$regex": "z"}}}, {"$count": "n"}],
                                           maxTimeMS=1)).to_list()
        return int(stopped.value.code or 0)

    assert bare_store(experiment) == 50
