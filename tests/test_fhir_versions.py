"""FHIR version negotiation: R4 (4.0) clients say so with `fhirVersion` in the media type and are answered in R4.

The R4 examples themselves round-trip as R4 in `test_sample_data.py`; this module checks the negotiation:
`$versions`, the CapabilityStatement per version, refusals of versions we do not speak, and what R4 cannot
carry of the R4B record (types new or reworked in R4B, references R4B widened, R4B-only data types).
"""

from __future__ import annotations

import uuid

import httpx
import pytest

R4 = "application/fhir+json; fhirVersion=4.0"
R4B = "application/fhir+json; fhirVersion=4.3"
FHIR_JSON = "application/fhir+json"


def observation(tag: str, subject: str) -> dict[str, object]:
    return {"resourceType": "Observation", "status": "final", "code": {"text": tag},
            "subject": {"reference": subject}}


def refused(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    text = outcome["issue"][0]["diagnostics"]
    assert all(word in text for word in words), text


def test_versions_operation_lists_both_and_the_default(fhir: httpx.Client) -> None:
    answer = fhir.get("/$versions", headers={"Accept": FHIR_JSON})
    assert answer.status_code == 200
    parameters = answer.json()["parameter"]
    assert [p["valueCode"] for p in parameters if p["name"] == "version"] == ["4.0", "4.3"]
    assert [p["valueCode"] for p in parameters if p["name"] == "default"] == ["4.3"]
    plain = fhir.get("/$versions", headers={"Accept": "application/json"})
    assert plain.headers["content-type"].startswith("application/json")
    assert plain.json() == {"versions": ["4.0", "4.3"], "default": "4.3"}


def test_capability_statement_in_each_version(fhir: httpx.Client) -> None:
    default = fhir.get("/metadata")
    assert default.json()["fhirVersion"] == "4.3.0"
    assert "fhirVersion" not in default.headers["content-type"]
    as_r4b = fhir.get("/metadata", headers={"Accept": R4B})
    assert as_r4b.json()["fhirVersion"] == "4.3.0"
    r4 = fhir.get("/metadata", headers={"Accept": R4})
    assert r4.status_code == 200
    assert r4.headers["content-type"].startswith("application/fhir+json; fhirVersion=4.0")
    assert r4.json()["fhirVersion"] == "4.0.1"
    r4_types = {r["type"] for r in r4.json()["rest"][0]["resource"]}
    r4b_types = {r["type"] for r in default.json()["rest"][0]["resource"]}
    assert {"Patient", "Observation", "DiagnosticReport", "ServiceRequest", "Task", "Substance"} <= r4_types
    assert r4b_types - r4_types == {
        "AdministrableProductDefinition", "Citation", "ClinicalUseDefinition", "Evidence", "EvidenceReport",
        "EvidenceVariable", "Ingredient", "ManufacturedItemDefinition", "MedicinalProductDefinition",
        "NutritionProduct", "PackagedProductDefinition", "RegulatedAuthorization", "SubscriptionStatus",
        "SubscriptionTopic", "SubstanceDefinition"}
    by_format = fhir.get("/metadata", params={"_format": R4})
    assert by_format.json()["fhirVersion"] == "4.0.1"


@pytest.mark.parametrize("asked", ["5.0", "3.0", "banana"])
def test_versions_we_do_not_speak_are_refused(fhir: httpx.Client, asked: str) -> None:
    refused(fhir.get("/metadata", headers={"Accept": f"{FHIR_JSON}; fhirVersion={asked}"}), 406, asked, "4.0")
    body = observation("x", "Patient/x")
    refused(fhir.post("/Observation", json=body, headers={"Content-Type": f"{FHIR_JSON}; fhirVersion={asked}"}),
            415, asked)


def test_one_interaction_one_version(fhir: httpx.Client) -> None:
    tag = uuid.uuid4().hex[:8]
    mixed = fhir.post("/Observation", json=observation(tag, "Patient/x"), headers={"Content-Type": R4B, "Accept": R4})
    refused(mixed, 400, "one version")
    assert "entry" not in fhir.get("/Observation", params={"code:text": tag}).json()


def test_an_r4_body_is_answered_in_r4(fhir: httpx.Client) -> None:
    tag = uuid.uuid4().hex[:8]
    created = fhir.post("/Observation", json=observation(tag, "Patient/x"), headers={"Content-Type": R4})
    assert created.status_code == 201, created.text
    assert "fhirVersion=4.0" in created.headers["content-type"]
    read = fhir.get(f"/Observation/{created.json()['id']}", headers={"Accept": R4})
    assert read.json()["code"]["text"] == tag
    search = fhir.get("/Observation", params={"code:text": tag}, headers={"Accept": R4})
    assert "fhirVersion=4.0" in search.headers["content-type"]
    assert [e["resource"]["id"] for e in search.json()["entry"]] == [created.json()["id"]]


def test_types_new_or_reworked_in_r4b_are_refused_for_r4(fhir: httpx.Client) -> None:
    topic = {"resourceType": "SubscriptionTopic", "url": f"urn:uuid:{uuid.uuid4()}", "status": "active"}
    refused(fhir.post("/SubscriptionTopic", json=topic, headers={"Content-Type": R4}), 415, "SubscriptionTopic",
            "new in R4B")
    stored = fhir.post("/SubscriptionTopic", json=topic, headers={"Content-Type": FHIR_JSON})
    assert stored.status_code == 201
    refused(fhir.get(f"/SubscriptionTopic/{stored.json()['id']}", headers={"Accept": R4}), 406, "SubscriptionTopic")
    refused(fhir.get("/Evidence", headers={"Accept": R4}), 406, "Evidence", "reworked")
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": topic, "request": {"method": "POST", "url": "SubscriptionTopic"}}]}
    refused(fhir.post("", json=bundle, headers={"Content-Type": R4}), 415, "SubscriptionTopic")


def test_resources_using_what_only_r4b_has_are_refused_for_r4(fhir: httpx.Client) -> None:
    tag = uuid.uuid4().hex[:8]
    practitioner = fhir.post("/Practitioner", json={"resourceType": "Practitioner", "name": [{"family": "Võ"}]},
                             headers={"Content-Type": FHIR_JSON}).json()["id"]
    about_a_practitioner = observation(tag, f"Practitioner/{practitioner}")  # R4B widened Observation.subject
    refused(fhir.post("/Observation", json=about_a_practitioner, headers={"Content-Type": R4}), 415,
            "Observation.subject", "Practitioner")
    kept = fhir.post("/Observation", json=about_a_practitioner, headers={"Content-Type": FHIR_JSON})
    assert kept.status_code == 201
    oid = kept.json()["id"]
    refused(fhir.get(f"/Observation/{oid}", headers={"Accept": R4}), 406, "Observation.subject")
    assert fhir.get(f"/Observation/{oid}").status_code == 200
    # a search answer holding it is refused whole, rather than sent with the entry silently left out
    refused(fhir.get("/Observation", params={"code:text": tag}, headers={"Accept": R4}), 406, "Observation.subject")
    # a patient's observation is fine, and so is an extension of an R4 data type
    fine = observation(tag, "Patient/x") | {"extension": [{"url": "urn:x", "valueString": "ok"}]}
    assert fhir.post("/Observation", json=fine, headers={"Content-Type": R4}).status_code == 201
    r4b_type = observation(tag, "Patient/x") | {"extension": [{"url": "urn:x", "valueRatioRange": {
        "lowNumerator": {"value": 1}, "denominator": {"value": 2}}}]}
    refused(fhir.post("/Observation", json=r4b_type, headers={"Content-Type": R4}), 415, "valueRatioRange")
