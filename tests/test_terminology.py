"""Terminology: the national lists loaded by `emr terminology load`, the operations on them, and their uses.

The lists are loaded once for the module, by the command IT staff run, into a
database of the module's own; three servers share that database with the three
write-validation modes. Expected answers are read from the source files'
rows (`../shared/data/terminology/`), not written down from the server's output.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient

from fhir_store.terminology import TerminologyService
from fhir_store.text import fold
from tests.conftest import SHARED_DATA, LiveServer, make_settings, unique

TERMINOLOGY = SHARED_DATA / "terminology"
REPO = Path(__file__).resolve().parents[1]
ICD_VN = "http://icd.kcb.vn/ICD/"
ICD_WHO = "http://hl7.org/fhir/sid/icd-10"
ETHNIC = "http://fhir.ehealth.gov.vn/core/CodeSystem/vn-core-race"
DVHC_2025 = "https://emr.angiang.vn/fhir/CodeSystem/dvhc-2025"
DVHC_OLD = "https://emr.angiang.vn/fhir/CodeSystem/dvhc-pre2025"
EMR_VS = "https://emr.angiang.vn/fhir/ValueSet"


def moh_rows() -> list[dict[str, str]]:
    """The Ministry sample's data rows, keyed by its own header (two title lines come first)."""
    with (TERMINOLOGY / "icd10_vn_moh_sample.csv").open(encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f))
    header = rows[2]
    return [dict(zip(header, row, strict=True)) for row in rows[3:]]


def csv_rows(name: str) -> list[dict[str, str]]:
    with (TERMINOLOGY / name).open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def moh(code: str) -> dict[str, str]:
    return next(r for r in moh_rows() if r["MÃ BỆNH"].rstrip("†*") == code)


def emr_cli(database: str, mongo_uri: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EMR_MONGODB_URI": mongo_uri, "EMR_DATABASE": database, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "emr.cli", *args], env=env, capture_output=True, text=True,
                          timeout=900)


@pytest.fixture(scope="module")
def database(mongo_uri: str) -> str:
    """A database holding every shipped list, loaded by the command; its JSON report is checked once here."""
    name = f"test_term_{uuid.uuid4().hex[:10]}"
    run = emr_cli(name, mongo_uri, "terminology", "load", "--json")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    loaded = {r["id"]: r for source in report for r in source["resources"]}
    assert loaded["icd10-who-2019"]["concepts"] == len(csv_rows("icd10_who_2019_en.csv"))
    assert loaded["icd10-who-2019"]["outcome"] == "created"
    return name


def _server(mongo_uri: str, database: str, mode: str) -> Iterator[httpx.Client]:
    with LiveServer(make_settings(mongo_uri, database=database, terminology_validation=mode)) as server, \
            server.client() as client:
        yield client


@pytest.fixture(scope="module")
def fhir_reject(mongo_uri: str, database: str) -> Iterator[httpx.Client]:
    yield from _server(mongo_uri, database, "reject")


@pytest.fixture(scope="module")
def fhir_warn(mongo_uri: str, database: str) -> Iterator[httpx.Client]:
    yield from _server(mongo_uri, database, "warn")


@pytest.fixture(scope="module")
def fhir_off(mongo_uri: str, database: str) -> Iterator[httpx.Client]:
    yield from _server(mongo_uri, database, "off")


def param(parameters: dict[str, Any], name: str) -> Any:
    for p in parameters["parameter"]:
        if p["name"] == name:
            return next(v for k, v in p.items() if k.startswith("value"))
    raise KeyError(name)


def expand(client: httpx.Client, vs_id: str, **params: Any) -> dict[str, Any]:
    response = client.get(f"/ValueSet/{vs_id}/$expand", params=params)
    assert response.status_code == 200, response.text
    return response.json()["expansion"]


# ---- $lookup ------------------------------------------------------------------------------------

def test_lookup_gives_the_ministry_titles_in_vietnamese_and_english(fhir_warn: httpx.Client) -> None:
    for code in ("A00.0", "E11.5", "J18.9", "I15.0"):
        row = moh(code)
        edition = {"system": ICD_VN, "code": code, "version": "2020-10-26"}
        vi = fhir_warn.get("/CodeSystem/$lookup", params=edition).json()
        en = fhir_warn.get("/CodeSystem/$lookup", params={**edition, "displayLanguage": "en"})
        assert param(vi, "display") == row["TÊN BỆNH"]
        assert param(en.json(), "display") == row["DISEASE NAME"]
    plain = fhir_warn.get("/CodeSystem/icd10-vn-2020-10-26").json()
    assert plain["version"] == "2020-10-26"  # the decision's date, from the file's own subtitle


def test_lookup_keeps_the_source_as_published_errors_included(fhir_warn: httpx.Client) -> None:
    """I10's English title reads "Other rheumatic heart diseases" in the Ministry's file; a later edition fixes it."""
    answer = fhir_warn.get("/CodeSystem/$lookup", params={"system": ICD_VN, "code": "I10", "displayLanguage": "en",
                                                          "version": "2020-10-26"})
    assert param(answer.json(), "display") == moh("I10")["DISEASE NAME"] == "Other rheumatic heart diseases"


def test_lookup_of_who_codes_and_their_vietnamese_titles(fhir_warn: httpx.Client) -> None:
    who = {r["code"]: r for r in csv_rows("icd10_who_2019_en.csv")}
    for code in ("I10", "A00.1", "J45.9", "XXII"):
        answer = fhir_warn.get("/CodeSystem/$lookup", params={"system": ICD_WHO, "code": code}).json()
        assert param(answer, "display") == who[code]["title_en"]
        assert param(answer, "abstract") is (who[code]["level"] in ("chapter", "block"))
    # WHO's list has no Vietnamese titles: the Ministry's list, which shares the codes, gives them.
    vi = fhir_warn.get("/CodeSystem/$lookup", params={"system": ICD_WHO, "code": "I10", "displayLanguage": "vi"})
    assert param(vi.json(), "display") == moh("I10")["TÊN BỆNH"]


def test_lookup_refuses_unknown_codes_and_systems_clearly(fhir_warn: httpx.Client) -> None:
    unknown = fhir_warn.get("/CodeSystem/$lookup", params={"system": ICD_VN, "code": "Q99.99"})
    assert unknown.status_code == 404
    assert "Q99.99" in unknown.json()["issue"][0]["diagnostics"]
    no_system = fhir_warn.get("/CodeSystem/$lookup", params={"system": "http://example.org/none", "code": "x"})
    assert no_system.status_code == 404
    assert "not loaded" in no_system.json()["issue"][0]["diagnostics"]
    missing = fhir_warn.get("/CodeSystem/$lookup", params={"code": "I10"})
    assert missing.status_code == 400
    assert missing.json()["resourceType"] == "OperationOutcome"


def test_lookup_by_post_with_a_coding(fhir_warn: httpx.Client) -> None:
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "coding", "valueCoding": {"system": ETHNIC, "code": "05"}}]}
    answer = fhir_warn.post("/CodeSystem/$lookup", json=body)
    assert answer.status_code == 200, answer.text
    ethnic = {r["code_2digit"]: r["name"] for r in csv_rows("vn_ethnic_groups.csv")}
    assert param(answer.json(), "display") == ethnic["05"]


# ---- $validate-code -----------------------------------------------------------------------------

def test_validate_code_in_code_systems(fhir_warn: httpx.Client) -> None:
    good = fhir_warn.get("/CodeSystem/$validate-code", params={"url": ICD_VN, "code": "E10.9"}).json()
    assert param(good, "result") is True
    assert param(good, "display") == moh("E10.9")["TÊN BỆNH"]
    bad = fhir_warn.get("/CodeSystem/$validate-code", params={"url": ICD_VN, "code": "E10.99"}).json()
    assert param(bad, "result") is False
    assert "E10.99" in param(bad, "message")
    wrong_title = fhir_warn.get("/CodeSystem/$validate-code",
                                params={"url": ICD_VN, "code": "E10.9", "display": "Cholera"}).json()
    assert param(wrong_title, "result") is False
    either_title = fhir_warn.get("/CodeSystem/$validate-code", params={
        "url": ICD_VN, "code": "A00.9", "display": moh("A00.9")["DISEASE NAME"]}).json()
    assert param(either_title, "result") is True  # the English title is a title too
    instance = fhir_warn.get("/CodeSystem/icd10-who-2019/$validate-code", params={"code": "I10"}).json()
    assert param(instance, "result") is True


def test_validate_code_in_value_sets(fhir_warn: httpx.Client) -> None:
    ethnic = csv_rows("vn_ethnic_groups.csv")
    kinh = fhir_warn.get("/ValueSet/vn-core-race/$validate-code", params={"system": ETHNIC, "code": "01"}).json()
    assert param(kinh, "result") is True
    assert param(kinh, "display") == ethnic[0]["name"]
    assert param(fhir_warn.get("/ValueSet/vn-core-race/$validate-code",
                               params={"system": ETHNIC, "code": "99"}).json(), "result") is False
    an_giang = {r["ward_code"] for r in csv_rows("vn_wards_2025.csv") if r["province_code"] == "91"}
    ward = sorted(an_giang)[0]
    by_url = fhir_warn.get("/ValueSet/$validate-code", params={"url": f"{EMR_VS}/dvhc-2025-an-giang",
                                                                "system": DVHC_2025, "code": ward}).json()
    assert param(by_url, "result") is True
    elsewhere = next(r["ward_code"] for r in csv_rows("vn_wards_2025.csv") if r["province_code"] == "01")
    assert param(fhir_warn.get("/ValueSet/dvhc-2025-an-giang/$validate-code",
                               params={"system": DVHC_2025, "code": elsewhere}).json(), "result") is False
    concept = {"resourceType": "Parameters", "parameter": [{"name": "codeableConcept", "valueCodeableConcept": {
        "coding": [{"system": "http://snomed.info/sct", "code": "38341003"}, {"system": ICD_VN, "code": "I10"}]}}]}
    answer = fhir_warn.post("/ValueSet/icd10-vn/$validate-code", json=concept)
    assert answer.status_code == 200, answer.text
    assert param(answer.json(), "result") is True


# ---- $expand ------------------------------------------------------------------------------------

def _codes(expansion: dict[str, Any]) -> list[str]:
    return [c["code"] for c in expansion.get("contains", [])]


def test_expand_finds_hypertension_by_vietnamese_words_without_accents(fhir_warn: httpx.Client) -> None:
    found = expand(fhir_warn, "icd10-vn", filter="tang huyet ap", count=100)
    codes = set(_codes(found))
    assert {"I10", "I11", "I12", "I13", "I15"} <= codes
    expected = {r["MÃ BỆNH"].rstrip("†*") for r in moh_rows()
                if all(any(w.startswith(t) for w in fold(r["TÊN BỆNH"]).split()) for t in ("tang", "huyet", "ap"))}
    assert expected <= codes
    with_accents = expand(fhir_warn, "icd10-vn", filter="tăng huyết áp", count=100)
    assert _codes(with_accents) == _codes(found)
    assert all("tang huyet ap" in fold(c["display"]) for c in found["contains"])


def test_expand_finds_pneumonias_and_folds_d(fhir_warn: httpx.Client) -> None:
    pneumonia = set(_codes(expand(fhir_warn, "icd10-vn", filter="viem phoi", count=200)))
    assert {"J12", "J13", "J14", "J15", "J16", "J17", "J18", "J18.9"} <= pneumonia
    gut = _codes(expand(fhir_warn, "icd10-vn", filter="duong ruot"))  # "đường ruột": đ folds to d
    assert "A00-A09" in gut


def test_expand_by_code_prefix_with_paging(fhir_warn: httpx.Client) -> None:
    who = [r["code"] for r in csv_rows("icd10_who_2019_en.csv")]
    expected = [c for c in who if c.replace(".", "").startswith("I1") or c.startswith("I1")]
    first = expand(fhir_warn, "icd-10", filter="I1", count=10)
    assert first["total"] == len(set(expected))
    second = expand(fhir_warn, "icd-10", filter="I1", count=10, offset=10)
    assert len(first["contains"]) == 10
    assert not set(_codes(first)) & set(_codes(second))
    assert set(_codes(first)) | set(_codes(second)) <= set(expected)
    dotless = expand(fhir_warn, "icd-10", filter="A000", count=10)  # as the insurance XML writes A00.0
    assert _codes(dotless) == ["A00.0"]


def test_expand_in_english_and_vietnamese(fhir_warn: httpx.Client) -> None:
    english = expand(fhir_warn, "icd10-vn", filter="cholera", displayLanguage="en")
    assert "A00" in _codes(english)
    assert english["contains"][0]["display"] == moh(english["contains"][0]["code"])["DISEASE NAME"]
    provinces = expand(fhir_warn, "dvhc-2025-provinces", count=100)
    assert provinces["total"] == len(csv_rows("vn_provinces_2025.csv"))
    an_giang = expand(fhir_warn, "dvhc-2025-an-giang", count=1000, filter="long xuyen")
    names = {c["display"] for c in an_giang["contains"]}
    assert "Phường Long Xuyên" in names
    wards = expand(fhir_warn, "dvhc-2025-an-giang", count=1)
    assert wards["total"] == int(next(r for r in csv_rows("vn_provinces_2025.csv")
                                      if r["province_code"] == "91")["ward_count"])


def test_expand_errors_are_outcomes(fhir_warn: httpx.Client) -> None:
    assert fhir_warn.get("/ValueSet/no-such-set/$expand").status_code == 404
    unknown = fhir_warn.get("/ValueSet/$expand", params={"url": "http://example.org/vs"})
    assert unknown.status_code == 404
    bad = fhir_warn.get("/ValueSet/icd10-vn/$expand", params={"count": "many"})
    assert bad.status_code == 400
    external = {"resourceType": "Parameters", "parameter": [{"name": "valueSet", "resource": {
        "resourceType": "ValueSet", "status": "active", "compose": {"include": [{"system": "http://loinc.org"}]}}}]}
    refused = fhir_warn.post("/ValueSet/$expand", json=external)
    assert refused.status_code == 422
    assert "http://loinc.org" in refused.json()["issue"][0]["diagnostics"]
    for body in ({"resourceType": "Patient"}, [1, 2],
                 {"resourceType": "Parameters", "parameter": [{"name": "codeableConcept",
                                                                 "valueCodeableConcept": {"coding": "I10"}}]}):
        answer = fhir_warn.post("/ValueSet/icd10-vn/$validate-code", json=body)
        assert answer.status_code == 400, answer.text
        assert answer.json()["resourceType"] == "OperationOutcome"


# ---- $translate ---------------------------------------------------------------------------------

def test_translate_an_old_commune_to_todays(fhir_warn: httpx.Client) -> None:
    rows = [r for r in csv_rows("vn_ward_mapping_pre2025_to_2025.csv") if r["old_province_code"] == "89"]
    row = next(r for r in rows if r["split"] == "whole")
    answer = fhir_warn.get("/ConceptMap/$translate", params={"system": DVHC_OLD, "code": row["old_ward_code"]})
    matches = [p for p in answer.json()["parameter"] if p["name"] == "match"]
    concepts = [next(part["valueCoding"] for part in m["part"] if part["name"] == "concept") for m in matches]
    assert {"system": DVHC_2025, "code": row["new_ward_code"], "display": row["new_ward_name"]} in concepts


# ---- writes checked against the loaded code systems ---------------------------------------------

def condition(code: str, marker: str, *, display: str | None = None, system: str = ICD_VN) -> dict[str, Any]:
    coding = {"system": system, "code": code, **({"display": display} if display else {})}
    return {"resourceType": "Condition", "identifier": [{"system": "urn:test", "value": marker}],
            "subject": {"reference": "Patient/unknown-is-fine"}, "code": {"coding": [coding]}}


def stored(client: httpx.Client, marker: str) -> int:
    return len(client.get("/Condition", params={"identifier": f"urn:test|{marker}"}).json().get("entry", []))


def test_reject_mode_refuses_an_icd10_code_that_does_not_exist(fhir_reject: httpx.Client) -> None:
    marker = unique("reject")
    refused = fhir_reject.post("/Condition", json=condition("I10.99", marker))
    assert refused.status_code == 400
    issue = refused.json()["issue"][0]
    assert "I10.99" in issue["diagnostics"] and issue["code"] == "code-invalid"
    assert issue["expression"] == ["Condition.code.coding[0]"]
    assert stored(fhir_reject, marker) == 0
    kept = fhir_reject.post("/Condition", json=condition("I10", marker))
    assert kept.status_code == 201
    assert "X-FHIR-Request-Validation" not in kept.headers


def test_reject_mode_refuses_the_whole_transaction(fhir_reject: httpx.Client) -> None:
    marker = unique("txn")
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": condition("J18.9", marker), "request": {"method": "POST", "url": "Condition"}},
        {"resource": condition("J18.77", marker), "request": {"method": "POST", "url": "Condition"}}]}
    answer = fhir_reject.post("", json=bundle)
    assert answer.status_code == 400
    assert "J18.77" in answer.json()["issue"][0]["diagnostics"]
    assert stored(fhir_reject, marker) == 0


def test_warn_mode_keeps_the_resource_and_says_why(fhir_warn: httpx.Client) -> None:
    marker = unique("warn")
    kept = fhir_warn.post("/Condition", json=condition("I10.99", marker))
    assert kept.status_code == 201
    outcome = json.loads(kept.headers["X-FHIR-Request-Validation"])
    assert outcome["issue"][0]["severity"] == "warning" and "I10.99" in outcome["issue"][0]["diagnostics"]
    assert stored(fhir_warn, marker) == 1
    asked = fhir_warn.post("/Condition", json=condition("E14.99", marker),
                           headers={"Prefer": "return=OperationOutcome"})
    assert asked.status_code == 201
    assert any("E14.99" in i["diagnostics"] and i["severity"] == "warning" for i in asked.json()["issue"])


def test_off_mode_does_not_look(fhir_off: httpx.Client) -> None:
    marker = unique("off")
    kept = fhir_off.post("/Condition", json=condition("I10.99", marker))
    assert kept.status_code == 201
    assert "X-FHIR-Request-Validation" not in kept.headers


def test_a_wrong_display_is_a_warning_even_in_reject_mode(fhir_reject: httpx.Client) -> None:
    marker = unique("display")
    kept = fhir_reject.post("/Condition", json=condition("A00.0", marker, display="Sốt xuất huyết"))
    assert kept.status_code == 201
    assert "Sốt xuất huyết" in json.loads(kept.headers["X-FHIR-Request-Validation"])["issue"][0]["diagnostics"]
    right = fhir_reject.post("/Condition", json=condition("A00.0", marker, display=moh("A00.0")["TÊN BỆNH"]))
    assert "X-FHIR-Request-Validation" not in right.headers


def test_codes_of_systems_not_loaded_are_not_judged(fhir_reject: httpx.Client) -> None:
    kept = fhir_reject.post("/Condition", json=condition("38341003", unique("sct"), system="http://snomed.info/sct"))
    assert kept.status_code == 201


# ---- search modifiers on real records -----------------------------------------------------------

@pytest.fixture(scope="module")
def chart(fhir_warn: httpx.Client) -> str:
    """A patient with five diagnoses; returns the patient id."""
    patient = fhir_warn.post("/Patient", json={"resourceType": "Patient",
                                               "name": [{"family": "Lê", "given": ["Văn Tâm"]}]})
    pid = patient.json()["id"]
    for code in ("I10", "I11.0", "I15.9", "J18.9", "A00.1"):
        body = condition(code, unique("chart"))
        body["subject"] = {"reference": f"Patient/{pid}"}
        assert fhir_warn.post("/Condition", json=body).status_code == 201
    return pid


def found_codes(client: httpx.Client, pid: str, **criteria: str) -> set[str]:
    response = client.get("/Condition", params={"subject": f"Patient/{pid}", **criteria})
    assert response.status_code == 200, response.text
    return {e["resource"]["code"]["coding"][0]["code"] for e in response.json().get("entry", [])
            if e["search"]["mode"] == "match"}


def test_below_finds_the_codes_under_an_icd10_code(fhir_warn: httpx.Client, chart: str) -> None:
    assert found_codes(fhir_warn, chart, **{"code:below": "I10-I15"}) == {"I10", "I11.0", "I15.9"}
    assert found_codes(fhir_warn, chart, **{"code:below": f"{ICD_VN}|I11"}) == {"I11.0"}
    assert found_codes(fhir_warn, chart, **{"code:below": "I10"}) == {"I10"}
    assert found_codes(fhir_warn, chart, **{"code:above": "I15.9"}) == {"I15.9"}


def test_text_matches_the_titles_of_the_codes(fhir_warn: httpx.Client, chart: str) -> None:
    """The records carry bare codes; `:text` finds them by their Vietnamese (or English) titles."""
    assert found_codes(fhir_warn, chart, **{"code:text": "viem phoi"}) == {"J18.9"}
    assert found_codes(fhir_warn, chart, **{"code:text": "tăng huyết áp"}) == {"I10", "I11.0", "I15.9"}
    assert found_codes(fhir_warn, chart, **{"code:text": "cholera"}) == {"A00.1"}


def test_in_and_not_in_a_value_set(fhir_warn: httpx.Client, chart: str) -> None:
    url = f"urn:test:vs:{unique('vs')}"
    vs = {"resourceType": "ValueSet", "url": url, "status": "active", "compose": {"include": [
        {"system": ICD_VN, "filter": [{"property": "concept", "op": "is-a", "value": "I10-I15"}]}]}}
    assert fhir_warn.post("/ValueSet", json=vs).status_code == 201
    assert found_codes(fhir_warn, chart, **{"code:in": url}) == {"I10", "I11.0", "I15.9"}
    assert found_codes(fhir_warn, chart, **{"code:not-in": url}) == {"J18.9", "A00.1"}
    assert found_codes(fhir_warn, chart, **{"code:in": f"{EMR_VS}/icd10-vn"}) == \
        {"I10", "I11.0", "I15.9", "J18.9", "A00.1"}
    unknown = fhir_warn.get("/Condition", params={"code:in": "http://example.org/nothing"})
    assert unknown.status_code == 400


# ---- editions, local lists, the Python entry point ----------------------------------------------

def test_a_new_edition_is_kept_beside_the_old(fhir_warn: httpx.Client, database: str, mongo_uri: str,
                                              tmp_path: Path) -> None:
    source = (TERMINOLOGY / "icd10_vn_moh_sample.csv").read_bytes().decode("utf-8")
    new = source.replace("ngày 26/10/2020", "ngày 01/07/2026").replace(
        "I10,I10,Other rheumatic heart diseases,", "I10,I10,Essential hypertension,")
    assert new.count("Essential hypertension") == 1
    (tmp_path / "icd10-2026.csv").write_bytes(new.encode("utf-8"))
    run = emr_cli(database, mongo_uri, "terminology", "load", str(tmp_path / "icd10-2026.csv"), "--json")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)[0]["resources"]
    assert report[0]["id"] == "icd10-vn-2026-07-01" and report[0]["outcome"] == "created"
    latest = fhir_warn.get("/CodeSystem/$lookup", params={"system": ICD_VN, "code": "I10", "displayLanguage": "en"})
    assert param(latest.json(), "display") == "Essential hypertension"
    old = fhir_warn.get("/CodeSystem/$lookup", params={"system": ICD_VN, "code": "I10", "version": "2020-10-26",
                                                         "displayLanguage": "en"})
    assert param(old.json(), "display") == "Other rheumatic heart diseases"
    # A record coded against the old edition is checked against that edition.
    marker = unique("edition")
    coded = condition("I10", marker)
    coded["code"]["coding"][0]["version"] = "2020-10-26"
    assert fhir_warn.post("/Condition", json=coded).status_code == 201
    again = emr_cli(database, mongo_uri, "terminology", "load", str(tmp_path / "icd10-2026.csv"), "--json")
    assert {r["outcome"] for r in json.loads(again.stdout)[0]["resources"]} == {"unchanged"}


def test_a_code_system_posted_through_the_api_is_usable_at_once(fhir_reject: httpx.Client) -> None:
    url = f"urn:test:cs:{unique('occupation')}"
    cs = {"resourceType": "CodeSystem", "url": url, "status": "active", "content": "complete", "language": "vi",
          "concept": [{"code": "NN01", "display": "Nông dân"}, {"code": "NN02", "display": "Ngư dân"}]}
    created = fhir_reject.post("/CodeSystem", json=cs)
    assert created.status_code == 201
    answer = fhir_reject.get("/CodeSystem/$lookup", params={"system": url, "code": "NN02"})
    assert param(answer.json(), "display") == "Ngư dân"
    patient = {"resourceType": "Patient", "extension": [{"url": "urn:test:occupation",
                                                          "valueCoding": {"system": url, "code": "NN09"}}]}
    assert fhir_reject.post("/Patient", json=patient).status_code == 400
    assert fhir_reject.delete(f"/CodeSystem/{created.json()['id']}").status_code == 200
    gone = fhir_reject.get("/CodeSystem/$lookup", params={"system": url, "code": "NN02"})
    assert gone.status_code == 404


@pytest.mark.anyio
async def test_display_entry_point_gives_vietnamese_titles(database: str, mongo_uri: str) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    try:
        service = TerminologyService(client[database])
        assert await service.display(ICD_WHO, "J18.9") == moh("J18.9")["TÊN BỆNH"]
        assert await service.display(ICD_VN, "E11.9", "en") == moh("E11.9")["DISEASE NAME"]
        assert await service.display(ICD_VN, "I10", "en", version="2020-10-26") == "Other rheumatic heart diseases"
        assert await service.display(ETHNIC, "01") == "Kinh"
        assert await service.display(ICD_VN, "Z99.999") is None
    finally:
        await client.close()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_capability_statement_lists_the_operations(fhir_warn: httpx.Client) -> None:
    rest = fhir_warn.get("/metadata").json()["rest"][0]
    ops = {r["type"]: {o["name"] for o in r.get("operation", [])} for r in rest["resource"]}
    assert ops["CodeSystem"] == {"lookup", "validate-code"}
    assert ops["ValueSet"] == {"expand", "validate-code"}
    assert ops["ConceptMap"] == {"translate"}


def test_the_list_is_whole_when_written_to_a_file(database: str, mongo_uri: str) -> None:
    """Sent to a file or a pipe (not a terminal), the table is as wide as its content, not cut at 80 columns."""
    run = emr_cli(database, mongo_uri, "terminology", "list")
    assert run.returncode == 0, run.stderr
    assert "…" not in run.stdout, run.stdout
    assert "http://hl7.org/fhir/ValueSet/administrative-gender" in run.stdout
    assert max(len(line) for line in run.stdout.splitlines()) > 80


def test_load_refuses_a_file_it_does_not_know(database: str, mongo_uri: str, tmp_path: Path) -> None:
    strange = tmp_path / "list.csv"
    strange.write_text("ma,ten\n1,một\n", encoding="utf-8")
    run = emr_cli(database, mongo_uri, "terminology", "load", str(strange))
    assert run.returncode == 2
    assert "list.csv" in run.stderr and "not a list this loader knows" in run.stderr


# ---- FHIR's own value sets, on real records ------------------------------------------------------

def test_fhir_required_value_sets_are_loaded(fhir_warn: httpx.Client) -> None:
    gender = expand(fhir_warn, "administrative-gender")
    assert {c["code"] for c in gender["contains"]} == {"male", "female", "other", "unknown"}
    url = "http://hl7.org/fhir/ValueSet/condition-clinical"
    ok = fhir_warn.get("/ValueSet/$validate-code", params={"url": url, "code": "resolved",
                                                            "system": CLINICAL})
    assert param(ok.json(), "result") is True
    bad = fhir_warn.get("/ValueSet/$validate-code", params={"url": url, "code": "cured", "system": CLINICAL})
    assert param(bad.json(), "result") is False


CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"


def test_synthea_records_pass_reject_mode_and_search_by_value_set(fhir_reject: httpx.Client) -> None:
    """A whole Synthea record is written in reject mode (its FHIR codes all exist), then searched by them."""
    from tests.synthea import bundle_file, resources

    records = [r for r in resources(bundle_file("Rachael_McDermott")) if r["resourceType"] in ("Patient", "Condition")]
    for resource in records:
        answer = fhir_reject.put(f"/{resource['resourceType']}/{resource['id']}", json=resource)
        assert answer.status_code in (200, 201), answer.text
    pid = next(r["id"] for r in records if r["resourceType"] == "Patient")
    conditions = [r for r in records if r["resourceType"] == "Condition"]
    active = {r["id"] for r in conditions if r["clinicalStatus"]["coding"][0]["code"] == "active"}
    assert active and len(active) < len(conditions)

    def ids(**criteria: str) -> set[str]:
        found = fhir_reject.get("/Condition", params={"patient": pid, "_count": "500", **criteria}).json()
        return {e["resource"]["id"] for e in found.get("entry", []) if e["search"]["mode"] == "match"}

    everyone = {r["id"] for r in conditions}
    assert ids(**{"clinical-status:in": "http://hl7.org/fhir/ValueSet/condition-clinical"}) == everyone
    assert ids(**{"clinical-status:not-in": "http://hl7.org/fhir/ValueSet/condition-clinical"}) == set()
    assert ids(**{"clinical-status:below": f"{CLINICAL}|active"}) == active  # active, recurrence, relapse


def test_reindex_rebuilds_a_lost_catalog(database: str, mongo_uri: str, fhir_warn: httpx.Client) -> None:
    from pymongo import MongoClient

    with MongoClient(mongo_uri) as client:
        before = client[database]["terminology"].count_documents({"kind": {"$exists": True}})
        client[database]["terminology"].delete_many({"kind": "ValueSet"})
    assert fhir_warn.get("/ValueSet/$expand", params={"url": f"{EMR_VS}/icd10-vn"}).status_code == 404
    run = emr_cli(database, mongo_uri, "terminology", "reindex")
    assert run.returncode == 0, run.stderr
    assert f"{before} terminology resources" in run.stdout
    assert fhir_warn.get("/ValueSet/$expand", params={"url": f"{EMR_VS}/icd10-vn"}).status_code == 200


def test_required_bindings_on_codeable_concepts(fhir_reject: httpx.Client, fhir_warn: httpx.Client) -> None:
    """Condition.clinicalStatus is bound (required) to condition-clinical: a SNOMED code alone is refused."""
    marker = unique("binding")
    body = condition("I10", marker)
    body["clinicalStatus"] = {"coding": [{"system": "http://snomed.info/sct", "code": "55561003"}]}
    refused = fhir_reject.post("/Condition", json=body)
    assert refused.status_code == 400
    issue = refused.json()["issue"][0]
    assert issue["expression"] == ["Condition.clinicalStatus"]
    assert "http://hl7.org/fhir/ValueSet/condition-clinical" in issue["diagnostics"]
    kept = fhir_warn.post("/Condition", json=body)
    assert kept.status_code == 201
    assert "condition-clinical" in kept.headers["X-FHIR-Request-Validation"]
    body["clinicalStatus"]["coding"].append({"system": CLINICAL, "code": "active"})
    assert fhir_reject.post("/Condition", json=body).status_code == 201


def test_the_ministry_list_loads_from_its_excel_workbook_too(database: str, mongo_uri: str, tmp_path: Path) -> None:
    """The same edition as an .xlsx (as icd.kcb.vn publishes it) is the same list: nothing changes."""
    from openpyxl import Workbook

    with (TERMINOLOGY / "icd10_vn_moh_sample.csv").open(encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f))
    book = Workbook()
    for row in rows:
        book.active.append(row)
    book.save(tmp_path / "ICD10_QD4469.xlsx")
    run = emr_cli(database, mongo_uri, "terminology", "load", str(tmp_path / "ICD10_QD4469.xlsx"), "--json")
    assert run.returncode == 0, run.stderr
    outcomes = {r["id"]: r["outcome"] for r in json.loads(run.stdout)[0]["resources"]}
    assert outcomes == {"icd10-vn-2020-10-26": "unchanged", "icd10-vn": "unchanged"}
    broken = tmp_path / "broken.xlsx"
    broken.write_bytes(b"not a workbook")
    run = emr_cli(database, mongo_uri, "terminology", "load", str(broken))
    assert run.returncode == 2 and "broken.xlsx: not a readable Excel workbook" in run.stderr
