"""Decimals come back as they were written (`1.50` stays `1.50`), everywhere a resource leaves the server,
and number searches still compare them as numbers.

Bodies are sent as text and answers read with `parse_float=str`, so the test sees the digits on the wire
rather than what a float makes of them.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx

FHIR_JSON = {"Content-Type": "application/fhir+json"}
WRITTEN = ("1.50", "0.0001", "1e-3", "12345678901234567890", "7.250E+1")
SYSTEM = "urn:test:decimals"


def exact(response: httpx.Response) -> Any:
    """The JSON answer with every number kept as its text."""
    assert response.status_code in (200, 201), response.text
    return json.loads(response.text, parse_float=str, parse_int=str)


def observation_text(tag: str, value: str, patient: str) -> str:
    return (f'{{"resourceType": "Observation", "status": "final",'
            f' "code": {{"coding": [{{"system": "{SYSTEM}", "code": "{tag}"}}]}},'
            f' "subject": {{"reference": "Patient/{patient}"}},'
            f' "valueQuantity": {{"value": {value}, "unit": "mmol/L"}},'
            f' "referenceRange": [{{"low": {{"value": {value}}}, "high": {{"value": 9.90}}}}]}}')


def values_of(resource: dict[str, Any]) -> tuple[str, str, str]:
    return (resource["valueQuantity"]["value"], resource["referenceRange"][0]["low"]["value"],
            resource["referenceRange"][0]["high"]["value"])


def test_decimals_keep_their_text_in_reads_searches_history_everything_and_bundles(fhir: httpx.Client) -> None:
    patient = fhir.post("/Patient", json={"resourceType": "Patient", "name": [{"family": "Đặng"}]},
                        headers=FHIR_JSON).json()["id"]
    for value in WRITTEN:
        tag = uuid.uuid4().hex[:10]
        created = fhir.post("/Observation", content=observation_text(tag, value, patient), headers=FHIR_JSON)
        oid = exact(created)["id"]
        assert values_of(exact(created)) == (value, value, "9.90")
        assert values_of(exact(fhir.get(f"/Observation/{oid}"))) == (value, value, "9.90")
        assert values_of(exact(fhir.get(f"/Observation/{oid}/_history/1"))) == (value, value, "9.90")
        found = exact(fhir.get("/Observation", params={"code": f"{SYSTEM}|{tag}"}))
        assert [values_of(e["resource"]) for e in found["entry"]] == [(value, value, "9.90")]
        history = exact(fhir.get(f"/Observation/{oid}/_history"))
        assert [values_of(e["resource"]) for e in history["entry"]] == [(value, value, "9.90")]
        chart = exact(fhir.get(f"/Patient/{patient}/$everything"))
        assert (value, value, "9.90") in [values_of(e["resource"]) for e in chart["entry"]
                                          if e["resource"]["resourceType"] == "Observation"
                                          and e["resource"]["id"] == oid]

    # a transaction answers with the resources as written, and a batch reads them back so
    tag = uuid.uuid4().hex[:10]
    transaction = ('{"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": '
                   + observation_text(tag, "2.500", patient)
                   + ', "request": {"method": "POST", "url": "Observation"}}]}')
    answer = exact(fhir.post("", content=transaction, headers={**FHIR_JSON, "Prefer": "return=representation"}))
    oid = answer["entry"][0]["resource"]["id"]
    assert values_of(answer["entry"][0]["resource"]) == ("2.500", "2.500", "9.90")
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"method": "GET",
                                                                               "url": f"Observation/{oid}"}}]}
    assert values_of(exact(fhir.post("", json=batch, headers=FHIR_JSON))["entry"][0]["resource"])[0] == "2.500"


def test_a_change_of_precision_alone_is_a_new_version(fhir: httpx.Client) -> None:
    tag = uuid.uuid4().hex[:10]
    created = exact(fhir.post("/Observation", content=observation_text(tag, "1.5", "x"), headers=FHIR_JSON))
    body = json.dumps(created).replace('"value": "1.5"', '"value": 1.50').replace('"9.90"', "9.90")
    updated = fhir.put(f"/Observation/{created['id']}", content=body, headers=FHIR_JSON)
    assert exact(updated)["meta"]["versionId"] == "2"
    assert values_of(exact(updated))[0] == "1.50"
    again = fhir.put(f"/Observation/{created['id']}", content=body, headers=FHIR_JSON)
    assert exact(again)["meta"]["versionId"] == "2"  # the same text again changes nothing
    old = exact(fhir.get(f"/Observation/{created['id']}/_history/1"))
    assert values_of(old)[0] == "1.5"


def test_a_patch_keeps_the_decimal_it_sets(fhir: httpx.Client) -> None:
    tag = uuid.uuid4().hex[:10]
    oid = exact(fhir.post("/Observation", content=observation_text(tag, "3", "x"), headers=FHIR_JSON))["id"]
    patch = '[{"op": "replace", "path": "/valueQuantity/value", "value": 3.10}]'
    patched = fhir.patch(f"/Observation/{oid}", content=patch, headers={"Content-Type": "application/json-patch+json"})
    assert values_of(exact(patched))[0] == "3.10"
    assert values_of(exact(fhir.get(f"/Observation/{oid}")))[0] == "3.10"


def test_number_searches_still_compare_numbers(fhir: httpx.Client) -> None:
    tag = uuid.uuid4().hex[:10]
    ids = {value: exact(fhir.post("/Observation", content=observation_text(tag, value, "x"),
                                  headers=FHIR_JSON))["id"] for value in WRITTEN}

    def matching(quantity: str) -> set[str]:
        bundle = fhir.get("/Observation", params={"code": f"{SYSTEM}|{tag}", "value-quantity": quantity}).json()
        by_id = {oid: value for value, oid in ids.items()}
        return {by_id[e["resource"]["id"]] for e in bundle.get("entry", [])}

    assert matching("1.5") == {"1.50"}  # 1.5 means [1.45, 1.55)
    assert matching("1.50") == {"1.50"}
    assert matching("1.51") == set()  # [1.505, 1.515)
    assert matching("0.001") == {"1e-3"}
    assert matching("1e-3") == {"1e-3"}
    assert matching("0.0001") == {"0.0001"}
    assert matching("72.5") == {"7.250E+1"}
    assert matching("12345678901234567890") == {"12345678901234567890"}
    assert matching("gt1e19") == {"12345678901234567890"}
    assert matching("lt0.01") == {"1e-3", "0.0001"}
    assert matching("ge1.5") == {"1.50", "7.250E+1", "12345678901234567890"}
    assert matching("le0.0001") == {"0.0001"}
    assert matching("1.5|http://unitsofmeasure.org|mmol/L") == set()  # the stored unit is text only
    assert matching("1.5||mmol/L") == {"1.50"}


def test_exported_files_keep_the_decimals(fhir: httpx.Client) -> None:
    tag = uuid.uuid4().hex[:10]
    for value in WRITTEN:
        fhir.post("/Observation", content=observation_text(tag, value, "x"), headers=FHIR_JSON)
    kick = fhir.get("/$export", params={"_type": "Observation", "_typeFilter": f"Observation?code={SYSTEM}|{tag}"},
                    headers={"Accept": "application/fhir+json", "Prefer": "respond-async"})
    assert kick.status_code == 202, kick.text
    deadline = time.monotonic() + 120
    while (status := fhir.get(kick.headers["Content-Location"])).status_code == 202:
        assert time.monotonic() < deadline, "the export did not finish"
        time.sleep(0.2)
    manifest = status.json()
    [item] = manifest["output"]
    lines = fhir.get(item["url"]).text.splitlines()
    exported = [json.loads(line, parse_float=str, parse_int=str) for line in lines]
    assert sorted(values_of(r)[0] for r in exported) == sorted(WRITTEN)
