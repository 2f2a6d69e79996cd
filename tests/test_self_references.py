"""References written with this server's own base URL are found like relative ones; other servers' stay as written."""

from __future__ import annotations

import uuid

import httpx

FHIR_JSON = {"Content-Type": "application/fhir+json"}
ELSEWHERE = "http://benhvien-tinh.example.vn/fhir"


def test_absolute_references_to_this_server_are_searched_and_included(fhir: httpx.Client) -> None:
    base = str(fhir.base_url).rstrip("/")
    tag = uuid.uuid4().hex[:8]
    pid = fhir.post("/Patient", json={"resourceType": "Patient", "name": [{"family": "Trần", "given": [tag]}]},
                    headers=FHIR_JSON).json()["id"]
    mine = {"resourceType": "Observation", "status": "final", "code": {"text": f"mine-{tag}"},
            "subject": {"reference": f"{base}/Patient/{pid}"}}
    created = fhir.post("/Observation", json=mine, headers=FHIR_JSON)
    assert created.status_code == 201, created.text
    assert created.json()["subject"]["reference"] == f"Patient/{pid}"  # kept relative, as this server's own

    found = fhir.get("/Observation", params={"subject": f"Patient/{pid}"}).json()
    assert [e["resource"]["code"]["text"] for e in found["entry"]] == [f"mine-{tag}"]
    by_url = fhir.get("/Observation", params={"subject": f"{base}/Patient/{pid}"}).json()
    assert len(by_url["entry"]) == 1
    included = fhir.get("/Observation", params={"code:text": f"mine-{tag}",
                                                "_include": "Observation:subject"}).json()
    assert {e["search"]["mode"]: e["resource"]["resourceType"] for e in included["entry"]} == \
        {"match": "Observation", "include": "Patient"}
    chart = fhir.get(f"/Patient/{pid}/$everything").json()
    assert f"mine-{tag}" in {(e["resource"].get("code") or {}).get("text") for e in chart["entry"]}


def test_absolute_references_in_a_transaction_are_made_relative(fhir: httpx.Client) -> None:
    base = str(fhir.base_url).rstrip("/")
    tag = uuid.uuid4().hex[:8]
    pid = fhir.post("/Patient", json={"resourceType": "Patient", "name": [{"family": "Lý", "given": [tag]}]},
                    headers=FHIR_JSON).json()["id"]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Encounter", "status": "finished",
                      "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                      "subject": {"reference": f"{base}/Patient/{pid}"}},
         "request": {"method": "POST", "url": "Encounter"}}]}
    assert fhir.post("", json=bundle, headers=FHIR_JSON).status_code == 200
    found = fhir.get("/Encounter", params={"patient": pid}).json()
    assert [e["resource"]["subject"]["reference"] for e in found["entry"]] == [f"Patient/{pid}"]


def test_references_to_other_servers_stay_absolute_and_are_searchable_as_written(fhir: httpx.Client) -> None:
    tag = uuid.uuid4().hex[:8]
    theirs = {"resourceType": "Observation", "status": "final", "code": {"text": f"theirs-{tag}"},
              "subject": {"reference": f"{ELSEWHERE}/Patient/{tag}"}}
    created = fhir.post("/Observation", json=theirs, headers=FHIR_JSON).json()
    assert created["subject"]["reference"] == f"{ELSEWHERE}/Patient/{tag}"
    found = fhir.get("/Observation", params={"subject": f"{ELSEWHERE}/Patient/{tag}"}).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [created["id"]]
    assert "entry" not in fhir.get("/Observation", params={"subject": f"Patient/{tag}"}).json()
