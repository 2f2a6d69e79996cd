"""Search over real Synthea records; expected answers are computed from the source files independently."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from tests.synthea import bundle_file, resources

JSON = {"Content-Type": "application/fhir+json"}
VIETNAM = timezone(timedelta(hours=7))


@pytest.fixture(scope="module")
def data() -> dict[str, list[dict[str, Any]]]:
    loaded: dict[str, list[dict[str, Any]]] = {}
    for prefix in ("Alfreda", "Gustavo", "Chet"):
        for resource in resources(bundle_file(prefix)):
            loaded.setdefault(resource["resourceType"], []).append(resource)
    return loaded


@pytest.fixture(scope="module")
def fhir(own_fhir: httpx.Client, data: dict[str, list[dict[str, Any]]]) -> Iterator[httpx.Client]:
    for items in data.values():
        for resource in items:
            r = own_fhir.put(f"/{resource['resourceType']}/{resource['id']}", json=resource, headers=JSON)
            assert r.status_code in (200, 201), r.text
    yield own_fhir


def patient_id(data: dict[str, list[dict[str, Any]]], given: str) -> str:
    return next(p["id"] for p in data["Patient"] if p["name"][0]["given"][0] == given)


def all_ids(fhir: httpx.Client, path: str, params: dict[str, Any]) -> list[str]:
    """Every match, following next links."""
    out: list[str] = []
    response = fhir.get(path, params=params)
    while True:
        assert response.status_code == 200, response.text
        bundle = response.json()
        out += [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]
        nxt = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
        if nxt is None:
            return out
        response = fhir.get(nxt)


def test_patient_lookups(fhir: httpx.Client, data: dict[str, list[dict[str, Any]]]) -> None:
    alfreda = patient_id(data, "Alfreda")
    assert all_ids(fhir, "/Patient", {"name": "alfreda"}) == [alfreda]
    assert all_ids(fhir, "/Patient", {"family": "WYMAN"}) == [alfreda]
    assert all_ids(fhir, "/Patient", {"birthdate": "1980-10-28"}) == [alfreda]
    assert all_ids(fhir, "/Patient", {"name": "mejia"}) == [patient_id(data, "Gustavo")]
    females = {p["id"] for p in data["Patient"] if p["gender"] == "female"}
    assert set(all_ids(fhir, "/Patient", {"gender": "female"})) == females
    deceased = {p["id"] for p in data["Patient"] if p.get("deceasedDateTime")}
    assert set(all_ids(fhir, "/Patient", {"deceased": "true"})) == deceased


def test_chart_by_patient_and_code(fhir: httpx.Client, data: dict[str, list[dict[str, Any]]]) -> None:
    pid = patient_id(data, "Alfreda")
    mine = [o for o in data["Observation"] if o["subject"]["reference"] == f"Patient/{pid}"]
    assert sorted(all_ids(fhir, "/Observation", {"patient": pid, "_count": 100})) == sorted(o["id"] for o in mine)
    code = mine[0]["code"]["coding"][0]
    with_code = {o["id"] for o in mine if any(c["code"] == code["code"] for c in o["code"]["coding"])}
    assert set(all_ids(fhir, "/Observation", {"patient": f"Patient/{pid}",
                                              "code": f"{code['system']}|{code['code']}"})) == with_code
    total = fhir.get("/Observation", params={"patient": pid, "_total": "accurate", "_count": 1}).json()["total"]
    assert total == len(mine)


def test_encounters_by_date(fhir: httpx.Client, data: dict[str, list[dict[str, Any]]]) -> None:
    pid = patient_id(data, "Alfreda")
    cutoff = datetime(2016, 1, 1, tzinfo=VIETNAM)
    expected = set()
    for enc in data["Encounter"]:
        if enc["subject"]["reference"] != f"Patient/{pid}":
            continue
        end = datetime.fromisoformat(enc["period"].get("end") or enc["period"]["start"])
        if end > cutoff:
            expected.add(enc["id"])
    assert set(all_ids(fhir, "/Encounter", {"patient": pid, "date": "ge2016-01-01"})) == expected


def test_sorted_newest_first(fhir: httpx.Client, data: dict[str, list[dict[str, Any]]]) -> None:
    pid = patient_id(data, "Chet")
    found = all_ids(fhir, "/Observation", {"patient": pid, "_sort": "-date", "_count": 25})
    dates = {o["id"]: datetime.fromisoformat(o["effectiveDateTime"]) for o in data["Observation"]}
    ordered = [dates[i] for i in found]
    assert ordered == sorted(ordered, reverse=True)


def test_include_and_revinclude(fhir: httpx.Client, data: dict[str, list[dict[str, Any]]]) -> None:
    pid = patient_id(data, "Gustavo")
    bundle = fhir.get("/Patient", params={"_id": pid, "_revinclude": "Condition:subject"}).json()
    included = {e["resource"]["id"] for e in bundle["entry"] if e["search"]["mode"] == "include"}
    assert included == {c["id"] for c in data["Condition"] if c["subject"]["reference"] == f"Patient/{pid}"}
    bundle = fhir.get("/Observation", params={"patient": pid, "_count": 10,
                                              "_include": "Observation:encounter"}).json()
    matches = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "match"]
    wanted = {o["encounter"]["reference"].split("/")[1] for o in matches if "encounter" in o}
    assert {e["resource"]["id"] for e in bundle["entry"] if e["search"]["mode"] == "include"} == wanted


def test_paging_while_terminals_write(fhir: httpx.Client, data: dict[str, list[dict[str, Any]]]) -> None:
    """Walk a patient's observations 7 at a time while other terminals add results: no repeats, no gaps."""
    pid = patient_id(data, "Chet")
    before = {o["id"] for o in data["Observation"] if o["subject"]["reference"] == f"Patient/{pid}"}
    stop = threading.Event()

    def terminal() -> None:
        with httpx.Client(base_url=str(fhir.base_url), timeout=60, headers=fhir.headers) as client:
            n = 0
            while not stop.is_set() and n < 200:
                n += 1
                client.post("/Observation", headers=JSON, json={
                    "resourceType": "Observation", "status": "final", "code": {"text": "late"},
                    "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": f"1990-01-{n % 28 + 1:02d}"})

    writer = threading.Thread(target=terminal)
    writer.start()
    try:
        seen = all_ids(fhir, "/Observation", {"patient": pid, "_sort": "-date", "_count": 7})
    finally:
        stop.set()
        writer.join()
    assert len(seen) == len(set(seen)), "an observation was returned twice"
    assert before <= set(seen), "an observation that existed before paging began was skipped"


def test_meta_parameters(fhir: httpx.Client, data: dict[str, list[dict[str, Any]]]) -> None:
    tagged = {p["id"] for p in data["Patient"]}
    assert set(all_ids(fhir, "/Patient", {"_tag": "https://smarthealthit.org/tags|synthea-5-2019"})) >= tagged
    assert all_ids(fhir, "/Patient", {"_tag": "https://smarthealthit.org/tags|other"}) == []
    pid = patient_id(data, "Gustavo")
    profile = "http://example.org/fhir/StructureDefinition/vn-patient"
    current = fhir.get(f"/Patient/{pid}").json()
    current["meta"] = {**current["meta"], "profile": [profile], "source": "http://bv-an-phu.example/his"}
    assert fhir.put(f"/Patient/{pid}", json=current, headers=JSON).status_code == 200
    assert all_ids(fhir, "/Patient", {"_profile": profile}) == [pid]
    assert all_ids(fhir, "/Patient", {"_source": "http://bv-an-phu.example/his"}) == [pid]
