"""A partner hospital's client reaches only its exchange with us: the Tasks between its facility and ours.

Through the real HTTP API, signed in with client_credentials as a partner's
sync worker does. The hospital's own staff write the chart and the Tasks; the
partner may read, search, create and update only the Tasks whose owner or
requester is its Organization (by reference or by facility code), inside
Bundles too, and nothing else.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from emr.services import open_services
from security import FACILITY_SYSTEM, PARTNER_SCOPE
from tests.conftest import LiveServer, make_settings

JSON = {"Content-Type": "application/fhir+json"}
PARTNER_CODE = "89012"  # the district hospital calling us
OTHER_CODE = "89034"


@pytest.fixture(scope="module")
def server(mongo_uri: str) -> Iterator[LiveServer]:
    with LiveServer(make_settings(mongo_uri)) as live:
        yield live


def _organization(admin: httpx.Client, code: str, name: str) -> str:
    made = admin.post("/Organization", headers=JSON, json={
        "resourceType": "Organization", "name": name, "identifier": [{"system": FACILITY_SYSTEM, "value": code}]})
    assert made.status_code == 201, made.text
    return f"Organization/{made.json()['id']}"


def _task(patient: str, requester: dict[str, Any], owner: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Task", "status": "requested", "intent": "order", "for": {"reference": patient},
            "requester": requester, "owner": owner, **extra}


@pytest.fixture(scope="module")
def exchange(server: LiveServer) -> dict[str, str]:
    """Our organisation, the partner's and another hospital's; a patient; Tasks with each; a partner token."""
    with server.client() as admin:
        ours = _organization(admin, "89001", "BV Đa khoa khu vực tỉnh An Giang")
        partner = _organization(admin, PARTNER_CODE, "TTYT huyện Châu Phú")
        other = _organization(admin, OTHER_CODE, "TTYT huyện Tri Tôn")
        patient = admin.post("/Patient", headers=JSON, json={
            "resourceType": "Patient", "name": [{"family": "Lê", "given": ["Văn", "Tám"]}]}).json()["id"]
        ref = f"Patient/{patient}"
        tasks = {
            "task_to": _task(ref, {"reference": ours}, {"reference": partner}),
            "task_from": _task(ref, {"identifier": {"system": FACILITY_SYSTEM, "value": PARTNER_CODE}},
                                  {"reference": ours}),
            "task_other": _task(ref, {"reference": ours}, {"reference": other}),
        }
        ids = {}
        for name, body in tasks.items():
            made = admin.post("/Task", headers=JSON, json=body)
            assert made.status_code == 201, made.text
            ids[name] = made.json()["id"]

    async def add() -> tuple[str, str]:
        async with open_services(server.settings) as services:
            client, secret = await services.security.accounts.add_client(
                "TTYT huyện Châu Phú", PARTNER_SCOPE, facility=PARTNER_CODE, organization=partner)
            return client.client_id, secret

    client_id, secret = asyncio.run(add())
    token = httpx.post(f"{server.url}/auth/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret))
    assert token.status_code == 200, token.text
    return {"ours": ours, "partner": partner, "other": other, "patient": patient, "token": token.json()["access_token"],
            "client_id": client_id, **ids}


@pytest.fixture
def partner(server: LiveServer, exchange: dict[str, str]) -> Iterator[httpx.Client]:
    with server.client(token=exchange["token"]) as client:
        yield client


def _refused(answer: httpx.Response, status: int) -> str:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["resourceType"] == "OperationOutcome"
    return " ".join(i.get("diagnostics", "") for i in body["issue"])


def test_a_search_of_tasks_finds_only_the_partners_own(partner: httpx.Client, exchange: dict[str, str]) -> None:
    found = partner.get("/Task", params={"_count": "100"})
    assert found.status_code == 200, found.text
    ids = {e["resource"]["id"] for e in found.json().get("entry", [])}
    assert ids == {exchange["task_to"], exchange["task_from"]}
    # criteria narrow further, never wider: asking for the other hospital's Tasks finds nothing
    other = partner.get("/Task", params={"owner": exchange["other"]})
    assert other.status_code == 200 and other.json().get("entry", []) == []
    assert partner.get("/Task", params={"_count": "0"}).json()["total"] == 2
    by_subject = partner.get("/Task", params={"subject": f"Patient/{exchange['patient']}"}).json()
    assert {e["resource"]["id"] for e in by_subject.get("entry", [])} == {exchange["task_to"],
                                                                            exchange["task_from"]}


def test_searches_that_could_reach_past_its_tasks_are_refused(partner: httpx.Client) -> None:
    for params in ({"_include": "Task:patient"}, {"_include": "Task:part-of"}, {"_revinclude": "Provenance:target"},
                   {"_has:Provenance:target:agent": "x"}, {"patient.name": "Lê"}):
        assert _refused(partner.get("/Task", params=params), 403), params


def test_a_read_of_another_task_is_not_found(partner: httpx.Client, exchange: dict[str, str]) -> None:
    assert partner.get(f"/Task/{exchange['task_to']}").status_code == 200
    assert partner.get(f"/Task/{exchange['task_from']}/_history/1").status_code == 200
    assert partner.get(f"/Task/{exchange['task_to']}/_history").status_code == 200
    for path in (f"/Task/{exchange['task_other']}", f"/Task/{exchange['task_other']}/_history/1",
                 f"/Task/{exchange['task_other']}/_history", "/Task/no-such-task"):
        assert "is not known" in _refused(partner.get(path), 404), path


def test_nothing_but_its_tasks(partner: httpx.Client, exchange: dict[str, str]) -> None:
    """The partner learns nothing of the chart: every other read, search and operation is refused."""
    for path in ("/Patient", f"/Patient/{exchange['patient']}", f"/Patient/{exchange['patient']}/$everything",
                 f"/Patient/{exchange['patient']}/Task", "/Organization", "/AuditEvent", "/Task/_history", "/_history",
                 "/?_type=Task", "/$export"):
        assert _refused(partner.get(path), 403), path


def test_writes_only_keep_tasks_its_own(partner: httpx.Client, exchange: dict[str, str]) -> None:
    # the partner updates the status of a Task sent to it
    current = partner.get(f"/Task/{exchange['task_to']}").json()
    accepted = partner.put(f"/Task/{exchange['task_to']}", headers=JSON, json={**current, "status": "accepted"})
    assert accepted.status_code == 200, accepted.text
    # but may not hand it to another hospital, nor touch the other hospital's Task
    moved = {**accepted.json(), "owner": {"reference": exchange["other"]}}
    assert "would not be one" in _refused(partner.put(f"/Task/{exchange['task_to']}", headers=JSON, json=moved),
                                          403)
    other = _task(f"Patient/{exchange['patient']}", {"reference": exchange["partner"]}, {"reference": exchange["ours"]},
                  id=exchange["task_other"])
    refused = partner.put(f"/Task/{exchange['task_other']}", headers=JSON, json=other)
    assert "is not one of them" in _refused(refused, 403)
    patched = partner.patch(f"/Task/{exchange['task_to']}", headers={"Content-Type": "application/json-patch+json"},
                            json=[{"op": "replace", "path": "/owner/reference", "value": exchange["other"]}])
    assert "would not be one" in _refused(patched, 403)
    # a new Task it requests from us is its own; one between us and another hospital is not
    mine = partner.post("/Task", headers=JSON, json=_task(
        f"Patient/{exchange['patient']}", {"reference": exchange["partner"]}, {"reference": exchange["ours"]}))
    assert mine.status_code == 201, mine.text
    assert _refused(partner.post("/Task", headers=JSON, json=_task(
        f"Patient/{exchange['patient']}", {"reference": exchange["ours"]}, {"reference": exchange["other"]})), 403)
    assert _refused(partner.post("/Patient", headers=JSON, json={"resourceType": "Patient"}), 403)
    assert _refused(partner.delete(f"/Task/{exchange['task_to']}"), 403)
    # what was refused changed nothing
    with httpx.Client(base_url=partner.base_url, headers=partner.headers) as again:
        assert again.get(f"/Task/{exchange['task_to']}").json()["owner"]["reference"] == exchange["partner"]


def test_inside_bundles_each_entry_is_confined(server: LiveServer, partner: httpx.Client,
                                               exchange: dict[str, str]) -> None:
    mine = {"request": {"method": "GET", "url": f"Task/{exchange['task_to']}"}}
    others = {"request": {"method": "GET", "url": f"Task/{exchange['task_other']}"}}
    patients = {"request": {"method": "GET", "url": "Patient"}}
    search = {"request": {"method": "GET", "url": "Task?_count=100"}}
    batch = partner.post("/", headers=JSON, json={"resourceType": "Bundle", "type": "batch",
                                                  "entry": [mine, others, patients, search]})
    assert batch.status_code == 200, batch.text
    statuses = [e["response"]["status"] for e in batch.json()["entry"]]
    assert [s.split()[0] for s in statuses] == ["200", "404", "403", "200"]
    found = {e["resource"]["id"] for e in batch.json()["entry"][3]["resource"].get("entry", [])}
    assert exchange["task_other"] not in found and exchange["task_to"] in found
    tag = uuid.uuid4().hex
    transaction = partner.post("/", headers=JSON, json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:1", "request": {"method": "POST", "url": "Task"}, "resource": _task(
            f"Patient/{exchange['patient']}", {"reference": exchange["partner"]}, {"reference": exchange["ours"]},
            identifier=[{"system": "urn:test", "value": tag}])},
        {"request": {"method": "POST", "url": "Patient"}, "resource": {"resourceType": "Patient"}}]})
    _refused(transaction, 403)
    with server.client() as admin:  # the refused transaction left nothing behind
        assert admin.get("/Task", params={"identifier": f"urn:test|{tag}"}).json().get("entry", []) == []


def test_the_partners_accesses_are_audited(server: LiveServer, partner: httpx.Client,
                                           exchange: dict[str, str]) -> None:
    partner.get(f"/Task/{exchange['task_other']}")
    with server.client("auditor") as auditor:
        events = auditor.get("/AuditEvent", params={"altid": exchange["client_id"],
                                                    "entity": f"Task/{exchange['task_other']}", "_count": "50"}).json()
    outcomes = {e["resource"]["outcome"] for e in events.get("entry", [])}
    assert "4" in outcomes  # the refused read of another hospital's Task is on the record
