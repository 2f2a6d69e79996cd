"""Bad input gets a 4xx OperationOutcome naming the problem, and nothing is stored."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import unique

JSON = {"Content-Type": "application/fhir+json"}


def assert_outcome(response: httpx.Response, status: int, code: str | None = None) -> dict[str, object]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["severity"] == "error"
    if code:
        assert body["issue"][0]["code"] == code, body
    return body


def history_size(fhir: httpx.Client, resource_type: str) -> int:
    return len(fhir.get(f"/{resource_type}/_history", params={"_count": 1000}).json()["entry"])


@pytest.mark.parametrize(("body", "code"), [
    (b"{not json", "structure"),
    (b"", "required"),
    (b"[1, 2]", "invalid"),
    (b'{"name": []}', "required"),
])
def test_malformed_bodies(fhir: httpx.Client, body: bytes, code: str) -> None:
    assert_outcome(fhir.post("/Basic", content=body, headers=JSON), 400, code)


def test_validation_errors_name_the_element(fhir: httpx.Client) -> None:
    before = history_size(fhir, "Patient")
    bad = {"resourceType": "Patient", "birthDate": "1980-13-45", "gender": "xyz", "unknownThing": 1}
    body = assert_outcome(fhir.post("/Patient", json=bad, headers=JSON), 400)
    paths = {e for issue in body["issue"] for e in issue.get("expression", [])}  # type: ignore[union-attr]
    assert {"Patient.birthDate", "Patient.unknownThing"} <= paths
    assert history_size(fhir, "Patient") == before


def test_required_binding_codes_are_enforced(fhir: httpx.Client) -> None:
    body = assert_outcome(fhir.post("/Patient", json={"resourceType": "Patient", "gender": "xyz"}, headers=JSON),
                          400, "code-invalid")
    assert body["issue"][0]["expression"] == ["Patient.gender"]  # type: ignore[index]
    nested = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
              "component": [{"code": {"text": "y"}, "valueQuantity": {"value": 1, "comparator": "~"}}]}
    body = assert_outcome(fhir.post("/Observation", json=nested, headers=JSON), 400, "code-invalid")
    assert body["issue"][0]["expression"] == ["Observation.component[0].valueQuantity.comparator"]  # type: ignore[index]


def test_codes_the_model_titles_miss_are_accepted(fhir: httpx.Client) -> None:
    """Observation.status 'cancelled' is valid although the model's title lists only four codes."""
    obs = {"resourceType": "Observation", "status": "cancelled", "code": {"text": "x"}}
    assert fhir.post("/Observation", json=obs, headers=JSON).status_code == 201
    task = {"resourceType": "Task", "status": "in-progress", "intent": "order"}
    assert fhir.post("/Task", json=task, headers=JSON).status_code == 201


def test_unknown_resource_type(fhir: httpx.Client) -> None:
    assert_outcome(fhir.post("/Pateint", json={"resourceType": "Pateint"}, headers=JSON), 404, "not-supported")
    assert_outcome(fhir.get("/Pateint/1"), 404, "not-supported")
    assert_outcome(fhir.post("/Basic", json={"resourceType": "Nonsense"}, headers=JSON), 400)


def test_type_mismatch_with_url(fhir: httpx.Client) -> None:
    body = assert_outcome(fhir.post("/Patient", json={"resourceType": "Basic", "code": {"text": "x"}},
                                    headers=JSON), 400)
    assert "does not match" in body["issue"][0]["diagnostics"]  # type: ignore[index]


def test_update_id_rules(fhir: httpx.Client) -> None:
    rid = unique()
    assert_outcome(fhir.put(f"/Patient/{rid}", json={"resourceType": "Patient", "id": "other"}, headers=JSON), 400)
    assert_outcome(fhir.put(f"/Patient/{rid}", json={"resourceType": "Patient"}, headers=JSON), 400)
    assert_outcome(fhir.put("/Patient/bad_id!", json={"resourceType": "Patient", "id": "bad_id!"}, headers=JSON), 400)
    assert fhir.get(f"/Patient/{rid}").status_code == 404


def test_oversized_body_is_413(fhir: httpx.Client, live_server: object) -> None:
    big = {"resourceType": "Basic", "code": {"text": "x" * 1_100_000}}
    assert_outcome(fhir.post("/Basic", json=big, headers=JSON), 413, "too-costly")


def test_oversized_chunked_body_is_413(fhir: httpx.Client) -> None:
    def chunks():  # no Content-Length: the server must count as it reads
        yield b'{"resourceType": "Basic", "code": {"text": "'
        for _ in range(200):
            yield b"x" * 10_000
        yield b'"}}'

    assert_outcome(fhir.post("/Basic", content=chunks(), headers=JSON), 413, "too-costly")


def test_wrong_content_types(fhir: httpx.Client) -> None:
    assert_outcome(fhir.post("/Patient", content=b"<Patient/>", headers={"Content-Type": "application/fhir+xml"}),
                   415, "not-supported")
    assert_outcome(fhir.post("/Patient", content=b"x", headers={"Content-Type": "text/plain"}), 415)


def test_bad_if_match_header(fhir: httpx.Client) -> None:
    rid = fhir.post("/Patient", json={"resourceType": "Patient"}, headers=JSON).json()["id"]
    assert_outcome(fhir.put(f"/Patient/{rid}", json={"resourceType": "Patient", "id": rid},
                            headers={**JSON, "If-Match": "yesterday"}), 400)


def test_unknown_route_and_method(fhir: httpx.Client) -> None:
    assert_outcome(fhir.get("/Patient/1/2/3/4"), 404)
    assert_outcome(fhir.request("OPTIONS", "/metadata"), 405)


def test_bad_history_parameters(fhir: httpx.Client) -> None:
    assert_outcome(fhir.get("/Patient/_history", params={"_since": "last tuesday"}), 400)
    assert_outcome(fhir.get("/Patient/_history", params={"_count": "many"}), 400)
    assert_outcome(fhir.get("/Patient/_history", params={"_cursor": "garbage"}), 400)
