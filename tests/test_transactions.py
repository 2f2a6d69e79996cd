"""Batch and transaction Bundles: spec order, reference rewriting, conditional entries, atomicity, limits."""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer, make_settings, unique

JSON = {"Content-Type": "application/fhir+json"}
CCCD = "http://fhir.hl7.org.vn/core/sid/cccd"


def urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def bundle(kind: str, *entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def post(resource: dict[str, Any], full_url: str | None = None, if_none_exist: str | None = None) -> dict[str, Any]:
    request: dict[str, Any] = {"method": "POST", "url": resource["resourceType"]}
    if if_none_exist:
        request["ifNoneExist"] = if_none_exist
    return {"fullUrl": full_url or urn(), "resource": resource, "request": request}


def patient(number: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "identifier": [{"system": CCCD, "value": number}], **extra}


def send(fhir: httpx.Client, body: dict[str, Any], **headers: str) -> httpx.Response:
    return fhir.post("", json=body, headers={**JSON, **headers})


def search_ids(fhir: httpx.Client, path: str, **params: str) -> list[str]:
    return [e["resource"]["id"] for e in fhir.get(path, params=params).json().get("entry", [])
            if e["search"]["mode"] == "match"]


def test_references_are_rewritten_everywhere(fhir: httpx.Client) -> None:
    p_url, e_url, org_url = urn(), urn(), "urn:oid:1.2.840.10008.99." + str(uuid.uuid4().int % 10**9)
    tag = unique("tx")
    body = bundle(
        "transaction",
        post({"resourceType": "Observation", "status": "final", "code": {"text": tag},
              "subject": {"reference": p_url}, "encounter": {"reference": e_url},
              "performer": [{"reference": org_url}],
              "extension": [{"url": "http://example.org/x", "valueReference": {"reference": p_url}}]}),
        post({"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
              "subject": {"reference": p_url}, "serviceProvider": {"reference": org_url}}, e_url),
        post(patient(unique("089"), managingOrganization={"reference": org_url}), p_url),
        post({"resourceType": "Organization", "name": "Trạm Y tế xã"}, org_url),
    )
    r = send(fhir, body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["type"] == "transaction-response"
    locations = [e["response"]["location"] for e in out["entry"]]
    assert all(e["response"]["status"] == "201 Created" for e in out["entry"])
    obs_key, enc_key, pat_key, org_key = (loc.rsplit("/_history", 1)[0] for loc in locations)
    obs = fhir.get(f"/{obs_key}").json()
    assert obs["subject"]["reference"] == pat_key
    assert obs["encounter"]["reference"] == enc_key
    assert obs["performer"][0]["reference"] == org_key
    assert obs["extension"][0]["valueReference"]["reference"] == pat_key
    assert fhir.get(f"/{enc_key}").json()["serviceProvider"]["reference"] == org_key
    assert fhir.get(f"/{pat_key}").json()["managingOrganization"]["reference"] == org_key


def test_processing_order_delete_post_put_get(fhir: httpx.Client) -> None:
    number = unique("089")
    existing = fhir.post("/Patient", json=patient(number, gender="male"), headers=JSON).json()
    new_number = unique("089")
    body = bundle(
        "transaction",
        # listed first, answered last: it sees the patient the POST below creates
        {"request": {"method": "GET", "url": f"Patient?identifier={CCCD}|{new_number}"}},
        post(patient(new_number)),
        # listed after the POST, run before it: nothing of the new patient exists yet to delete
        {"request": {"method": "DELETE", "url": f"Patient?identifier={CCCD}|{new_number}"}},
        {"resource": {**existing, "gender": "female"},
         "request": {"method": "PUT", "url": f"Patient/{existing['id']}"}},
    )
    r = send(fhir, body)
    assert r.status_code == 200, r.text
    entries = r.json()["entry"]
    found = entries[0]["resource"]
    assert found["resourceType"] == "Bundle" and found["total"] == 1
    assert entries[1]["response"]["status"] == "201 Created"
    assert entries[2]["response"]["status"] == "204 No Content"
    assert entries[3]["response"]["status"] == "200 OK"
    assert len(search_ids(fhir, "/Patient", identifier=f"{CCCD}|{new_number}")) == 1
    assert fhir.get(f"/Patient/{existing['id']}").json()["gender"] == "female"


def test_conditional_create_and_conditional_reference(fhir: httpx.Client) -> None:
    number = unique("089")
    first = fhir.post("/Patient", json=patient(number), headers=JSON).json()
    p_url = urn()
    body = bundle(
        "transaction",
        post(patient(number), p_url, if_none_exist=f"identifier={CCCD}|{number}"),
        post({"resourceType": "Condition", "subject": {"reference": p_url}, "code": {"text": "a"}}),
        post({"resourceType": "Condition", "subject": {"reference": f"Patient?identifier={CCCD}|{number}"},
              "code": {"text": "b"}}),
    )
    r = send(fhir, body)
    assert r.status_code == 200, r.text
    entries = r.json()["entry"]
    assert entries[0]["response"]["status"] == "200 OK"
    assert entries[0]["response"]["location"].startswith(f"Patient/{first['id']}/")
    for entry in entries[1:]:
        key = entry["response"]["location"].rsplit("/_history", 1)[0]
        assert fhir.get(f"/{key}").json()["subject"]["reference"] == f"Patient/{first['id']}"
    assert len(search_ids(fhir, "/Patient", identifier=number)) == 1


def test_unresolvable_conditional_reference_fails_the_transaction(fhir: httpx.Client) -> None:
    tag = unique("tx")
    body = bundle("transaction",
                  post({"resourceType": "Basic", "code": {"text": tag}}),
                  post({"resourceType": "Condition", "subject": {"reference": "Patient?identifier=nobody-has-this"},
                        "code": {"text": tag}}))
    r = send(fhir, body)
    assert r.status_code == 404
    assert "Bundle.entry[1]" in r.json()["issue"][0]["diagnostics"]
    assert search_ids(fhir, "/Basic", code=tag) == []


def test_failing_entry_rolls_back_everything(fhir: httpx.Client) -> None:
    """The 40th of 50 entries is invalid: none of the other 49 may be visible afterwards."""
    tag = unique("rollback")
    entries = [post({"resourceType": "Basic", "code": {"text": tag}}) for _ in range(50)]
    entries[39] = post({"resourceType": "Patient", "gender": "robot", "name": [{"text": tag}]})
    r = send(fhir, bundle("transaction", *entries))
    assert r.status_code == 400
    issue = r.json()["issue"][0]
    assert "Bundle.entry[39]" in issue["diagnostics"]
    assert issue["expression"][0] == "Bundle.entry[39]"
    assert search_ids(fhir, "/Basic", **{"code:text": tag}) == []
    assert search_ids(fhir, "/Patient", name=tag) == []
    assert fhir.get("/Basic", params={"code:text": tag, "_total": "accurate"}).json()["total"] == 0


def test_failed_update_rolls_back_earlier_writes(fhir: httpx.Client) -> None:
    existing = fhir.post("/Patient", json=patient(unique("089")), headers=JSON).json()
    tag = unique("tx")
    body = bundle("transaction",
                  post({"resourceType": "Basic", "code": {"text": tag}}),
                  {"resource": {**existing, "gender": "male"},
                   "request": {"method": "PUT", "url": f"Patient/{existing['id']}", "ifMatch": 'W/"7"'}})
    r = send(fhir, body)
    assert r.status_code == 412
    assert search_ids(fhir, "/Basic", **{"code:text": tag}) == []
    assert fhir.get(f"/Patient/{existing['id']}").json()["meta"]["versionId"] == "1"


def test_concurrent_transactions_create_one_patient(fhir: httpx.Client) -> None:
    """Terminals retrying the same registration as transactions at once: exactly one patient is created."""
    number = unique("089")
    barrier = threading.Barrier(6)
    statuses: list[int] = []
    lock = threading.Lock()

    def terminal(n: int) -> None:
        p_url = urn()
        body = bundle("transaction",
                      post(patient(number), p_url, if_none_exist=f"identifier={CCCD}|{number}"),
                      post({"resourceType": "Encounter", "status": "arrived", "class": {"code": "AMB"},
                            "subject": {"reference": p_url}}))
        with httpx.Client(base_url=str(fhir.base_url), timeout=120, headers=fhir.headers) as client:
            barrier.wait()
            r = send(client, body)
            with lock:
                statuses.append(r.status_code)

    threads = [threading.Thread(target=terminal, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 6
    patients = search_ids(fhir, "/Patient", identifier=f"{CCCD}|{number}")
    assert len(patients) == 1
    encounters = search_ids(fhir, "/Encounter", subject=f"Patient/{patients[0]}", _count="50")
    assert len(encounters) == 6


def test_concurrent_conflicting_updates_one_wins(fhir: httpx.Client) -> None:
    existing = fhir.post("/Patient", json=patient(unique("089")), headers=JSON).json()
    barrier = threading.Barrier(2)
    statuses: list[int] = []

    def terminal(gender: str) -> None:
        tag = unique("tx")
        body = bundle("transaction",
                      post({"resourceType": "Basic", "code": {"text": tag}}),
                      {"resource": {**existing, "gender": gender},
                       "request": {"method": "PUT", "url": f"Patient/{existing['id']}", "ifMatch": 'W/"1"'}})
        with httpx.Client(base_url=str(fhir.base_url), timeout=120, headers=fhir.headers) as client:
            barrier.wait()
            statuses.append(send(client, body).status_code)

    threads = [threading.Thread(target=terminal, args=(g,)) for g in ("male", "female")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200, 412]
    assert fhir.get(f"/Patient/{existing['id']}").json()["meta"]["versionId"] == "2"


def test_batch_entries_are_independent(fhir: httpx.Client) -> None:
    existing = fhir.post("/Patient", json=patient(unique("089")), headers=JSON).json()
    patch = base64.b64encode(json.dumps([{"op": "add", "path": "/gender", "value": "other"}]).encode()).decode()
    body = bundle(
        "batch",
        post({"resourceType": "Basic", "code": {"text": "ok"}}),
        post({"resourceType": "Patient", "gender": "robot"}),
        {"request": {"method": "GET", "url": f"Patient/{existing['id']}"}},
        {"request": {"method": "GET", "url": "Patient/does-not-exist"}},
        {"resource": {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": patch},
         "request": {"method": "PATCH", "url": f"Patient/{existing['id']}"}},
        {"request": {"method": "GET", "url": f"Patient/{existing['id']}/_history/1"}},
    )
    r = send(fhir, body)
    assert r.status_code == 200, r.text
    entries = r.json()["entry"]
    assert r.json()["type"] == "batch-response"
    assert [e["response"]["status"] for e in entries] == \
        ["201 Created", "400 Bad Request", "200 OK", "404 Not Found", "200 OK", "200 OK"]
    assert entries[1]["response"]["outcome"]["issue"][0]["expression"] == ["Patient.gender"]
    assert entries[2]["resource"]["id"] == existing["id"]
    assert fhir.get(f"/Patient/{existing['id']}").json()["gender"] == "other"


def test_conditional_reads_in_a_batch(fhir: httpx.Client) -> None:
    created = fhir.post("/Patient", json=patient(unique("089")), headers=JSON).json()
    url = f"Patient/{created['id']}"
    body = bundle("batch",
                  {"request": {"method": "GET", "url": url, "ifNoneMatch": 'W/"1"'}},
                  {"request": {"method": "GET", "url": url, "ifNoneMatch": 'W/"9"'}},
                  {"request": {"method": "GET", "url": url, "ifModifiedSince": "2999-01-01T00:00:00Z"}},
                  {"request": {"method": "GET", "url": url, "ifModifiedSince": "2000-01-01T00:00:00Z"}})
    entries = send(fhir, body).json()["entry"]
    assert [e["response"]["status"] for e in entries] == ["304 Not Modified", "200 OK", "304 Not Modified", "200 OK"]
    assert "resource" not in entries[0] and entries[1]["resource"]["id"] == created["id"]


def test_prefer_representation_returns_resources(fhir: httpx.Client) -> None:
    body = bundle("transaction", post({"resourceType": "Basic", "code": {"text": "x"}}))
    minimal = send(fhir, body).json()["entry"][0]
    assert "resource" not in minimal
    full = send(fhir, body, Prefer="return=representation").json()["entry"][0]
    assert full["resource"]["resourceType"] == "Basic"


@pytest.mark.parametrize("body", [
    {"resourceType": "Bundle", "type": "collection", "entry": []},
    {"resourceType": "Patient"},
    {"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": {"resourceType": "Basic"}}]},
    {"resourceType": "Bundle", "type": "transaction", "entry": [{"request": {"method": "FETCH", "url": "Basic"}}]},
    {"resourceType": "Bundle", "type": "transaction", "entry": [{"request": {"method": "POST", "url": "Basic"}}]},
    {"resourceType": "Bundle", "type": "transaction",
     "entry": [post({"resourceType": "Basic", "code": {"text": "a"}}, "urn:uuid:same"),
               post({"resourceType": "Basic", "code": {"text": "b"}}, "urn:uuid:same")]},
])
def test_malformed_bundles_are_400(fhir: httpx.Client, body: dict[str, Any]) -> None:
    r = send(fhir, body)
    assert r.status_code == 400, r.text
    assert r.json()["resourceType"] == "OperationOutcome"


@pytest.fixture(scope="module")
def small_server(mongo_uri: str) -> Iterator[httpx.Client]:
    with LiveServer(make_settings(mongo_uri, max_bundle_entries=10, max_body_bytes=20_000)) as server, \
            server.client() as client:
        yield client


def test_limits(small_server: httpx.Client) -> None:
    too_many = bundle("transaction", *[post({"resourceType": "Basic", "code": {"text": "x"}}) for _ in range(11)])
    r = send(small_server, too_many)
    assert r.status_code == 413
    assert "at most 10" in r.json()["issue"][0]["diagnostics"]
    too_big = bundle("transaction", post({"resourceType": "Basic", "code": {"text": "x" * 30_000}}))
    assert send(small_server, too_big).status_code == 413
    assert small_server.get("/Basic").json().get("entry") is None


def test_entries_naming_a_version_that_is_no_number_answer_404_not_500(fhir: httpx.Client) -> None:
    pid = fhir.post("/Patient", json={"resourceType": "Patient"}, headers=JSON).json()["id"]
    for kind in ("batch", "transaction"):
        for version in ("²", "99999999999999999999999", "x"):
            answer = fhir.post("/", headers=JSON, json={"resourceType": "Bundle", "type": kind, "entry": [
                {"request": {"method": "GET", "url": f"Patient/{pid}/_history/{version}"}}]})
            if kind == "batch":
                assert answer.status_code == 200, answer.text
                entry = answer.json()["entry"][0]["response"]
                assert entry["status"].startswith("404") and "whole numbers" in json.dumps(entry["outcome"])
            else:
                assert answer.status_code == 404, answer.text
                assert "whole numbers" in answer.text
    assert fhir.get(f"/Patient/{pid}/_history/%C2%B2").status_code == 404
