"""Interceptors registered once on the pipeline see every FHIR interaction (auth and audit hook in here)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fastapi import Response

from emr.api.pipeline import Handler, Interaction
from emr.api.responses import outcome_response
from fhir_store.errors import Issue
from tests.conftest import LiveServer, make_settings


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None, str | None]] = []

    async def __call__(self, it: Interaction, call_next: Handler) -> Response:
        if it.request.headers.get("x-deny"):
            return outcome_response(403, [Issue("forbidden", "denied by test interceptor")])
        response = await call_next(it)
        self.seen.append((it.kind, it.resource_type, it.resource_id))
        return response


@pytest.fixture
def recorded(mongo_uri: str) -> Iterator[tuple[httpx.Client, Recorder]]:
    recorder = Recorder()
    server = LiveServer(make_settings(mongo_uri))
    server.app.state.pipeline.add(recorder)
    with server, server.client() as client:
        yield client, recorder


def test_every_interaction_passes_the_interceptor(recorded: tuple[httpx.Client, Recorder]) -> None:
    fhir, recorder = recorded
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


def test_an_interceptor_can_refuse_before_anything_is_stored(recorded: tuple[httpx.Client, Recorder]) -> None:
    fhir, _ = recorded
    json = {"Content-Type": "application/fhir+json", "X-Deny": "1"}
    response = fhir.post("/Basic", json={"resourceType": "Basic", "code": {"text": "x"}}, headers=json)
    assert response.status_code == 403
    assert fhir.get("/Basic/_history").json()["entry"] == []
