"""Patient matching for the referral exchange: `POST /fhir/Patient/$match`, and the BHYT number forms.

A server with a database of its own, holding the administrative-unit lists loaded by the command IT
staff run (`emr terminology load`), so old (three-level) and new (two-level) addresses compare through
the real mapping. Patients are registered through the API as a desk would; a registration clerk asks
`$match`. Each test uses its own birth dates, so the tests do not see each other's patients as
candidates. Units are read from the source lists (`../shared/data/terminology/`), not written down here.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from referral import BHYT_SYSTEMS, CCCD_SYSTEMS, citizen_id, insurance_number, national_numbers
from tests.conftest import SHARED_DATA, LiveServer, make_settings

TERMINOLOGY = SHARED_DATA / "terminology"
CCCD_MOH, CCCD_HL7VN = CCCD_SYSTEMS
BHYT_MOH, BHYT_HL7VN = BHYT_SYSTEMS
MR_SYSTEM = "http://fhir.ehealth.gov.vn/core/sid/patient-internal-id"
MATCH_GRADE = "http://hl7.org/fhir/StructureDefinition/match-grade"
ADMIN_UNIT_FILES = ("vn_provinces_2025.csv", "vn_wards_2025.csv", "vn_admin_units_pre2025.csv",
                    "vn_ward_mapping_pre2025_to_2025.csv")


def emr_cli(database: str, mongo_uri: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EMR_MONGODB_URI": mongo_uri, "EMR_DATABASE": database}
    return subprocess.run([sys.executable, "-m", "emr.cli", *args], env=env, capture_output=True, text=True,
                          timeout=900, cwd=Path(__file__).resolve().parents[1])


def rows(name: str) -> list[dict[str, str]]:
    with (TERMINOLOGY / name).open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def server(mongo_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    lists = tmp_path_factory.mktemp("admin-units")
    for name in ADMIN_UNIT_FILES:
        shutil.copy(TERMINOLOGY / name, lists / name)
    database = f"test_match_{uuid.uuid4().hex[:10]}"
    loaded = emr_cli(database, mongo_uri, "terminology", "load", str(lists))
    assert loaded.returncode == 0, loaded.stderr
    with LiveServer(make_settings(mongo_uri, database=database)) as live:
        yield live


@pytest.fixture(scope="module")
def desk(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client("clerk") as client:
        yield client


def register(client: httpx.Client, patient: dict[str, Any]) -> str:
    created = client.post("/Patient", json={"resourceType": "Patient", **patient})
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def match(client: httpx.Client, patient: dict[str, Any], **params: Any) -> list[dict[str, Any]]:
    """The entries of the answer to $match, checked to be the operation's searchset shape."""
    parameters: list[dict[str, Any]] = [{"name": "resource", "resource": {"resourceType": "Patient", **patient}}]
    if "only_certain" in params:
        parameters.append({"name": "onlyCertainMatches", "valueBoolean": params["only_certain"]})
    if "count" in params:
        parameters.append({"name": "count", "valueInteger": params["count"]})
    answer = client.post("/Patient/$match", json={"resourceType": "Parameters", "parameter": parameters})
    assert answer.status_code == 200, answer.text
    bundle = answer.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    entries = [e for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]
    assert bundle["total"] == len(entries)
    for entry in entries:
        assert entry["resource"]["resourceType"] == "Patient"
        assert 0.0 <= entry["search"]["score"] <= 1.0
        assert entry["search"]["extension"][0]["url"] == MATCH_GRADE
    return entries


def graded(entries: list[dict[str, Any]]) -> dict[str, tuple[str, float]]:
    return {e["resource"]["id"]: (grade(e), e["search"]["score"]) for e in entries}


def grade(entry: dict[str, Any]) -> str:
    return str(entry["search"]["extension"][0]["valueCode"])


def name(family: str, *given: str) -> list[dict[str, Any]]:
    return [{"use": "official", "family": family, "given": list(given), "text": " ".join([family, *given])}]


def cccd(value: str, system: str = CCCD_MOH) -> dict[str, str]:
    return {"system": system, "value": value}


# ---- the insurance number's three forms (Python API) ---------------------------------------------

def test_the_three_insurance_number_forms_are_read_and_compared() -> None:
    card = insurance_number("DN4 89 0123456789")
    assert card is not None and card.form == "card" and card.text == "DN4890123456789"
    assert (card.group, card.benefit_level, card.province, card.social_insurance) == ("DN", 4, "89", "0123456789")
    social = insurance_number("0123456789")
    assert social is not None and social.form == "social-insurance" and social.social_insurance == "0123456789"
    by_cccd = insurance_number("089-080-012345")
    assert by_cccd is not None and by_cccd.form == "citizen-id" and by_cccd.citizen_id == "089080012345"
    assert by_cccd.social_insurance is None  # a CCCD says nothing of the social-insurance number
    assert insurance_number("hs4910123456789").text == "HS4910123456789"  # type: ignore[union-attr]
    for wrong in ("DN6890123456789", "D4890123456789", "012345678", "01234567890", "", "BHYT"):
        assert insurance_number(wrong) is None, wrong
    assert citizen_id(" 089 080 012345 ") == "089080012345" and citizen_id("089080012") is None

    numbers = national_numbers({"resourceType": "Patient", "identifier": [
        {"system": BHYT_MOH, "value": "DN4890123456789"}, {"system": BHYT_HL7VN, "value": "HS4910123456789"},
        {"system": CCCD_HL7VN, "value": "089080012345"}, {"system": BHYT_MOH, "value": "091180054321"},
        {"system": MR_SYSTEM, "value": "0123456789"}, {"system": CCCD_MOH, "value": "not a number"}]})
    assert numbers.social_insurance == {"0123456789"}  # both cards, one person: group and province changed
    assert numbers.citizen_ids == {"089080012345", "091180054321"}  # the MR number is not read at all
    assert numbers.cards == {"DN4890123456789", "HS4910123456789"}


# ---- national numbers: certain links --------------------------------------------------------------

@pytest.mark.parametrize(("stored_system", "sent_system"), [(CCCD_MOH, CCCD_HL7VN), (CCCD_HL7VN, CCCD_MOH)])
def test_the_same_cccd_under_either_guide_is_certain(server: LiveServer, desk: httpx.Client, stored_system: str,
                                                     sent_system: str) -> None:
    number = f"0890{80 if stored_system == CCCD_MOH else 81}{uuid.uuid4().int % 10**6:06d}"
    ours = register(server.client(), {"identifier": [cccd(number, stored_system)], "name": name("Lê", "Văn", "Tám"),
                                      "gender": "male", "birthDate": "1980-02-11"})
    sent = {"identifier": [cccd(number, sent_system), {"system": "urn:oid:1.2.3.district", "value": "BN-77"}],
            "name": [{"text": "Le Van Tam"}], "gender": "male", "birthDate": "1980-02-11"}
    entries = match(desk, sent)
    assert graded(entries)[ours] == ("certain", 1.0)
    assert entries[0]["resource"]["id"] == ours


def test_a_number_match_that_the_demographics_contradict_is_only_probable(server: LiveServer,
                                                                          desk: httpx.Client) -> None:
    ours = register(server.client(), {"identifier": [cccd("089082111222")], "name": name("Phạm", "Thị", "Hoa"),
                                      "gender": "female", "birthDate": "1982-04-05"})
    sent = {"identifier": [cccd("089082111222", CCCD_HL7VN)], "name": name("Võ", "Văn", "Hùng"),
            "gender": "male", "birthDate": "1961-09-30"}
    assert graded(match(desk, sent))[ours] == ("probable", 0.8)  # a mistyped number must not join two charts


@pytest.mark.parametrize(("stored", "sent"), [
    ({"system": BHYT_MOH, "value": "DN4890123400001"}, {"system": BHYT_HL7VN, "value": "0123400001"}),
    ({"system": BHYT_HL7VN, "value": "0123400002"}, {"system": BHYT_MOH, "value": "GD4890123400002"}),
    ({"system": BHYT_MOH, "value": "HS4890123400003"}, {"system": BHYT_MOH, "value": "DN2910123400003"}),
    ({"system": CCCD_MOH, "value": "089083400004"}, {"system": BHYT_HL7VN, "value": "089083400004"}),
], ids=["card-then-social-insurance", "social-insurance-then-card", "card-group-and-province-changed",
        "cccd-as-insurance-number"])
def test_the_insurance_number_in_any_form_links(server: LiveServer, desk: httpx.Client, stored: dict[str, str],
                                                sent: dict[str, str]) -> None:
    birth = f"1983-05-{int(stored['value'][-1]) + 10}"
    ours = register(server.client(), {"identifier": [stored], "name": name("Huỳnh", "Thị", "Mai"),
                                      "gender": "female", "birthDate": birth})
    found = graded(match(desk, {"identifier": [sent], "name": name("Huynh", "Thi", "Mai"), "gender": "female",
                                "birthDate": birth}))
    assert found[ours][0] == "certain" and found[ours][1] >= 0.95


# ---- the same name and birth date with another CCCD ---------------------------------------------

def test_the_same_name_and_birth_date_with_another_cccd_is_never_linked(server: LiveServer,
                                                                         desk: httpx.Client) -> None:
    ours = register(server.client(), {"identifier": [cccd("089075000111")], "name": name("Trần", "Văn", "Bình"),
                                      "gender": "male", "birthDate": "1975-03-04",
                                      "address": [{"state": "An Giang", "city": "Phường Long Xuyên"}]})
    sent = {"identifier": [cccd("089075000999", CCCD_HL7VN)], "name": name("Trần", "Văn", "Bình"),
            "gender": "male", "birthDate": "1975-03-04",
            "address": [{"state": "An Giang", "city": "Phường Long Xuyên"}]}
    assert graded(match(desk, sent)) == {ours: ("certainly-not", 0.0)}
    assert match(desk, sent, only_certain=True) == []


def test_a_different_insurance_number_lowers_a_look_alike(server: LiveServer, desk: httpx.Client) -> None:
    person = {"name": name("Quách", "Văn", "Lộc"), "gender": "male", "birthDate": "1977-07-17"}
    other = register(server.client(), {**person, "identifier": [{"system": BHYT_MOH, "value": "DN4890000077777"}]})
    plain = register(server.client(), person)
    found = graded(match(desk, {**person, "identifier": [{"system": BHYT_HL7VN, "value": "0000011111"}],
                                "birthDate": "1977-07-17"}))
    assert found[plain][0] == "probable"
    assert found[other][0] == "possible" and found[other][1] < found[plain][1] / 2 + 0.01


# ---- names: candidates for a clerk, never links -------------------------------------------------

@pytest.mark.parametrize(("stored", "sent", "sex", "birth"), [
    (name("Nguyễn", "Văn", "An"), name("Nguyen", "Van", "An"), "male", "1990-01-21"),
    (name("Đặng", "Thị", "Đào"), [{"text": "DANG THI DAO"}], "female", "1990-01-22"),
    (name("Nguyễn", "Thị", "Ánh", "Tuyết"), [{"text": "Nguyễn Thị Ánh Tuyết"}], "female", "1990-01-23"),
], ids=["without-diacritics", "d-folds-to-d", "text-only"])
def test_vietnamese_names_match_with_and_without_diacritics(server: LiveServer, desk: httpx.Client,
                                                            stored: list[dict[str, Any]], sent: list[dict[str, Any]],
                                                            sex: str, birth: str) -> None:
    ours = register(server.client(), {"name": stored, "gender": sex, "birthDate": birth})
    grade_of, score = graded(match(desk, {"name": sent, "gender": sex, "birthDate": birth}))[ours]
    assert grade_of == "probable" and 0.7 <= score <= 0.9


def test_reordered_given_names_are_still_a_candidate(server: LiveServer, desk: httpx.Client) -> None:
    ours = register(server.client(), {"name": name("Lý", "Thị", "Ánh", "Tuyết"), "gender": "female",
                                      "birthDate": "1991-07-08"})
    in_order = graded(match(desk, {"name": name("Lý", "Thị", "Ánh", "Tuyết"), "gender": "female",
                                   "birthDate": "1991-07-08"}))[ours]
    reordered = graded(match(desk, {"name": name("Lý", "Ánh", "Tuyết", "Thị"), "gender": "female",
                                    "birthDate": "1991-07-08"}))[ours]
    western = graded(match(desk, {"name": [{"text": "Tuyet Anh Thi Ly"}], "gender": "female",
                                  "birthDate": "1991-07-08"}))[ours]
    assert in_order[0] == reordered[0] == western[0] == "probable"
    assert in_order[1] > reordered[1] >= western[1]


def test_names_that_differ_only_by_tone_marks_are_weaker(server: LiveServer, desk: httpx.Client) -> None:
    doan = register(server.client(), {"name": name("Đoàn", "Văn", "Minh"), "gender": "male",
                                      "birthDate": "1992-12-01"})
    doan_with_tilde = register(server.client(), {"name": name("Doãn", "Văn", "Minh"), "gender": "male",
                                                 "birthDate": "1992-12-01"})
    found = graded(match(desk, {"name": name("Đoàn", "Văn", "Minh"), "gender": "male", "birthDate": "1992-12-01"}))
    assert found[doan][0] == "probable"
    assert found[doan_with_tilde][0] == "possible" and found[doan_with_tilde][1] < found[doan][1]
    unmarked = graded(match(desk, {"name": name("Doan", "Van", "Minh"), "gender": "male", "birthDate": "1992-12-01"}))
    assert unmarked[doan][0] == unmarked[doan_with_tilde][0] == "probable"  # without marks nobody can tell them apart


def test_a_mistyped_or_partial_birth_date_still_finds_the_patient(server: LiveServer, desk: httpx.Client) -> None:
    ours = register(server.client(), {"name": name("Tô", "Văn", "Sáu"), "gender": "male", "birthDate": "1948"})
    swapped = register(server.client(), {"name": name("Tô", "Thị", "Bảy"), "gender": "female",
                                         "birthDate": "1948-03-07"})
    assert graded(match(desk, {"name": name("To", "Van", "Sau"), "gender": "male", "birthDate": "1948-06-01"}))[
        ours][0] == "possible"
    assert graded(match(desk, {"name": name("Tô", "Thị", "Bảy"), "gender": "female", "birthDate": "1948-07-03"}))[
        swapped][0] == "possible"


# ---- what is never compared, and no match -------------------------------------------------------

def test_a_local_record_number_is_never_compared(server: LiveServer, desk: httpx.Client) -> None:
    register(server.client(), {"identifier": [{"system": MR_SYSTEM, "value": "BN-2024-000123"}],
                               "name": name("Châu", "Văn", "Lợi"), "gender": "male", "birthDate": "1966-06-06"})
    sent = {"identifier": [{"system": MR_SYSTEM, "value": "BN-2024-000123"}], "name": name("Kim", "Thị", "Sương"),
            "gender": "female", "birthDate": "1999-09-09"}
    assert match(desk, sent) == []


def test_no_candidate_is_an_empty_bundle(desk: httpx.Client) -> None:
    entries = match(desk, {"identifier": [cccd("096199123456")], "name": name("Ông", "Văn", "Không"),
                           "gender": "male", "birthDate": "1901-01-01"})
    assert entries == []


# ---- addresses: before and after 1 July 2025 ----------------------------------------------------

def _renamed(old_province: str) -> dict[str, str]:
    """An old commune of `old_province` taken whole into a today's commune of another name."""
    return next(r for r in rows("vn_ward_mapping_pre2025_to_2025.csv") if r["old_province_code"] == old_province
                and r["split"] == "whole" and r["old_ward_name"] != r["new_ward_name"])


def test_old_three_level_and_new_two_level_addresses_compare(server: LiveServer, desk: httpx.Client) -> None:
    an_giang, kien_giang = _renamed("89"), _renamed("91")
    elsewhere = next(r for r in rows("vn_wards_2025.csv") if r["province_code"] != "91")
    person = {"name": name("Dương", "Văn", "Phúc"), "gender": "male", "birthDate": "1970-10-10"}
    same_commune = register(server.client(), {**person, "address": [
        {"use": "home", "city": an_giang["new_ward_name"], "state": an_giang["new_province_name"]}]})
    same_province = register(server.client(), {**person, "address": [
        {"use": "home", "city": kien_giang["new_ward_name"], "state": kien_giang["new_province_name"]}]})
    other_province = register(server.client(), {**person, "address": [
        {"use": "home", "city": elsewhere["name"], "state": elsewhere["province_name"]}]})
    sent = {**person, "address": [{"use": "home", "line": ["Ấp 3"], "city": an_giang["old_ward_name"],
                                   "district": an_giang["old_district_name"], "state": an_giang["old_province_name"]}]}
    found = graded(match(desk, sent))
    assert found[same_commune][0] == found[same_province][0] == "probable"
    assert found[other_province][0] == "possible"
    assert found[same_commune][1] > found[same_province][1] > found[other_province][1]

    # An old Kiên Giang address is today's An Giang; written as one line of text, as the Ministry's guide has it.
    text = f"{kien_giang['old_ward_name']}, {kien_giang['old_district_name']}, {kien_giang['old_province_name']}"
    from_kien_giang = graded(match(desk, {**person, "address": [{"text": text}]}))
    assert from_kien_giang[same_province][1] > from_kien_giang[same_commune][1] > from_kien_giang[other_province][1]


def test_coded_addresses_compare_across_the_reform(server: LiveServer, desk: httpx.Client) -> None:
    row = _renamed("89")
    person = {"name": name("Lâm", "Thị", "Cúc"), "gender": "female", "birthDate": "1972-02-02"}
    new = "https://emr.angiang.vn/fhir/CodeSystem/dvhc-2025"
    coded_new = register(server.client(), {**person, "address": [{"extension": [
        {"url": "http://fhir.hl7.org.vn/core/StructureDefinition/vn-ext-province",
         "valueCoding": {"system": new, "code": row["new_province_code"]}},
        {"url": "http://fhir.hl7.org.vn/core/StructureDefinition/vn-ext-ward",
         "valueCoding": {"system": new, "code": row["new_ward_code"]}},
    ], "text": row["new_ward_name"]}]})
    plain = register(server.client(), person)
    old = "https://emr.angiang.vn/fhir/CodeSystem/dvhc-pre2025"
    sent = {**person, "address": [{"extension": [{
        "url": "http://fhir.ehealth.gov.vn/core/StructureDefinition/extension-administrative-address",
        "extension": [{"url": "state", "valueCodeableConcept": {"coding": [{"system": old,
                                                                             "code": row["old_province_code"]}]}},
                      {"url": "district", "valueCodeableConcept": {"coding": [{"system": old,
                                                                                "code": row["old_district_code"]}]}},
                      {"url": "ward", "valueCodeableConcept": {"coding": [{"system": old,
                                                                            "code": row["old_ward_code"]}]}}]}],
        "text": f"{row['old_ward_name']}, {row['old_district_name']}, {row['old_province_name']}"}]}
    found = graded(match(desk, sent))
    assert found[coded_new][1] > found[plain][1]


def test_without_the_lists_addresses_of_one_form_compare_by_name(live_server: LiveServer) -> None:
    """A server whose database holds no administrative-unit lists (the session's shared one)."""
    person = {"name": name("Thạch", "Thị", "Sa", "Ra"), "gender": "female", "birthDate": "1931-11-11"}
    with live_server.client() as admin, live_server.client("clerk") as clerk:
        here = register(admin, {**person, "address": [{"line": ["Ấp Phú Hữu", "Xã Phú Hiệp"],
                                                       "district": "Huyện Phú Tân", "state": "Tỉnh An Giang"}]})
        nearby = register(admin, {**person, "address": [{"text": "Xã Phú Thạnh, Huyện Phú Tân, An Giang"}]})
        moved = register(admin, {**person, "address": [{"city": "Phường Rạch Giá", "state": "An Giang"}]})
        found = graded(match(clerk, {**person, "address": [{"text": "Xa Phu Hiep, H. Phu Tan, tinh An Giang"}]}))
    assert found[here][1] > found[nearby][1] > found[moved][1]  # same commune; same province; other form: unknown
    assert {g for g, _ in found.values()} == {"probable"}


# ---- the operation's parameters and who may call it ---------------------------------------------

def test_only_certain_matches_and_count(server: LiveServer, desk: httpx.Client) -> None:
    person = {"name": name("Mai", "Văn", "Tư"), "gender": "male", "birthDate": "1960-04-04"}
    certain = register(server.client(), {**person, "identifier": [cccd("089060444444")]})
    for _ in range(3):
        register(server.client(), person)
    sent = {**person, "identifier": [cccd("089060444444", CCCD_HL7VN)]}
    everyone = match(desk, sent)
    assert [grade(e) for e in everyone] == ["certain", "probable", "probable", "probable"]
    assert everyone[0]["resource"]["id"] == certain
    assert [e["resource"]["id"] for e in match(desk, sent, only_certain=True)] == [certain]
    assert len(match(desk, sent, count=2)) == 2

    register(server.client(), {**person, "identifier": [cccd("089060444444", CCCD_HL7VN)]})  # a duplicate record
    answer = desk.post("/Patient/$match", json={"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": {"resourceType": "Patient", **sent}},
        {"name": "onlyCertainMatches", "valueBoolean": True}]}).json()
    assert [e["search"]["mode"] for e in answer["entry"]] == ["outcome"]
    assert answer["entry"][0]["resource"]["issue"][0]["code"] == "multiple-matches"


def test_a_bare_patient_body_is_the_resource(server: LiveServer, desk: httpx.Client) -> None:
    ours = register(server.client(), {"identifier": [cccd("089061555555")], "name": name("Hà", "Văn", "Năm")})
    answer = desk.post("/Patient/$match", json={"resourceType": "Patient", "identifier": [cccd("089061555555")]})
    assert answer.status_code == 200 and answer.json()["entry"][0]["resource"]["id"] == ours


@pytest.mark.parametrize("body", [
    {"resourceType": "Parameters", "parameter": []},
    {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": {"resourceType": "Observation"}}]},
    {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": {"resourceType": "Patient"}},
                                                 {"name": "count", "valueInteger": -1}]},
    {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": {"resourceType": "Patient"}},
                                                 {"name": "onlyCertainMatches", "valueString": "yes"}]},
    {"resourceType": "Observation", "status": "final", "code": {"text": "x"}},
], ids=["no-resource", "not-a-patient", "negative-count", "flag-not-boolean", "not-parameters"])
def test_bad_input_is_refused_with_an_outcome(desk: httpx.Client, body: dict[str, Any]) -> None:
    answer = desk.post("/Patient/$match", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["resourceType"] == "OperationOutcome"


def test_a_sender_record_of_the_wrong_shape_is_read_as_nothing(desk: httpx.Client) -> None:
    """The sender's Patient is not validated (it is not stored): odd shapes match nothing, and never fail."""
    odd = {"name": [{"family": 7, "given": "Văn An"}, "Nguyễn", {"text": {"x": 1}}], "birthDate": "1990-13-45",
           "gender": 3, "identifier": {"system": CCCD_MOH}, "address": [{"line": 5, "extension": {"url": 1}}, 9]}
    assert match(desk, odd) == []
    answer = desk.post("/Patient/$match", json={"resourceType": "Parameters", "parameter": {"name": "resource"}})
    assert answer.status_code == 400, answer.text


def test_match_needs_patient_read_and_search(server: LiveServer) -> None:
    body = {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": {
        "resourceType": "Patient", "identifier": [cccd("089062666666")]}}]}
    with server.client("auditor") as auditor:
        refused = auditor.post("/Patient/$match", json=body)
    assert refused.status_code == 403 and "Patient" in refused.text
    with server.client(None) as nobody:
        assert nobody.post("/Patient/$match", json=body).status_code == 401
    with server.client("nurse") as nurse:
        assert nurse.post("/Patient/$match", json=body).status_code == 200


def test_the_capability_statement_lists_match(desk: httpx.Client) -> None:
    patient = next(r for r in desk.get("/metadata").json()["rest"][0]["resource"] if r["type"] == "Patient")
    assert {"name": "match", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-match"} \
        in patient["operation"]


def test_matching_is_recorded_in_the_audit_trail(server: LiveServer, desk: httpx.Client) -> None:
    ours = register(server.client(), {"identifier": [cccd("089063777777")], "name": name("Bùi", "Văn", "Sáu")})
    match(desk, {"identifier": [cccd("089063777777", CCCD_HL7VN)]})
    with server.client() as admin:
        events = admin.get("/AuditEvent", params={"entity": f"Patient/{ours}", "subtype": "operation"}).json()
    assert any(e["resource"]["entity"][-1].get("description") == "$match Patient" for e in events.get("entry", []))


