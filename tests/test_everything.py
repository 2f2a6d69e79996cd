"""Synthea bundles posted as transactions (and batches), then Patient/$everything over them."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.conftest import SHARED_DATA

JSON = {"Content-Type": "application/fhir+json"}
PIPES = SHARED_DATA / "synthea" / "fhir-data-pipes-hiv"
SMART = SHARED_DATA / "synthea" / "smart-on-fhir"


def load(path: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def loaded(own_fhir: httpx.Client) -> Iterator[tuple[httpx.Client, dict[str, str]]]:
    """Load the fhir-data-pipes folder the way a hospital would: facilities and staff first, then patients."""
    patients: dict[str, str] = {}
    files = sorted(PIPES.glob("*.json"), key=lambda p: (not p.name.startswith(("hospital", "practitioner")), p.name))
    for path in files:
        body = load(path)
        r = own_fhir.post("", json=body, headers=JSON, timeout=600)
        assert r.status_code == 200, (path.name, r.text[:500])
        statuses = Counter(e["response"]["status"] for e in r.json()["entry"])
        assert set(statuses) <= {"200 OK", "201 Created"}, (path.name, statuses)
        if body["type"] == "transaction":
            first = r.json()["entry"][0]["response"]["location"]
            patients[path.name] = first.split("/")[1]
    yield own_fhir, patients


def test_synthea_bundles_load_completely(loaded: tuple[httpx.Client, dict[str, str]]) -> None:
    fhir, _ = loaded
    expected: Counter[str] = Counter()
    for path in PIPES.glob("*.json"):
        for entry in load(path)["entry"]:
            expected[entry["resource"]["resourceType"]] += 1
    for rtype, count in expected.items():
        total = fhir.get(f"/{rtype}", params={"_total": "accurate", "_count": 0}).json()["total"]
        assert total == count, rtype


def test_reloading_a_batch_creates_nothing_new(loaded: tuple[httpx.Client, dict[str, str]]) -> None:
    fhir, _ = loaded
    body = load(PIPES / "hospitalInformation1633536936158.json")
    r = fhir.post("", json=body, headers=JSON, timeout=600)
    assert {e["response"]["status"] for e in r.json()["entry"]} == {"200 OK"}  # every ifNoneExist matched


def test_everything_returns_the_chart_and_what_it_references(loaded: tuple[httpx.Client, dict[str, str]]) -> None:
    fhir, patients = loaded
    name = next(n for n in patients if n.startswith("Cecelia"))
    pid = patients[name]
    source = load(PIPES / name)
    bundle = fhir.get(f"/Patient/{pid}/$everything", params={"_count": 1000}).json()
    types = Counter(e["resource"]["resourceType"] for e in bundle["entry"])
    expected = Counter(e["resource"]["resourceType"] for e in source["entry"])
    for rtype, count in expected.items():
        assert types[rtype] == count, rtype
    # the practitioners, organisations and locations of the encounters come along
    assert types["Practitioner"] >= 1 and types["Organization"] >= 1 and types["Location"] >= 1
    assert bundle["type"] == "searchset"


def test_everything_paging_type_and_since(loaded: tuple[httpx.Client, dict[str, str]]) -> None:
    fhir, patients = loaded
    pid = patients[next(n for n in patients if n.startswith("Levi"))]
    whole = {e["resource"]["id"] for e in
             fhir.get(f"/Patient/{pid}/$everything", params={"_count": 1000}).json()["entry"]}
    seen: list[str] = []
    url: str | None = f"{str(fhir.base_url).rstrip('/')}/Patient/{pid}/$everything?_count=40"
    while url:
        page = fhir.get(url).json()
        seen += [e["resource"]["id"] for e in page.get("entry", [])]
        url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
    assert set(seen) == whole
    only = fhir.get(f"/Patient/{pid}/$everything", params={"_type": "Condition,Patient", "_count": 1000}).json()
    assert {e["resource"]["resourceType"] for e in only["entry"]} <= {"Condition", "Patient"}
    future = datetime.now(UTC).replace(year=datetime.now(UTC).year + 1).isoformat()
    assert fhir.get(f"/Patient/{pid}/$everything", params={"_since": future}).json().get("entry") is None
    assert fhir.get("/Patient/nobody/$everything").status_code == 404
