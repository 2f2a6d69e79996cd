"""The CapabilityStatement describes what the server really does."""

from __future__ import annotations

import httpx
from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from fhir_store.resource_types import resource_types


def test_metadata_is_a_valid_capability_statement(fhir: httpx.Client) -> None:
    response = fhir.get("/metadata")
    assert response.status_code == 200
    body = response.json()
    CapabilityStatement.model_validate(body)
    assert body["fhirVersion"] == "4.3.0"
    assert body["kind"] == "instance"
    rest = body["rest"][0]
    assert {r["type"] for r in rest["resource"]} == set(resource_types())
    patient = next(r for r in rest["resource"] if r["type"] == "Patient")
    codes = {i["code"] for i in patient["interaction"]}
    assert codes == {"read", "vread", "update", "patch", "delete", "create", "history-instance", "history-type",
                     "search-type"}
    assert patient["versioning"] == "versioned-update"
    assert patient["conditionalCreate"] is True
    assert patient["conditionalDelete"] == "single"
    assert {i["code"] for i in rest["interaction"]} == {"history-system", "search-system", "transaction", "batch"}
    assert {"name": "everything", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"} \
        in patient["operation"]
    assert {"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"} \
        in rest["operation"]
    group = next(r for r in rest["resource"] if r["type"] == "Group")
    assert group["operation"][0]["name"] == "export"
    params = {p["name"]: p for p in patient["searchParam"]}
    assert {"name", "family", "identifier", "birthdate", "phone", "_id", "_lastUpdated", "_tag"} <= set(params)
    assert params["birthdate"]["type"] == "date"
    assert "Patient:general-practitioner" in patient["searchInclude"]
    assert "Observation:subject" in patient["searchRevInclude"]
    assert "http://hl7.org/fhir/CompartmentDefinition/patient" in rest["compartment"]


def test_every_advertised_interaction_has_a_route(fhir: httpx.Client) -> None:
    """Each claimed interaction answers with something other than 404-no-route or 405."""
    rid = fhir.post("/Basic", json={"resourceType": "Basic", "code": {"text": "x"}},
                    headers={"Content-Type": "application/fhir+json"}).json()["id"]
    probes = {
        "read": ("GET", f"/Basic/{rid}"),
        "vread": ("GET", f"/Basic/{rid}/_history/1"),
        "history-instance": ("GET", f"/Basic/{rid}/_history"),
        "history-type": ("GET", "/Basic/_history"),
        "history-system": ("GET", "/_history"),
        "search-type": ("GET", "/Basic"),
        "search-system": ("GET", "?_type=Basic"),
    }
    for code, (method, path) in probes.items():
        assert fhir.request(method, path).status_code == 200, code
