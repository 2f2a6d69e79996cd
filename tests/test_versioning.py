"""If-Match: no lost update when two terminals edit the same record at once."""

from __future__ import annotations

import threading

import httpx

JSON = {"Content-Type": "application/fhir+json"}


def test_stale_if_match_is_412(fhir: httpx.Client) -> None:
    created = fhir.post("/Patient", json={"resourceType": "Patient", "gender": "male"}, headers=JSON).json()
    rid = created["id"]
    ok = fhir.put(f"/Patient/{rid}", json={**created, "gender": "female"}, headers={**JSON, "If-Match": 'W/"1"'})
    assert ok.status_code == 200
    stale = fhir.put(f"/Patient/{rid}", json={**created, "gender": "other"}, headers={**JSON, "If-Match": 'W/"1"'})
    assert stale.status_code == 412
    assert stale.json()["issue"][0]["code"] == "conflict"
    assert fhir.get(f"/Patient/{rid}").json()["gender"] == "female"
    # delete and patch honour If-Match too
    assert fhir.delete(f"/Patient/{rid}", headers={"If-Match": 'W/"1"'}).status_code == 412
    patch = [{"op": "replace", "path": "/gender", "value": "unknown"}]
    assert fhir.patch(f"/Patient/{rid}", json=patch,
                      headers={"Content-Type": "application/json-patch+json", "If-Match": 'W/"1"'}).status_code == 412
    assert fhir.patch(f"/Patient/{rid}", json=patch,
                      headers={"Content-Type": "application/json-patch+json", "If-Match": 'W/"2"'}).status_code == 200


def test_concurrent_if_match_exactly_one_wins(fhir: httpx.Client) -> None:
    created = fhir.post("/Patient", json={"resourceType": "Patient", "gender": "male"}, headers=JSON).json()
    rid = created["id"]
    barrier = threading.Barrier(8)
    statuses: list[int] = []
    lock = threading.Lock()

    def terminal(n: int) -> None:
        with httpx.Client(base_url=str(fhir.base_url), timeout=60, headers=fhir.headers) as client:
            body = {**created, "name": [{"text": f"terminal {n}"}]}
            barrier.wait()
            r = client.put(f"/Patient/{rid}", json=body, headers={**JSON, "If-Match": 'W/"1"'})
            with lock:
                statuses.append(r.status_code)

    threads = [threading.Thread(target=terminal, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200] + [412] * 7
    current = fhir.get(f"/Patient/{rid}").json()
    assert current["meta"]["versionId"] == "2"
    history = fhir.get(f"/Patient/{rid}/_history").json()["entry"]
    assert len(history) == 2
