"""Interceptors registered once on the pipeline see every FHIR interaction, Bundle entries included
(authorisation and audit hook in here); store write checks run inside the write's transaction."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest

from fhir_store import Forbidden, Interaction, InvalidRequest, Issue, Result, WriteContext
from tests.conftest import LiveServer, make_settings

R = TypeVar("R", bound=Result)
Seen = tuple[str, str | None, str | None]
FHIR_JSON = {"Content-Type": "application/fhir+json"}


class Recorder:
    """Records (kind, type, id) of what it lets through; refuses on `X-Deny`, DELETEs on `X-Deny-Delete`."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None, str | None]] = []
        self.entries: list[tuple[Seen, str, int, bool]] = []  # (what, the Bundle's kind, index, conditional)

    async def __call__(self, it: Interaction, call_next: Callable[[Interaction], Awaitable[R]]) -> R:
        if it.headers.get("x-deny"):
            raise Forbidden("denied by test interceptor")
        if it.headers.get("x-deny-delete") and it.kind == "delete":
            raise Forbidden("deleting is denied by test interceptor")
        response = await call_next(it)
        seen = (it.kind, it.resource_type, it.resource_id)
        if it.bundle is None:
            self.seen.append(seen)
        else:
            assert it.entry is not None
            self.entries.append((seen, it.bundle.kind, it.entry, it.conditional))
        return response


class SubjectMustExist:
    """A write check that reads through the write's context: an Observation's subject must exist."""

    def __init__(self) -> None:
        self.checked = 0

    async def __call__(self, resource: dict[str, Any], ctx: WriteContext) -> list[Issue]:
        subject = (resource.get("subject") or {}).get("reference", "")
        if resource["resourceType"] != "Observation" or not subject.startswith("Patient/"):
            return []
        self.checked += 1
        if await ctx.read("Patient", subject.removeprefix("Patient/")) is None:
            raise InvalidRequest(f"{subject} does not exist (checked inside the write's transaction)")
        return []


@pytest.fixture(scope="module")
def server(mongo_uri: str) -> Iterator[tuple[LiveServer, Recorder, SubjectMustExist]]:
    recorder, check = Recorder(), SubjectMustExist()
    with LiveServer(make_settings(mongo_uri), interceptors=[recorder], write_checks=[check]) as live:
        yield live, recorder, check


@pytest.fixture
def fresh(mongo_uri: str) -> Iterator[tuple[httpx.Client, Recorder]]:
    """A server and database of its own, so the test sees every interaction from the first."""
    recorder = Recorder()
    with LiveServer(make_settings(mongo_uri), interceptors=[recorder]) as live, live.client() as client:
        yield client, recorder


@pytest.fixture
def recorded(server: tuple[LiveServer, Recorder, SubjectMustExist]) -> Iterator[tuple[httpx.Client, Recorder]]:
    live, recorder, _ = server
    recorder.seen.clear()
    recorder.entries.clear()
    with live.client() as client:
        yield client, recorder


def basic(fhir: httpx.Client, tag: str) -> str:
    body = {"resourceType": "Basic", "code": {"text": tag},
            "identifier": [{"system": "urn:test:pipeline", "value": tag}]}
    response = fhir.post("/Basic", json=body, headers=FHIR_JSON)
    assert response.status_code == 201, response.text
    rid: str = response.json()["id"]
    return rid


def test_every_interaction_passes_the_interceptor(fresh: tuple[httpx.Client, Recorder]) -> None:
    fhir, recorder = fresh
    json = {"Content-Type": "application/fhir+json"}
    rid = fhir.post("/Basic", json={"resourceType": "Basic", "code": {"text": "x"}}, headers=json).json()["id"]
    fhir.get(f"/Basic/{rid}")
    fhir.put(f"/Basic/{rid}", json={"resourceType": "Basic", "id": rid, "code": {"text": "y"}}, headers=json)
    fhir.get(f"/Basic/{rid}/_history/1")
    fhir.get(f"/Basic/{rid}/_history")
    fhir.delete(f"/Basic/{rid}")
    fhir.get("/metadata")
    kinds = [k for k, _, _ in recorder.seen]
    assert kinds == ["create", "read", "update", "vread", "history-instance", "delete", "capabilities"]
    assert recorder.seen[1] == ("read", "Basic", rid)


def test_an_interceptor_can_refuse_before_anything_is_stored(fresh: tuple[httpx.Client, Recorder]) -> None:
    fhir, _ = fresh
    json = {"Content-Type": "application/fhir+json", "X-Deny": "1"}
    response = fhir.post("/Basic", json={"resourceType": "Basic", "code": {"text": "x"}}, headers=json)
    assert response.status_code == 403
    assert fhir.get("/Basic/_history").json()["entry"] == []


def _patch_binary(text: str) -> dict[str, Any]:
    operations = [{"op": "replace", "path": "/code/text", "value": text}]
    return {"resourceType": "Binary", "contentType": "application/json-patch+json",
            "data": base64.b64encode(json.dumps(operations).encode()).decode()}


def _requests(ids: dict[str, str], tag: str) -> list[dict[str, Any]]:
    """One request of each kind, on the resources `ids` names, as Bundle entries."""
    new = {"resourceType": "Basic", "code": {"text": f"new-{tag}"}}
    conditional = {"resourceType": "Basic", "code": {"text": f"cond-{tag}"},
                   "identifier": [{"system": "urn:test:pipeline", "value": f"cond-{tag}"}]}
    return [
        {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": new, "request": {"method": "POST", "url": "Basic"}},
        {"resource": conditional, "request": {"method": "POST", "url": "Basic",
                                              "ifNoneExist": f"identifier=urn:test:pipeline|cond-{tag}"}},
        {"resource": {"resourceType": "Basic", "id": ids["put"], "code": {"text": "put"}},
         "request": {"method": "PUT", "url": f"Basic/{ids['put']}"}},
        {"resource": _patch_binary("patched"), "request": {"method": "PATCH", "url": f"Basic/{ids['patch']}"}},
        {"request": {"method": "DELETE", "url": f"Basic/{ids['delete']}"}},
        {"request": {"method": "DELETE", "url": f"Basic?identifier=urn:test:pipeline|{ids['gone-tag']}"}},
        {"request": {"method": "GET", "url": f"Basic/{ids['read']}"}},
        {"request": {"method": "GET", "url": f"Basic/{ids['read']}/_history/1"}},
        {"request": {"method": "GET", "url": f"Basic/{ids['read']}/_history"}},
        {"request": {"method": "GET", "url": f"Basic?_id={ids['read']}"}},
    ]


def _expected(ids: dict[str, str]) -> list[tuple[Seen, bool]]:
    """What the interceptor must see for `_requests(ids)`: the same whether sent alone or in a Bundle."""
    return [(("create", "Basic", None), False), (("create", "Basic", None), True),
            (("update", "Basic", ids["put"]), False), (("patch", "Basic", ids["patch"]), False),
            (("delete", "Basic", ids["delete"]), False), (("delete", "Basic", None), True),
            (("read", "Basic", ids["read"]), False), (("vread", "Basic", ids["read"]), False),
            (("history-instance", "Basic", ids["read"]), False), (("search-type", "Basic", None), False)]


def _order(item: tuple[Seen, bool]) -> tuple[str, str, str, bool]:
    (kind, rtype, rid), conditional = item
    return kind, rtype or "", rid or "", conditional


def _targets(fhir: httpx.Client, tag: str) -> dict[str, str]:
    ids = {role: basic(fhir, f"{role}-{tag}") for role in ("put", "patch", "delete", "read")}
    gone_tag = f"gone-{tag}"
    basic(fhir, gone_tag)
    return {**ids, "gone-tag": gone_tag}


def _send_alone(fhir: httpx.Client, entry: dict[str, Any]) -> httpx.Response:
    """The request a Bundle entry carries, sent as a plain HTTP request."""
    request, resource = entry["request"], entry.get("resource")
    headers = dict(FHIR_JSON)
    if request.get("ifNoneExist"):
        headers["If-None-Exist"] = request["ifNoneExist"]
    if request["method"] == "PATCH":
        operations = json.loads(base64.b64decode(resource["data"]))
        return fhir.patch(f"/{request['url']}", json=operations,
                          headers={"Content-Type": "application/json-patch+json"})
    return fhir.request(request["method"], f"/{request['url']}", json=resource, headers=headers)


@pytest.mark.parametrize("bundle_type", ["batch", "transaction"])
def test_each_bundle_entry_passes_the_interceptor_as_it_would_alone(
        recorded: tuple[httpx.Client, Recorder], bundle_type: str) -> None:
    fhir, recorder = recorded
    tag = uuid.uuid4().hex[:8]
    alone_ids = _targets(fhir, f"alone-{tag}")
    recorder.seen.clear()
    for entry in _requests(alone_ids, f"alone-{tag}"):
        assert _send_alone(fhir, entry).status_code < 300
    alone = _expected(alone_ids)
    assert recorder.seen == [seen for seen, _ in alone]

    bundle_ids = _targets(fhir, f"bundle-{tag}")
    recorder.seen.clear()
    entries = _requests(bundle_ids, f"bundle-{tag}")
    response = fhir.post("", json={"resourceType": "Bundle", "type": bundle_type, "entry": entries},
                         headers=FHIR_JSON)
    assert response.status_code == 200, response.text
    statuses = [e["response"]["status"] for e in response.json()["entry"]]
    assert all(s.startswith(("200", "201", "204")) for s in statuses), statuses
    # the Bundle itself is one interaction; each entry is the interaction it would be alone, inside it
    assert recorder.seen == [(bundle_type, None, None)]
    seen_entries = sorted(((seen, conditional) for seen, _, _, conditional in recorder.entries), key=_order)
    assert seen_entries == sorted(_expected(bundle_ids), key=_order)
    assert {kind for _, kind, _, _ in recorder.entries} == {bundle_type}
    assert sorted(index for _, _, index, _ in recorder.entries) == list(range(len(entries)))


def test_a_refused_entry_fails_alone_in_a_batch_and_refuses_a_whole_transaction(
        recorded: tuple[httpx.Client, Recorder]) -> None:
    fhir, _ = recorded
    tag = uuid.uuid4().hex[:8]
    target = basic(fhir, f"keep-{tag}")
    denied = {**FHIR_JSON, "X-Deny-Delete": "1"}

    def bundle(kind: str) -> dict[str, Any]:
        created = {"resourceType": "Basic", "code": {"text": f"{kind}-{tag}"},
                   "identifier": [{"system": "urn:test:pipeline", "value": f"{kind}-{tag}"}]}
        return {"resourceType": "Bundle", "type": kind, "entry": [
            {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": created, "request": {"method": "POST", "url": "Basic"}},
            {"request": {"method": "DELETE", "url": f"Basic/{target}"}}]}

    batch = fhir.post("", json=bundle("batch"), headers=denied)
    assert batch.status_code == 200
    created, refused = batch.json()["entry"]
    assert created["response"]["status"].startswith("201")
    assert refused["response"]["status"].startswith("403")
    assert refused["response"]["outcome"]["issue"][0]["code"] == "forbidden"

    transaction = fhir.post("", json=bundle("transaction"), headers=denied)
    assert transaction.status_code == 403
    assert "Bundle.entry[1]" in transaction.json()["issue"][0]["diagnostics"]
    found = fhir.get("/Basic", params={"identifier": f"urn:test:pipeline|transaction-{tag}"}).json()
    assert "entry" not in found  # nothing of the refused transaction was kept
    assert fhir.get(f"/Basic/{target}").status_code == 200


def test_a_write_check_reads_what_earlier_entries_of_its_transaction_wrote(
        server: tuple[LiveServer, Recorder, SubjectMustExist]) -> None:
    live, _, check = server
    tag = uuid.uuid4().hex[:8]
    patient_url = f"urn:uuid:{uuid.uuid4()}"
    patient = {"resourceType": "Patient", "identifier": [{"system": "urn:test:pipeline", "value": tag}],
               "name": [{"family": "Nguyễn", "given": ["Văn", "An"]}]}
    observation = {"resourceType": "Observation", "status": "final", "code": {"text": f"obs-{tag}"},
                   "subject": {"reference": patient_url}}
    entries = [
        {"fullUrl": patient_url, "resource": patient,
         "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier=urn:test:pipeline|{tag}"}},
        {"resource": observation, "request": {"method": "POST", "url": "Observation"}},
    ]
    with live.client() as fhir:
        before = check.checked
        response = fhir.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": entries},
                             headers=FHIR_JSON)
        assert response.status_code == 200, response.text
        assert check.checked > before  # the check ran, and found the patient only visible inside the transaction
        subject = fhir.get("/Observation", params={"code:text": f"obs-{tag}"}).json()["entry"][0]["resource"]
        assert subject["subject"]["reference"].startswith("Patient/")

        orphan = {**observation, "code": {"text": f"orphan-{tag}"}, "subject": {"reference": "Patient/nobody-here"}}
        refused = fhir.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": orphan, "request": {"method": "POST", "url": "Observation"}}]}, headers=FHIR_JSON)
        assert refused.status_code == 400
        assert "Patient/nobody-here does not exist" in refused.json()["issue"][0]["diagnostics"]
        assert "entry" not in fhir.get("/Observation", params={"code:text": f"orphan-{tag}"}).json()
