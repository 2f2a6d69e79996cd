"""The examples of the FHIR R4 "Search" page (http://hl7.org/fhir/R4/search.html), run against data
shaped after them. Each test names the section it comes from."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from emr.services import open_services
from tests.conftest import LiveServer

JSON = {"Content-Type": "application/fhir+json"}
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
UCUM = "http://unitsofmeasure.org"

DATA: list[dict[str, Any]] = [
    {"resourceType": "Patient", "id": "23", "gender": "female", "active": True, "birthDate": "2013-01-14",
     "name": [{"family": "Pieter", "given": ["Eve"]}],
     "identifier": [{"system": "http://acme.org/patient", "value": "2345"},
                    {"type": {"coding": [{"system": V2_0203, "code": "MR"}]}, "system": "http://acme.org/mrn",
                     "value": "446053"}],
     "link": [{"other": {"reference": "Patient/24"}, "type": "seealso"}]},
    {"resourceType": "Patient", "id": "24", "gender": "female", "birthDate": "2013-06-30",
     "name": [{"family": "Peter", "given": ["Evelyn"]}]},
    {"resourceType": "Patient", "id": "25", "gender": "male", "birthDate": "1970",
     "name": [{"family": "Pan", "given": ["Severine"]}],
     "identifier": [{"system": "http://acme.org/fhir/identifier/mrn", "value": "123456"}]},
    {"resourceType": "Patient", "id": "26", "birthDate": "1950-02-02"},
    {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/23"},
     "code": {"coding": [{"system": "http://acme.org/conditions/codes", "code": "ha125", "display": "Headache"}]}},
    {"resourceType": "Condition", "id": "c2", "subject": {"reference": "Patient/24"},
     "code": {"coding": [{"system": "http://other.org/codes", "code": "ha125"}], "text": "Migraine"}},
    {"resourceType": "Observation", "id": "o1", "status": "final", "subject": {"reference": "Patient/23"},
     "code": {"coding": [{"system": "http://loinc.org", "code": "1234-5"}]},
     "category": [{"coding": [{"code": "laboratory"}]}], "effectiveDateTime": "2013-03-01",
     "valueQuantity": {"value": 5.4, "unit": "mg", "system": UCUM, "code": "mg"}},
    {"resourceType": "Observation", "id": "o2", "status": "final", "subject": {"reference": "Patient/24"},
     "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3"}]},
     "category": [{"coding": [{"code": "vital-signs"}]}], "effectiveDateTime": "2013-03-02",
     "valueQuantity": {"value": 6.2, "unit": "mmol/L", "system": UCUM, "code": "mmol/L"}},
    {"resourceType": "Observation", "id": "o3", "status": "amended", "subject": {"reference": "Patient/25"},
     "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]}, "effectiveDateTime": "2014-01-01",
     "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                    "valueQuantity": {"value": 55, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}}],
     "valueQuantity": {"value": 5.5, "unit": "mg", "system": UCUM, "code": "mg"}},
    {"resourceType": "DiagnosticReport", "id": "dr1", "status": "final", "code": {"text": "panel"},
     "subject": {"reference": "Patient/24"}, "result": [{"reference": "Observation/o2"}]},
    {"resourceType": "DiagnosticReport", "id": "dr2", "status": "final", "code": {"text": "panel"},
     "subject": {"reference": "Patient/25"}},
    {"resourceType": "RiskAssessment", "id": "r1", "status": "final", "subject": {"reference": "Patient/23"},
     "prediction": [{"probabilityDecimal": 0.9}]},
    {"resourceType": "RiskAssessment", "id": "r2", "status": "final", "subject": {"reference": "Patient/24"},
     "prediction": [{"probabilityDecimal": 0.5}]},
    {"resourceType": "Encounter", "id": "e1", "status": "finished", "class": {"code": "AMB"},
     "subject": {"reference": "Patient/23"}, "period": {"start": "2010-03-01", "end": "2010-03-02"}},
    {"resourceType": "Encounter", "id": "e2", "status": "finished", "class": {"code": "AMB"},
     "subject": {"reference": "Patient/23"}, "period": {"start": "2012-03-01"}},
    {"resourceType": "MedicationRequest", "id": "m1", "status": "active", "intent": "order",
     "subject": {"reference": "Patient/23"}, "requester": {"reference": "Practitioner/p1"},
     "medicationCodeableConcept": {"text": "paracetamol"}},
    {"resourceType": "Practitioner", "id": "p1", "name": [{"family": "Smith"}]},
    {"resourceType": "Provenance", "id": "pv1", "recorded": "2013-01-01T00:00:00Z",
     "target": [{"reference": "MedicationRequest/m1"}], "agent": [{"who": {"reference": "Practitioner/p1"}}]},
    {"resourceType": "AuditEvent", "id": "a1", "recorded": "2013-01-01T00:00:00Z",
     "type": {"code": "rest"}, "source": {"observer": {"display": "x"}},
     "agent": [{"requestor": True, "who": {"identifier": {"value": "MyUserId"}}}],
     "entity": [{"what": {"reference": "Observation/o1"}}]},
    {"resourceType": "Group", "id": "g1", "type": "person", "actual": True,
     "characteristic": [{"code": {"coding": [{"code": "gender"}]},
                         "valueCodeableConcept": {"coding": [{"code": "mixed"}]}, "exclude": False}]},
    {"resourceType": "ValueSet", "id": "vs1", "status": "active", "url": "http://acme.org/fhir/ValueSet/123"},
    {"resourceType": "ValueSet", "id": "vs2", "status": "active", "url": "http://acme.org/fhir/ValueSet/124/x"},
]


@pytest.fixture(scope="module")
def fhir(own_fhir: httpx.Client, module_server: LiveServer) -> Iterator[httpx.Client]:
    for resource in DATA:
        if resource["resourceType"] == "AuditEvent":
            continue  # the API never writes AuditEvents: the audit trail does
        r = own_fhir.put(f"/{resource['resourceType']}/{resource['id']}", json=resource, headers=JSON)
        assert r.status_code in (200, 201), r.text

    async def record() -> None:
        async with open_services(module_server.settings) as services:
            await services.store.audit_trail.record([r for r in DATA if r["resourceType"] == "AuditEvent"])

    asyncio.run(record())
    yield own_fhir


def found(fhir: httpx.Client, path: str, params: list[tuple[str, str]] | dict[str, str],
          mode: str = "match") -> set[str]:
    r = fhir.get(path, params=params)
    assert r.status_code == 200, r.text
    return {e["resource"]["id"] for e in r.json().get("entry", []) if e["search"]["mode"] == mode}


# 3.1.1.4.x string
def test_string_default_contains_exact(fhir: httpx.Client) -> None:
    assert found(fhir, "/Patient", {"given": "eve"}) == {"23", "24"}
    assert found(fhir, "/Patient", {"given:contains": "eve"}) == {"23", "24", "25"}
    assert found(fhir, "/Patient", {"given:exact": "Eve"}) == {"23"}


# token
def test_token_examples(fhir: httpx.Client) -> None:
    assert found(fhir, "/Patient", {"identifier": "http://acme.org/patient|2345"}) == {"23"}
    assert found(fhir, "/Condition", {"code": "http://acme.org/conditions/codes|ha125"}) == {"c1"}
    assert found(fhir, "/Condition", {"code": "ha125"}) == {"c1", "c2"}
    assert found(fhir, "/Condition", {"code:text": "headache"}) == {"c1"}
    assert found(fhir, "/Patient", {"gender:not": "male"}) == {"23", "24", "26"}
    assert found(fhir, "/Patient", {"identifier:of-type": f"{V2_0203}|MR|446053"}) == {"23"}
    assert found(fhir, "/Patient", {"active": "true"}) == {"23"}


# quantity
def test_quantity_examples(fhir: httpx.Client) -> None:
    assert found(fhir, "/Observation", {"value-quantity": f"5.4|{UCUM}|mg"}) == {"o1"}
    assert found(fhir, "/Observation", {"value-quantity": "5.4||mg"}) == {"o1"}
    assert found(fhir, "/Observation", {"value-quantity": f"le5.4|{UCUM}|mg"}) == {"o1"}
    assert found(fhir, "/Observation", {"value-quantity": f"ap5.4|{UCUM}|mg"}) == {"o1", "o3"}


# number
def test_number_example(fhir: httpx.Client) -> None:
    assert found(fhir, "/RiskAssessment", {"probability": "gt0.8"}) == {"r1"}


# date
def test_date_examples(fhir: httpx.Client) -> None:
    assert found(fhir, "/Patient", {"birthdate": "eq2013-01-14"}) == {"23"}
    assert found(fhir, "/Patient", {"birthdate": "ne2013-01-14"}) == {"24", "25", "26"}
    assert found(fhir, "/Patient", {"birthdate": "lt2013-01-14T10:00"}) == {"23", "25", "26"}
    assert found(fhir, "/Patient", {"birthdate": "gt2013-01-14T10:00"}) == {"23", "24"}
    assert found(fhir, "/Encounter", [("date", "ge2010-01-01"), ("date", "le2011-12-31")]) == {"e1"}
    assert found(fhir, "/Encounter", {"date": "ge2013-01-01"}) == {"e2"}  # an open period goes on


# reference
def test_reference_examples(fhir: httpx.Client) -> None:
    assert found(fhir, "/Observation", {"subject": "Patient/23"}) == {"o1"}
    assert found(fhir, "/Observation", {"subject:Patient": "23"}) == {"o1"}
    assert found(fhir, "/Observation", {"subject": "23"}) == {"o1"}
    assert found(fhir, "/Observation", {"subject.identifier": "http://acme.org/fhir/identifier/mrn|123456"}) \
        == {"o3"}


# composite
def test_composite_examples(fhir: httpx.Client) -> None:
    assert found(fhir, "/Observation", {"component-code-value-quantity": "http://loinc.org|8480-6$lt60"}) == {"o3"}
    assert found(fhir, "/Group", {"characteristic-value": "gender$mixed"}) == {"g1"}
    assert found(fhir, "/DiagnosticReport", {"result.code-value-quantity":
                                             f"http://loinc.org|2823-3$gt5.4|{UCUM}|mmol/L"}) == {"dr1"}


# uri
def test_uri_examples(fhir: httpx.Client) -> None:
    assert found(fhir, "/ValueSet", {"url": "http://acme.org/fhir/ValueSet/123"}) == {"vs1"}
    assert found(fhir, "/ValueSet", {"url:below": "http://acme.org/fhir/"}) == {"vs1", "vs2"}
    assert found(fhir, "/ValueSet", {"url:above": "http://acme.org/fhir/ValueSet/123/_history/5"}) == {"vs1"}


# chaining and reverse chaining
def test_chaining_examples(fhir: httpx.Client) -> None:
    assert found(fhir, "/DiagnosticReport", {"subject:Patient.name": "peter"}) == {"dr1"}
    assert found(fhir, "/DiagnosticReport", {"subject.name": "peter"}) == {"dr1"}
    assert found(fhir, "/Patient", {"_has:Observation:patient:code": "1234-5"}) == {"23"}
    assert found(fhir, "/Patient", {"_has:Observation:patient:_has:AuditEvent:entity:agent:identifier":
                                    "MyUserId"}) == {"23"}


# missing
def test_missing_example(fhir: httpx.Client) -> None:
    assert found(fhir, "/Patient", {"gender:missing": "true"}) == {"26"}


# _include, _revinclude, iterate
def test_include_examples(fhir: httpx.Client) -> None:
    params = [("_id", "m1"), ("_include", "MedicationRequest:patient"), ("_include", "MedicationRequest:requester")]
    assert found(fhir, "/MedicationRequest", params, "include") == {"23", "p1"}
    assert found(fhir, "/MedicationRequest", [("_id", "m1"), ("_revinclude", "Provenance:target")],
                 "include") == {"pv1"}
    iterate = [("_id", "m1"), ("_include", "MedicationRequest:patient"), ("_include:iterate", "Patient:link")]
    assert found(fhir, "/MedicationRequest", iterate, "include") == {"23", "24"}


# _sort
def test_sort_example(fhir: httpx.Client) -> None:
    r = fhir.get("/Observation", params={"_sort": "status,-date,category"})
    assert [e["resource"]["id"] for e in r.json()["entry"]] == ["o3", "o2", "o1"]


# _lastUpdated, _id, _summary, _elements
def test_special_parameter_examples(fhir: httpx.Client) -> None:
    assert found(fhir, "/Condition", {"_lastUpdated": "gt2010-10-01"}) == {"c1", "c2"}
    assert found(fhir, "/Patient", {"_id": "23"}) == {"23"}
    assert fhir.get("/Condition", params={"_summary": "count"}).json()["total"] == 2
    element = fhir.get("/Patient", params={"_id": "23", "_elements": "identifier,active,link"}).json()
    resource = element["entry"][0]["resource"]
    assert set(resource) == {"resourceType", "id", "meta", "identifier", "active", "link"}
