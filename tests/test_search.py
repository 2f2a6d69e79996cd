"""Search on small hand-made records whose expected answers are written here."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

JSON = {"Content-Type": "application/fhir+json"}
CCCD = "http://fhir.hl7.org.vn/core/sid/cccd"
BHYT = "http://fhir.hl7.org.vn/core/sid/bhyt"
LOINC = "http://loinc.org"
ICD10 = "http://hl7.org/fhir/sid/icd-10"


def put(fhir: httpx.Client, resource: dict[str, Any]) -> dict[str, Any]:
    r = fhir.put(f"/{resource['resourceType']}/{resource['id']}", json=resource, headers=JSON)
    assert r.status_code in (200, 201), r.text
    return r.json()


PATIENTS = [
    {"resourceType": "Patient", "id": "binh", "gender": "male", "birthDate": "1980-05-01",
     "name": [{"family": "Trần", "given": ["Văn", "Bình"]}],
     "identifier": [{"system": CCCD, "value": "089080000001",
                     "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "NI"}],
                              "text": "Căn cước công dân"}},
                    {"system": BHYT, "value": "GD4898912345678"}],
     "telecom": [{"system": "phone", "value": "0912 345 678"}],
     "address": [{"city": "Long Xuyên", "state": "An Giang", "line": ["12 Trần Hưng Đạo"]}],
     "generalPractitioner": [{"reference": "Practitioner/bs-lan"}],
     "managingOrganization": {"reference": "Organization/bv-an-phu"}},
    {"resourceType": "Patient", "id": "tuyet", "gender": "female", "birthDate": "1992-11",
     "name": [{"family": "Nguyễn", "given": ["Thị", "Ánh", "Tuyết"]}],
     "identifier": [{"system": CCCD, "value": "089192000002"}],
     "address": [{"city": "Châu Đốc", "state": "An Giang"}],
     "managingOrganization": {"reference": "Organization/bv-an-phu"}},
    {"resourceType": "Patient", "id": "doan", "gender": "male", "birthDate": "1975-01-20",
     "name": [{"family": "Đoàn", "given": ["Minh", "Đức"]}], "deceasedDateTime": "2020-03-01",
     "address": [{"city": "Rạch Giá", "state": "An Giang"}]},
    {"resourceType": "Patient", "id": "doan2", "gender": "female", "birthDate": "2001-07-07",
     "name": [{"family": "Doãn", "given": ["Thu", "Hà"]}], "active": True},
]
OTHERS = [
    {"resourceType": "Organization", "id": "bv-an-phu", "name": "Bệnh viện Đa khoa An Phú",
     "partOf": {"reference": "Organization/so-y-te"}},
    {"resourceType": "Organization", "id": "so-y-te", "name": "Sở Y tế An Giang"},
    {"resourceType": "Practitioner", "id": "bs-lan", "name": [{"family": "Phạm", "given": ["Thị", "Lan"]}]},
    {"resourceType": "Encounter", "id": "enc1", "status": "finished",
     "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
     "subject": {"reference": "Patient/binh"}, "period": {"start": "2024-03-01T08:00:00+07:00",
                                                           "end": "2024-03-05T10:00:00+07:00"}},
    {"resourceType": "Observation", "id": "bp1", "status": "final",
     "code": {"coding": [{"system": LOINC, "code": "85354-9", "display": "Blood pressure panel"}],
              "text": "Huyết áp"},
     "subject": {"reference": "Patient/binh"}, "encounter": {"reference": "Encounter/enc1"},
     "effectiveDateTime": "2024-03-02T09:30:00+07:00",
     "component": [
         {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
          "valueQuantity": {"value": 150, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
         {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
          "valueQuantity": {"value": 95, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}]},
    {"resourceType": "Observation", "id": "glu1", "status": "final",
     "code": {"coding": [{"system": LOINC, "code": "2339-0", "display": "Glucose"}], "text": "Đường huyết"},
     "subject": {"reference": "Patient/binh"}, "effectiveDateTime": "2024-03-03",
     "valueQuantity": {"value": 7.2, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"}},
    {"resourceType": "Observation", "id": "glu2", "status": "cancelled",
     "code": {"coding": [{"system": LOINC, "code": "2339-0"}]},
     "subject": {"reference": "Patient/tuyet"}, "effectiveDateTime": "2023-12-31T23:30:00Z",
     "valueQuantity": {"value": 5.1, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"}},
    {"resourceType": "Condition", "id": "htn", "subject": {"reference": "Patient/binh"},
     "code": {"coding": [{"system": ICD10, "code": "I10", "display": "Tăng huyết áp vô căn (nguyên phát)"}]},
     "onsetDateTime": "2019", "clinicalStatus": {"coding": [
         {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]}},
    {"resourceType": "RiskAssessment", "id": "risk1", "status": "final", "subject": {"reference": "Patient/binh"},
     "prediction": [{"probabilityDecimal": 0.25}]},
    {"resourceType": "Task", "id": "ref1", "status": "requested", "intent": "order",
     "for": {"reference": "Patient/binh"}, "authoredOn": "2024-03-05T10:00:00+07:00",
     "focus": {"reference": "ServiceRequest/sr1"}},
    {"resourceType": "ServiceRequest", "id": "sr1", "status": "active", "intent": "order",
     "subject": {"reference": "Patient/binh"}, "authoredOn": "2024-03-05",
     "instantiatesUri": ["http://fhir.hl7.org.vn/protocol/referral/v1"]},
]


@pytest.fixture(scope="module")
def fhir(own_fhir: httpx.Client) -> Iterator[httpx.Client]:
    for resource in PATIENTS + OTHERS:
        put(own_fhir, resource)
    yield own_fhir


def ids(bundle: dict[str, Any], mode: str = "match") -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode]


def search(fhir: httpx.Client, path: str, **params: Any) -> dict[str, Any]:
    r = fhir.get(path, params=params)
    assert r.status_code == 200, r.text
    bundle: dict[str, Any] = r.json()
    assert bundle["type"] == "searchset"
    return bundle


def found(fhir: httpx.Client, path: str, **params: Any) -> set[str]:
    return set(ids(search(fhir, path, **params)))


# ---- string ----------------------------------------------------------------------------------

def test_string_is_accent_and_case_insensitive(fhir: httpx.Client) -> None:
    assert found(fhir, "/Patient", name="nguyen") == {"tuyet"}
    assert found(fhir, "/Patient", name="NGUYỄN") == {"tuyet"}
    assert found(fhir, "/Patient", family="tran") == {"binh"}
    assert found(fhir, "/Patient", given="tuyet") == {"tuyet"}


def test_d_with_stroke_folds_to_d(fhir: httpx.Client) -> None:
    assert found(fhir, "/Patient", family="doan") == {"doan", "doan2"}
    assert found(fhir, "/Patient", given="duc") == {"doan"}


def test_name_as_a_vietnamese_desk_types_it(fhir: httpx.Client) -> None:
    assert found(fhir, "/Patient", name="tran van") == {"binh"}
    assert found(fhir, "/Patient", name="tran van binh") == {"binh"}
    assert found(fhir, "/Patient", name="nguyen thi anh") == {"tuyet"}
    assert found(fhir, "/Patient", name="van binh") == {"binh"}
    assert found(fhir, "/Patient", name="binh tran") == {"binh"}  # Western order, for foreign patients
    assert found(fhir, "/Patient", name="tran thi") == set()


def test_string_exact_and_contains(fhir: httpx.Client) -> None:
    assert found(fhir, "/Patient", **{"family:exact": "Đoàn"}) == {"doan"}
    assert found(fhir, "/Patient", **{"family:exact": "Doãn"}) == {"doan2"}
    assert found(fhir, "/Patient", **{"family:exact": "doàn"}) == set()
    assert found(fhir, "/Patient", **{"name:contains": "uye"}) == {"tuyet"}


def test_address_city(fhir: httpx.Client) -> None:
    assert found(fhir, "/Patient", **{"address-city": "long xuyen"}) == {"binh"}
    assert found(fhir, "/Patient", **{"address-city": "chau doc"}) == {"tuyet"}
    assert found(fhir, "/Patient", address="an giang") == {"binh", "tuyet", "doan"}


# ---- token -----------------------------------------------------------------------------------

def test_token_forms(fhir: httpx.Client) -> None:
    assert found(fhir, "/Patient", identifier=f"{CCCD}|089080000001") == {"binh"}
    assert found(fhir, "/Patient", identifier="089080000001") == {"binh"}
    assert found(fhir, "/Patient", identifier=f"{BHYT}|") == {"binh"}
    assert found(fhir, "/Patient", identifier=f"{BHYT}|089080000001") == set()
    assert found(fhir, "/Patient", gender="female") == {"tuyet", "doan2"}
    assert found(fhir, "/Patient", active="true") == {"doan2"}


def test_token_modifiers(fhir: httpx.Client) -> None:
    assert found(fhir, "/Patient", **{"gender:not": "male"}) == {"tuyet", "doan2"}
    assert found(fhir, "/Observation", **{"code:text": "duong huyet"}) == {"glu1"}
    assert found(fhir, "/Observation", **{"code:text": "glucose"}) == {"glu1"}
    assert found(fhir, "/Patient", **{"identifier:of-type":
                                      "http://terminology.hl7.org/CodeSystem/v2-0203|NI|089080000001"}) == {"binh"}
    assert found(fhir, "/Condition", **{"code:text": "tang huyet ap"}) == {"htn"}


def test_phone_matches_whatever_the_spacing(fhir: httpx.Client) -> None:
    assert found(fhir, "/Patient", phone="0912345678") == {"binh"}
    assert found(fhir, "/Patient", phone="0912 345 678") == {"binh"}


def test_deceased(fhir: httpx.Client) -> None:
    assert found(fhir, "/Patient", deceased="true") == {"doan"}
    assert "doan" not in found(fhir, "/Patient", deceased="false")


# ---- missing, _id, OR and AND ------------------------------------------------------------------

def test_missing(fhir: httpx.Client) -> None:
    assert found(fhir, "/Patient", **{"identifier:missing": "true"}) == {"doan", "doan2"}
    assert found(fhir, "/Patient", **{"identifier:missing": "false"}) == {"binh", "tuyet"}


def test_id_or_and(fhir: httpx.Client) -> None:
    assert found(fhir, "/Patient", _id="binh,tuyet") == {"binh", "tuyet"}
    assert found(fhir, "/Patient", gender="male", family="doan") == {"doan"}
    r = fhir.get("/Patient", params=[("family", "doan"), ("family", "đoàn")])
    assert set(ids(r.json())) == {"doan", "doan2"}  # both fold to "doan"
    assert found(fhir, "/Patient", family="tran,nguyen") == {"binh", "tuyet"}


# ---- date ------------------------------------------------------------------------------------

def test_date_precision(fhir: httpx.Client) -> None:
    assert found(fhir, "/Patient", birthdate="1980") == {"binh"}
    assert found(fhir, "/Patient", birthdate="1980-05") == {"binh"}
    assert found(fhir, "/Patient", birthdate="1980-05-01") == {"binh"}
    assert found(fhir, "/Patient", birthdate="1980-05-02") == set()
    # a stored month is inside the year, but not inside one day of it
    assert found(fhir, "/Patient", birthdate="1992") == {"tuyet"}
    assert found(fhir, "/Patient", birthdate="1992-11-15") == set()


def test_date_prefixes(fhir: httpx.Client) -> None:
    assert found(fhir, "/Patient", birthdate="lt1980") == {"doan"}
    assert found(fhir, "/Patient", birthdate="le1980-05-01") == {"doan", "binh"}
    assert found(fhir, "/Patient", birthdate="gt1992-11-30") == {"doan2"}
    assert found(fhir, "/Patient", birthdate="ge1992-11-30") == {"tuyet", "doan2"}
    assert found(fhir, "/Patient", birthdate="sa1992") == {"doan2"}
    assert found(fhir, "/Patient", birthdate="eb1976") == {"doan"}
    assert found(fhir, "/Patient", birthdate="ne1980-05-01") == {"tuyet", "doan", "doan2"}
    assert found(fhir, "/Patient", birthdate="ap1980-05-03") == {"binh"}
    r = fhir.get("/Patient", params=[("birthdate", "ge1975"), ("birthdate", "lt1990")])
    assert set(ids(r.json())) == {"doan", "binh"}


def test_period_overlaps(fhir: httpx.Client) -> None:
    assert found(fhir, "/Encounter", date="2024-03-03") == set()  # the day does not contain the stay
    assert found(fhir, "/Encounter", date="2024-03") == {"enc1"}
    assert found(fhir, "/Encounter", date="ge2024-03-04") == {"enc1"}
    assert found(fhir, "/Encounter", date="le2024-03-01") == {"enc1"}
    assert found(fhir, "/Encounter", date="gt2024-03-06") == set()


def test_dates_without_zone_are_local_time(fhir: httpx.Client) -> None:
    # 2023-12-31T23:30Z is 2024-01-01 06:30 in Vietnam
    assert found(fhir, "/Observation", date="2024-01-01") == {"glu2"}
    assert found(fhir, "/Observation", date="2023-12-31T23:30:00Z") == {"glu2"}


def test_last_updated(fhir: httpx.Client) -> None:
    assert "binh" in found(fhir, "/Patient", _lastUpdated="gt2020-01-01")
    assert found(fhir, "/Patient", _lastUpdated="lt2020-01-01") == set()


# ---- number, quantity, composite, uri -----------------------------------------------------------

def test_number(fhir: httpx.Client) -> None:
    assert found(fhir, "/RiskAssessment", probability="0.25") == {"risk1"}
    assert found(fhir, "/RiskAssessment", probability="gt0.2") == {"risk1"}
    assert found(fhir, "/RiskAssessment", probability="lt0.2") == set()


def test_quantity(fhir: httpx.Client) -> None:
    assert found(fhir, "/Observation", **{"value-quantity": "7.2"}) == {"glu1"}
    assert found(fhir, "/Observation", **{"value-quantity": "gt6|http://unitsofmeasure.org|mmol/L"}) == {"glu1"}
    assert found(fhir, "/Observation", **{"value-quantity": "lt6||mmol/L"}) == {"glu2"}
    assert found(fhir, "/Observation", **{"value-quantity": "gt6||mg/dL"}) == set()
    assert found(fhir, "/Observation", **{"component-value-quantity": "ge150"}) == {"bp1"}


def test_composite(fhir: httpx.Client) -> None:
    assert found(fhir, "/Observation", **{"component-code-value-quantity": f"{LOINC}|8480-6$gt140"}) == {"bp1"}
    assert found(fhir, "/Observation", **{"component-code-value-quantity": f"{LOINC}|8462-4$gt140"}) == set()
    assert found(fhir, "/Observation", **{"code-value-quantity": f"{LOINC}|2339-0$gt7"}) == {"glu1"}


def test_uri(fhir: httpx.Client) -> None:
    assert found(fhir, "/ServiceRequest", **{"instantiates-uri": "http://fhir.hl7.org.vn/protocol/referral/v1"}) \
        == {"sr1"}
    assert found(fhir, "/ServiceRequest", **{"instantiates-uri:below": "http://fhir.hl7.org.vn/protocol"}) == {"sr1"}
    assert found(fhir, "/ServiceRequest", **{"instantiates-uri:above":
                                             "http://fhir.hl7.org.vn/protocol/referral/v1/extra"}) == {"sr1"}


# ---- references, chains, _has --------------------------------------------------------------------

def test_reference_forms(fhir: httpx.Client) -> None:
    assert found(fhir, "/Observation", subject="Patient/binh") == {"bp1", "glu1"}
    assert found(fhir, "/Observation", subject="binh") == {"bp1", "glu1"}
    assert found(fhir, "/Observation", **{"subject:Patient": "binh"}) == {"bp1", "glu1"}
    assert found(fhir, "/Observation", patient="tuyet") == {"glu2"}
    assert found(fhir, "/Observation", encounter="Encounter/enc1") == {"bp1"}
    base = str(fhir.base_url).rstrip("/")
    assert found(fhir, "/Observation", subject=f"{base}/Patient/binh") == {"bp1", "glu1"}
    assert found(fhir, "/Task", patient="binh") == {"ref1"}


def test_chains(fhir: httpx.Client) -> None:
    assert found(fhir, "/Observation", **{"subject:Patient.name": "nguyen"}) == {"glu2"}
    assert found(fhir, "/Observation", **{"patient.identifier": "089080000001"}) == {"bp1", "glu1"}
    # two levels: observations of patients managed by an organisation that is part of the Sở Y tế
    assert found(fhir, "/Observation", **{"patient.organization.partof": "Organization/so-y-te"}) \
        == {"bp1", "glu1", "glu2"}
    assert found(fhir, "/Observation", **{"patient.organization.name": "an phu"}) == {"bp1", "glu1", "glu2"}


def test_reverse_chain(fhir: httpx.Client) -> None:
    assert found(fhir, "/Patient", **{"_has:Observation:patient:code": "2339-0"}) == {"binh", "tuyet"}
    assert found(fhir, "/Patient", **{"_has:Observation:patient:status": "cancelled"}) == {"tuyet"}
    assert found(fhir, "/Patient", **{"_has:Condition:subject:code": f"{ICD10}|I10"}) == {"binh"}
    # a chain inside _has: patients with an observation made during a finished encounter
    assert found(fhir, "/Patient", **{"_has:Observation:patient:encounter.status": "finished"}) == {"binh"}
    # _has inside _has: organisations managing a patient who has a glucose result
    assert found(fhir, "/Organization", **{"_has:Patient:organization:_has:Observation:patient:code": "2339-0"}) \
        == {"bv-an-phu"}


# ---- _include, _revinclude --------------------------------------------------------------------

def test_include_and_revinclude(fhir: httpx.Client) -> None:
    bundle = search(fhir, "/Observation", _id="glu1", _include="Observation:subject")
    assert ids(bundle) == ["glu1"]
    assert ids(bundle, "include") == ["binh"]
    bundle = search(fhir, "/Patient", _id="binh", _revinclude="Observation:subject")
    assert set(ids(bundle, "include")) == {"bp1", "glu1"}
    bundle = search(fhir, "/Observation", _id="glu1", _include="Observation:subject:Group")
    assert ids(bundle, "include") == []


def test_include_iterate(fhir: httpx.Client) -> None:
    params = [("_id", "glu1"), ("_include", "Observation:subject"),
              ("_include:iterate", "Patient:organization"), ("_include:iterate", "Organization:partof")]
    bundle = fhir.get("/Observation", params=params).json()
    assert set(ids(bundle, "include")) == {"binh", "bv-an-phu", "so-y-te"}
    without = fhir.get("/Observation", params=[("_id", "glu1"), ("_include", "Observation:subject"),
                                               ("_include", "Patient:organization")]).json()
    assert set(ids(without, "include")) == {"binh"}


def test_include_wildcard(fhir: httpx.Client) -> None:
    bundle = search(fhir, "/Patient", _id="binh", _include="*")
    assert set(ids(bundle, "include")) == {"bs-lan", "bv-an-phu"}


# ---- sort, paging, totals ---------------------------------------------------------------------

def test_sort(fhir: httpx.Client) -> None:
    assert ids(search(fhir, "/Patient", _sort="birthdate")) == ["doan", "binh", "tuyet", "doan2"]
    assert ids(search(fhir, "/Patient", _sort="-birthdate")) == ["doan2", "tuyet", "binh", "doan"]
    # family name first, as the desk reads it: "doan minh duc" < "doan thu ha" < "nguyen …" < "tran …"
    assert ids(search(fhir, "/Patient", _sort="name")) == ["doan", "doan2", "tuyet", "binh"]
    assert ids(search(fhir, "/Patient", _sort="gender,-birthdate")) == ["doan2", "tuyet", "binh", "doan"]
    assert ids(search(fhir, "/Patient", _sort="-_id"))[:1] == ["tuyet"]


def test_paging_links(fhir: httpx.Client) -> None:
    first = search(fhir, "/Patient", _sort="birthdate", _count=3)
    assert ids(first) == ["doan", "binh", "tuyet"]
    links = {link["relation"]: link["url"] for link in first["link"]}
    assert "previous" not in links
    second = fhir.get(links["next"]).json()
    assert ids(second) == ["doan2"]
    back = {link["relation"]: link["url"] for link in second["link"]}
    assert "next" not in back
    assert ids(fhir.get(back["previous"]).json()) == ["doan", "binh", "tuyet"]


def test_total_and_count(fhir: httpx.Client) -> None:
    assert search(fhir, "/Patient", gender="male")["total"] == 2
    big = search(fhir, "/Patient", _count=1)
    assert "total" not in big
    assert search(fhir, "/Patient", _count=1, _total="accurate")["total"] == 4
    assert "total" not in search(fhir, "/Patient", _count=1, _total="none")
    count_only = search(fhir, "/Patient", _summary="count")
    assert count_only["total"] == 4
    assert "entry" not in count_only


def test_summary_and_elements(fhir: httpx.Client) -> None:
    summary = search(fhir, "/Patient", _id="binh", _summary="true")["entry"][0]["resource"]
    assert "name" in summary and "birthDate" in summary
    assert "telecom" in summary  # a summary element
    assert summary["meta"]["tag"][-1]["code"] == "SUBSETTED"
    text_only = search(fhir, "/Patient", _id="binh", _summary="text")["entry"][0]["resource"]
    assert "name" not in text_only
    elements = search(fhir, "/Patient", _id="binh", _elements="gender,birthDate")["entry"][0]["resource"]
    assert set(elements) == {"resourceType", "id", "meta", "gender", "birthDate"}
    data = search(fhir, "/Observation", _id="glu1", _summary="data")["entry"][0]["resource"]
    assert "text" not in data and "valueQuantity" in data


# ---- handling of unknown and malformed parameters ------------------------------------------------

def test_unknown_parameter_lenient_and_strict(fhir: httpx.Client) -> None:
    bundle = search(fhir, "/Patient", gender="female", nickname="bo")
    assert set(ids(bundle)) == {"tuyet", "doan2"}
    outcome = [e for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert outcome and "nickname" in outcome[0]["resource"]["issue"][0]["diagnostics"]
    strict = fhir.get("/Patient", params={"nickname": "bo"}, headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400
    assert strict.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("params", [
    {"birthdate": "1980-13-45"},
    {"birthdate": "xx1980"},
    {"birthdate": "yesterday"},
    {"probability": "abc"},
    {"value-quantity": "1|2"},
    {"gender:exact": "male"},
    {"identifier:missing": "maybe"},
    {"_sort": "nickname"},
    {"_count": "-1"},
    {"_summary": "brief"},
    {"_total": "exactish"},
    {"_include": "Patient:gender"},
    {"_cursor": "not-a-cursor"},
    {"name": ""},
    {"component-code-value-quantity": "8480-6"},
    {"_has:Observation": "x"},
])
def test_malformed_values_are_400(fhir: httpx.Client, params: dict[str, str]) -> None:
    path = "/RiskAssessment" if "probability" in params else \
        "/Observation" if "value-quantity" in params or "component-code-value-quantity" in params else "/Patient"
    r = fhir.get(path, params=params)
    assert r.status_code == 400, (params, r.text)
    assert r.json()["resourceType"] == "OperationOutcome"


# ---- the other ways in: POST _search, system search, compartments ----------------------------------

def test_post_search(fhir: httpx.Client) -> None:
    r = fhir.post("/Patient/_search", data={"name": "nguyen"},
                  headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200
    assert ids(r.json()) == ["tuyet"]
    assert r.json()["link"][0]["url"].endswith("/Patient?name=nguyen")


def test_system_search(fhir: httpx.Client) -> None:
    bundle = search(fhir, "", _type="Patient,Practitioner", _id="binh,bs-lan")
    assert set(ids(bundle)) == {"binh", "bs-lan"}
    assert fhir.get("", params={"_type": "Patient,Nope"}).status_code == 400
    assert fhir.get("", params={"_type": "Patient,Observation", "gender": "male"}).status_code == 400


def test_compartment_search(fhir: httpx.Client) -> None:
    assert set(ids(search(fhir, "/Patient/binh/Observation"))) == {"bp1", "glu1"}
    assert set(ids(search(fhir, "/Patient/binh/Observation", code="2339-0"))) == {"glu1"}
    assert set(ids(search(fhir, "/Patient/binh/ServiceRequest"))) == {"sr1"}
    assert set(ids(search(fhir, "/Patient/tuyet/Condition"))) == set()


def test_work_list_status_and_date(fhir: httpx.Client) -> None:
    assert found(fhir, "/Task", status="requested", **{"authored-on": "ge2024-03-01"}) == {"ref1"}
    assert found(fhir, "/ServiceRequest", status="active", authored="2024-03-05") == {"sr1"}
