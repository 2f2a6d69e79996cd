"""Create, read, vread, update, patch and delete through the HTTP API."""

from __future__ import annotations

import httpx

from tests.conftest import unique

JSON = {"Content-Type": "application/fhir+json"}


def patient(**extra: object) -> dict[str, object]:
    return {"resourceType": "Patient", "name": [{"family": "Nguyễn", "given": ["Thị", "Ánh", "Tuyết"]}],
            "gender": "female", "birthDate": "1990-04-30", **extra}


def create(fhir: httpx.Client, resource: dict[str, object]) -> httpx.Response:
    response = fhir.post(f"/{resource['resourceType']}", json=resource, headers=JSON)
    assert response.status_code == 201, response.text
    return response


def test_create_assigns_id_and_version(fhir: httpx.Client) -> None:
    response = create(fhir, patient(id="client-chosen"))
    body = response.json()
    assert body["id"] != "client-chosen"
    assert body["meta"]["versionId"] == "1"
    assert body["meta"]["lastUpdated"].endswith("Z")
    assert response.headers["ETag"] == 'W/"1"'
    assert response.headers["Location"].endswith(f"/fhir/Patient/{body['id']}/_history/1")
    assert response.headers["Last-Modified"].endswith("GMT")
    assert response.headers["Content-Type"].startswith("application/fhir+json")


def test_read_returns_what_was_written(fhir: httpx.Client) -> None:
    created = create(fhir, patient()).json()
    response = fhir.get(f"/Patient/{created['id']}")
    assert response.status_code == 200
    assert response.json() == created
    assert response.headers["ETag"] == 'W/"1"'


def test_text_is_stored_nfc(fhir: httpx.Client) -> None:
    decomposed = "Nguye\u0302\u0303n"  # "Nguyễn" typed with combining marks
    created = create(fhir, patient(name=[{"family": decomposed}])).json()
    assert fhir.get(f"/Patient/{created['id']}").json()["name"][0]["family"] == "Nguy\u1ec5n"


def test_read_unknown_is_404(fhir: httpx.Client) -> None:
    response = fhir.get(f"/Patient/{unique()}")
    assert response.status_code == 404
    assert response.json()["resourceType"] == "OperationOutcome"
    assert response.json()["issue"][0]["code"] == "not-found"


def test_update_makes_new_version_and_vread_keeps_old(fhir: httpx.Client) -> None:
    created = create(fhir, patient()).json()
    rid = created["id"]
    changed = {**created, "gender": "other"}
    response = fhir.put(f"/Patient/{rid}", json=changed, headers=JSON)
    assert response.status_code == 200, response.text
    assert response.json()["meta"]["versionId"] == "2"
    assert response.headers["ETag"] == 'W/"2"'
    assert fhir.get(f"/Patient/{rid}").json()["gender"] == "other"
    old = fhir.get(f"/Patient/{rid}/_history/1")
    assert old.status_code == 200
    assert old.json()["gender"] == "female"
    assert old.json()["meta"]["versionId"] == "1"
    assert fhir.get(f"/Patient/{rid}/_history/3").status_code == 404
    assert fhir.get(f"/Patient/{rid}/_history/abc").status_code == 404


def test_update_without_change_keeps_version(fhir: httpx.Client) -> None:
    created = create(fhir, patient()).json()
    response = fhir.put(f"/Patient/{created['id']}", json=created, headers=JSON)
    assert response.status_code == 200
    assert response.json()["meta"]["versionId"] == "1"


def test_update_as_create_with_client_id(fhir: httpx.Client) -> None:
    rid = unique("bn")
    response = fhir.put(f"/Patient/{rid}", json=patient(id=rid), headers=JSON)
    assert response.status_code == 201, response.text
    assert response.headers["Location"].endswith(f"/Patient/{rid}/_history/1")
    assert fhir.get(f"/Patient/{rid}").json()["id"] == rid


def test_patch_applies_json_patch(fhir: httpx.Client) -> None:
    created = create(fhir, patient()).json()
    ops = [{"op": "replace", "path": "/gender", "value": "male"},
           {"op": "add", "path": "/telecom", "value": [{"system": "phone", "value": "0912345678"}]}]
    response = fhir.patch(f"/Patient/{created['id']}", json=ops,
                          headers={"Content-Type": "application/json-patch+json"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["gender"] == "male"
    assert body["telecom"][0]["value"] == "0912345678"
    assert body["meta"]["versionId"] == "2"


def test_patch_result_is_validated(fhir: httpx.Client) -> None:
    created = create(fhir, patient()).json()
    ops = [{"op": "replace", "path": "/gender", "value": "robot"}]
    response = fhir.patch(f"/Patient/{created['id']}", json=ops,
                          headers={"Content-Type": "application/json-patch+json"})
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == ["Patient.gender"]
    assert fhir.get(f"/Patient/{created['id']}").json()["gender"] == "female"


def test_patch_errors(fhir: httpx.Client) -> None:
    rid = create(fhir, patient()).json()["id"]
    patch_json = {"Content-Type": "application/json-patch+json"}
    # wrong media type
    assert fhir.patch(f"/Patient/{rid}", json=[], headers=JSON).status_code == 415
    # not an array of operations
    assert fhir.patch(f"/Patient/{rid}", json={"op": "remove"}, headers=patch_json).status_code == 400
    # a test operation that fails
    failing = [{"op": "test", "path": "/gender", "value": "male"}]
    assert fhir.patch(f"/Patient/{rid}", json=failing, headers=patch_json).status_code == 400
    # changing the id
    moving = [{"op": "replace", "path": "/id", "value": "other"}]
    assert fhir.patch(f"/Patient/{rid}", json=moving, headers=patch_json).status_code == 400
    # unknown resource
    assert fhir.patch(f"/Patient/{unique()}", json=[], headers=patch_json).status_code == 404
    assert fhir.get(f"/Patient/{rid}").json()["meta"]["versionId"] == "1"


def test_delete_then_read_is_gone_and_history_keeps_it(fhir: httpx.Client) -> None:
    rid = create(fhir, patient()).json()["id"]
    response = fhir.delete(f"/Patient/{rid}")
    assert response.status_code == 200
    assert response.json()["resourceType"] == "OperationOutcome"
    assert response.headers["ETag"] == 'W/"2"'
    gone = fhir.get(f"/Patient/{rid}")
    assert gone.status_code == 410
    assert gone.json()["issue"][0]["code"] == "deleted"
    assert fhir.get(f"/Patient/{rid}/_history/1").status_code == 200
    assert fhir.get(f"/Patient/{rid}/_history/2").status_code == 410
    # deleting again changes nothing, and an unknown id is not an error
    assert fhir.delete(f"/Patient/{rid}").status_code == 200
    assert fhir.delete(f"/Patient/{unique()}", headers={"Prefer": "return=minimal"}).status_code == 204
    # a new update brings it back as a new version
    again = fhir.put(f"/Patient/{rid}", json=patient(id=rid), headers=JSON)
    assert again.status_code == 201
    assert again.json()["meta"]["versionId"] == "3"


def test_prefer_return(fhir: httpx.Client) -> None:
    minimal = fhir.post("/Patient", json=patient(), headers={**JSON, "Prefer": "return=minimal"})
    assert minimal.status_code == 201
    assert minimal.content == b""
    assert minimal.headers["Location"]
    outcome = fhir.post("/Patient", json=patient(), headers={**JSON, "Prefer": "return=OperationOutcome"})
    assert outcome.status_code == 201
    assert outcome.json()["resourceType"] == "OperationOutcome"
    assert "Created Patient/" in outcome.json()["issue"][0]["diagnostics"]


def test_conditional_read(fhir: httpx.Client) -> None:
    response = create(fhir, patient())
    rid = response.json()["id"]
    assert fhir.get(f"/Patient/{rid}", headers={"If-None-Match": 'W/"1"'}).status_code == 304
    assert fhir.get(f"/Patient/{rid}", headers={"If-None-Match": 'W/"7"'}).status_code == 200
    last_modified = response.headers["Last-Modified"]
    assert fhir.get(f"/Patient/{rid}", headers={"If-Modified-Since": last_modified}).status_code == 304
    before = "Mon, 01 Jan 2024 00:00:00 GMT"
    assert fhir.get(f"/Patient/{rid}", headers={"If-Modified-Since": before}).status_code == 200


def test_format_and_pretty(fhir: httpx.Client) -> None:
    rid = create(fhir, patient()).json()["id"]
    pretty = fhir.get(f"/Patient/{rid}", params={"_pretty": "true"})
    assert pretty.text.startswith('{\n  "resourceType"')
    assert fhir.get(f"/Patient/{rid}", params={"_format": "json"}).status_code == 200
    assert fhir.get(f"/Patient/{rid}", headers={"Accept": "application/json"}).status_code == 200
    xml = fhir.get(f"/Patient/{rid}", params={"_format": "xml"})
    assert xml.status_code == 406
    assert "XML" in xml.json()["issue"][0]["diagnostics"]
    assert fhir.get(f"/Patient/{rid}", headers={"Accept": "application/fhir+xml"}).status_code == 406


def test_every_model_type_is_accepted(fhir: httpx.Client) -> None:
    """A minimal instance of a few types that sit outside the usual clinical set."""
    samples = [
        {"resourceType": "Basic", "code": {"text": "ghi chú"}},
        {"resourceType": "Binary", "contentType": "text/plain", "data": "eGlu"},
        {"resourceType": "Parameters", "parameter": [{"name": "a", "valueString": "b"}]},
        {"resourceType": "Citation", "status": "draft"},
    ]
    for resource in samples:
        create(fhir, resource)
