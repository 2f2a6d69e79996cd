"""_history at instance, type and system level: order, request/response entries, _since, _count, paging."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import httpx

from tests.conftest import unique

JSON = {"Content-Type": "application/fhir+json"}


def test_instance_history_newest_first_with_deletion(fhir: httpx.Client) -> None:
    rid = unique()
    fhir.put(f"/Basic/{rid}", json={"resourceType": "Basic", "id": rid, "code": {"text": "v1"}}, headers=JSON)
    fhir.put(f"/Basic/{rid}", json={"resourceType": "Basic", "id": rid, "code": {"text": "v2"}}, headers=JSON)
    fhir.delete(f"/Basic/{rid}")
    bundle = fhir.get(f"/Basic/{rid}/_history").json()
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "history"
    entries = bundle["entry"]
    assert [e["response"]["etag"] for e in entries] == ['W/"3"', 'W/"2"', 'W/"1"']
    assert [e["request"]["method"] for e in entries] == ["DELETE", "PUT", "POST"]
    assert entries[0]["request"]["url"] == f"Basic/{rid}"
    assert "resource" not in entries[0]
    assert entries[1]["resource"]["code"]["text"] == "v2"
    assert entries[2]["resource"]["code"]["text"] == "v1"
    assert entries[2]["response"]["status"] == "201 Created"
    assert all(e["fullUrl"].endswith(f"/fhir/Basic/{rid}") for e in entries)
    assert all(e["response"]["lastModified"].endswith("Z") for e in entries)


def test_instance_history_of_unknown_is_404(fhir: httpx.Client) -> None:
    assert fhir.get(f"/Basic/{unique()}/_history").status_code == 404


def test_type_and_system_history_with_since(fhir: httpx.Client) -> None:
    since = datetime.now(UTC).isoformat()
    tag = unique("tag")
    ids = []
    for i in range(3):
        r = fhir.post("/Basic", json={"resourceType": "Basic", "code": {"text": f"{tag}-{i}"}}, headers=JSON)
        ids.append(r.json()["id"])
    fhir.post("/Patient", json={"resourceType": "Patient", "name": [{"text": tag}]}, headers=JSON)

    typed = fhir.get("/Basic/_history", params={"_since": since}).json()
    typed_ids = [e["resource"]["id"] for e in typed["entry"] if e["resource"]["code"]["text"].startswith(tag)]
    assert typed_ids == list(reversed(ids))
    assert all(e["resource"]["resourceType"] == "Basic" for e in typed["entry"])

    system = fhir.get("/_history", params={"_since": since}).json()
    types = {e["resource"]["resourceType"] for e in system["entry"]}
    assert {"Basic", "Patient"} <= types


def test_paging_follows_next_links_without_gaps_or_repeats(fhir: httpx.Client) -> None:
    """Pages stay correct while new versions are written between page requests."""
    since = datetime.now(UTC).isoformat()
    first = [fhir.post("/Basic", json={"resourceType": "Basic", "code": {"text": "p"}}, headers=JSON).json()["id"]
             for _ in range(12)]
    seen: list[str] = []
    base = str(fhir.base_url).rstrip("/")
    url: str | None = str(httpx.URL(f"{base}/Basic/_history", params={"_since": since, "_count": 5}))
    pages = 0
    while url:
        bundle = fhir.get(url).json()
        assert bundle["resourceType"] == "Bundle", bundle
        seen += [e["resource"]["id"] for e in bundle["entry"]]
        pages += 1
        # a terminal writes something new while we page
        fhir.post("/Basic", json={"resourceType": "Basic", "code": {"text": "late"}}, headers=JSON)
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
    assert pages >= 3
    assert len(seen) == len(set(seen)), "a version was repeated"
    assert set(first) <= set(seen), "a version was skipped"


def test_count_caps_page(fhir: httpx.Client) -> None:
    for _ in range(3):
        fhir.post("/Basic", json={"resourceType": "Basic", "code": {"text": "c"}}, headers=JSON)
    bundle = fhir.get("/Basic/_history", params={"_count": 2}).json()
    assert len(bundle["entry"]) == 2
    assert any(link["relation"] == "next" for link in bundle["link"])
    assert fhir.get("/Basic/_history", params={"_count": 0}).json()["entry"] == []


def test_concurrent_writers_leave_complete_history(fhir: httpx.Client, live_server: object) -> None:
    """Ten terminals update one record without If-Match: every write becomes its own version."""
    rid = unique()
    fhir.put(f"/Basic/{rid}", json={"resourceType": "Basic", "id": rid, "code": {"text": "0"}}, headers=JSON)
    errors: list[str] = []

    def writer(n: int) -> None:
        with httpx.Client(base_url=str(fhir.base_url), timeout=60, headers=fhir.headers) as client:
            r = client.put(f"/Basic/{rid}", json={"resourceType": "Basic", "id": rid, "code": {"text": str(n)}},
                           headers=JSON)
            if r.status_code != 200:
                errors.append(r.text)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(1, 11)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    entries = fhir.get(f"/Basic/{rid}/_history").json()["entry"]
    assert [e["response"]["etag"] for e in entries] == [f'W/"{v}"' for v in range(11, 0, -1)]
    texts = sorted(e["resource"]["code"]["text"] for e in entries)
    assert texts == sorted(str(n) for n in range(11))
