"""Conditional create (If-None-Exist), conditional update and conditional delete by identifier."""

from __future__ import annotations

import threading
from urllib.parse import urlencode

import httpx

from tests.conftest import unique

JSON = {"Content-Type": "application/fhir+json"}
CCCD = "http://fhir.hl7.org.vn/core/sid/cccd"


def patient(number: str, **extra: object) -> dict[str, object]:
    return {"resourceType": "Patient", "identifier": [{"system": CCCD, "value": number}], **extra}


def test_if_none_exist_creates_once(fhir: httpx.Client) -> None:
    number = unique("089")
    headers = {**JSON, "If-None-Exist": f"identifier={CCCD}|{number}"}
    first = fhir.post("/Patient", json=patient(number), headers=headers)
    assert first.status_code == 201
    second = fhir.post("/Patient", json=patient(number, gender="male"), headers=headers)
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    assert "gender" not in second.json()


def test_if_none_exist_matches_value_only_and_system_only(fhir: httpx.Client) -> None:
    number = unique("089")
    created = fhir.post("/Patient", json=patient(number), headers=JSON).json()
    for criteria in (f"identifier={number}", f"identifier={CCCD}|{number}"):
        r = fhir.post("/Patient", json=patient(number), headers={**JSON, "If-None-Exist": criteria})
        assert r.status_code == 200
        assert r.json()["id"] == created["id"]
    other_system = fhir.post("/Patient", json=patient(number),
                             headers={**JSON, "If-None-Exist": f"identifier=urn:other|{number}"})
    assert other_system.status_code == 201


def test_if_none_exist_with_several_matches_is_412(fhir: httpx.Client) -> None:
    number = unique("089")
    for _ in range(3):
        fhir.post("/Patient", json=patient(number), headers=JSON)
    r = fhir.post("/Patient", json=patient(number), headers={**JSON, "If-None-Exist": f"identifier={number}"})
    assert r.status_code == 412
    issue = r.json()["issue"][0]
    assert issue["code"] == "multiple-matches"
    assert "match more than one Patient" in issue["diagnostics"]  # not a count that may be wrong
    url = f"/Patient?identifier={number}"
    for refused in (fhir.put(url, json=patient(number), headers=JSON), fhir.delete(url)):
        assert refused.status_code == 412
        assert "match more than one Patient" in refused.json()["issue"][0]["diagnostics"]


def test_unknown_criteria_are_refused_not_ignored(fhir: httpx.Client) -> None:
    """Ignoring part of a conditional write's criteria could update the wrong record."""
    r = fhir.post("/Patient", json=patient("1"), headers={**JSON, "If-None-Exist": "nickname=bo"})
    assert r.status_code == 400
    assert "nickname" in r.json()["issue"][0]["diagnostics"]


def test_any_search_works_as_criteria(fhir: httpx.Client) -> None:
    number = unique("089")
    family = unique("Lê")
    body = patient(number, name=[{"family": family, "given": ["Thị", "Hồng"]}], birthDate="1990-02-03")
    created = fhir.post("/Patient", json=body, headers=JSON).json()
    criteria = urlencode({"family": family, "birthdate": "1990-02"})  # headers are ASCII: percent-encoded
    again = fhir.post("/Patient", json=body, headers={**JSON, "If-None-Exist": criteria})
    assert again.status_code == 200
    assert again.json()["id"] == created["id"]


def test_concurrent_conditional_creates_make_one_resource(fhir: httpx.Client) -> None:
    """Retries of the same registration from several terminals must not duplicate the patient."""
    number = unique("089")
    barrier = threading.Barrier(10)
    ids: list[str] = []
    statuses: list[int] = []
    lock = threading.Lock()

    def terminal() -> None:
        with httpx.Client(base_url=str(fhir.base_url), timeout=60, headers=fhir.headers) as client:
            barrier.wait()
            r = client.post("/Patient", json=patient(number),
                            headers={**JSON, "If-None-Exist": f"identifier={CCCD}|{number}"})
            with lock:
                statuses.append(r.status_code)
                ids.append(r.json()["id"])

    threads = [threading.Thread(target=terminal) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200] * 9 + [201]
    assert len(set(ids)) == 1


def test_conditional_update(fhir: httpx.Client) -> None:
    number = unique("089")
    url = f"/Patient?identifier={CCCD}|{number}"
    created = fhir.put(url, json=patient(number, gender="male"), headers=JSON)
    assert created.status_code == 201
    rid = created.json()["id"]
    updated = fhir.put(url, json=patient(number, gender="female"), headers=JSON)
    assert updated.status_code == 200
    assert updated.json()["id"] == rid
    assert updated.json()["meta"]["versionId"] == "2"
    wrong_id = fhir.put(url, json=patient(number, id="someone-else"), headers=JSON)
    assert wrong_id.status_code == 400
    fhir.post("/Patient", json=patient(number), headers=JSON)
    assert fhir.put(url, json=patient(number), headers=JSON).status_code == 412


def test_conditional_delete(fhir: httpx.Client) -> None:
    number = unique("089")
    rid = fhir.post("/Patient", json=patient(number), headers=JSON).json()["id"]
    r = fhir.delete(f"/Patient?identifier={CCCD}|{number}")
    assert r.status_code == 200
    assert fhir.get(f"/Patient/{rid}").status_code == 410
    nothing = fhir.delete(f"/Patient?identifier={CCCD}|{number}")
    assert nothing.status_code == 200
    assert "nothing to delete" in nothing.json()["issue"][0]["diagnostics"]
    a = fhir.post("/Patient", json=patient(number), headers=JSON).json()["id"]
    b = fhir.post("/Patient", json=patient(number), headers=JSON).json()["id"]
    assert fhir.delete(f"/Patient?identifier={number}").status_code == 412
    assert fhir.get(f"/Patient/{a}").status_code == 200
    assert fhir.get(f"/Patient/{b}").status_code == 200
