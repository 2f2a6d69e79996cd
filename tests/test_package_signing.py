"""Signed referral packages (issue #12): a Synthea patient's Bundle signed by the sending hospital, verified
against its pinned key; every kind of unsigned, altered, foreign-signed or damaged package is refused."""

from __future__ import annotations

import base64
import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from joserfc import jws
from joserfc.jwk import ECKey, OctKey, RSAKey

from fhir_store import Forbidden, dump_json, load_json
from referral import (
    SignatureRefused,
    canonical_json,
    key_fingerprint,
    short_fingerprint,
    sign_package,
    verify_package,
)
from tests.synthea import bundle_file

SIGNER = "Organization/bvdk-tan-chau"
WHEN = datetime(2025, 3, 4, 8, 30, 15, 123000, tzinfo=UTC)


@pytest.fixture(scope="module")
def package() -> dict[str, Any]:
    """A real referral's content: a Synthea patient's transaction Bundle, parsed as the API parses it."""
    bundle: dict[str, Any] = load_json(bundle_file("Buster_Hoeger").read_bytes())
    return bundle


@pytest.fixture(scope="module")
def ec_key() -> ECKey:
    return ECKey.generate_key("P-256", parameters={"kid": "tan-chau-2025"})


@pytest.fixture(scope="module")
def rsa_key() -> RSAKey:
    return RSAKey.generate_key(2048)


def public(key: ECKey | RSAKey) -> dict[str, Any]:
    return dict(key.as_dict(private=False))


def signed_with(package: dict[str, Any], key: ECKey | RSAKey) -> dict[str, Any]:
    return sign_package(package, key, signer_reference=SIGNER, when=WHEN)


def jose_signature(bundle: dict[str, Any]) -> dict[str, Any]:
    provenance = bundle["entry"][-1]["resource"]
    assert provenance["resourceType"] == "Provenance"
    signature: dict[str, Any] = provenance["signature"][0]
    return signature


def jws_parts(bundle: dict[str, Any]) -> list[str]:
    return base64.b64decode(jose_signature(bundle)["data"]).decode().split(".")


def with_jws(bundle: dict[str, Any], token: str) -> dict[str, Any]:
    changed = copy.deepcopy(bundle)
    jose_signature(changed)["data"] = base64.b64encode(token.encode()).decode()
    return changed


def refused(bundle: Any, keys: list[Any], reason: str) -> str:
    with pytest.raises(SignatureRefused) as caught:
        verify_package(bundle, keys)
    assert caught.value.reason == reason, str(caught.value)
    return str(caught.value)


def patient(bundle: dict[str, Any]) -> dict[str, Any]:
    resource: dict[str, Any] = next(e["resource"] for e in bundle["entry"]
                                    if e["resource"]["resourceType"] == "Patient")
    return resource


# ---- signing and verifying ------------------------------------------------------------------------


def test_es256_package_verifies_against_the_pinned_key(package: dict[str, Any], ec_key: ECKey) -> None:
    signed = signed_with(package, ec_key)
    assert "Provenance" not in {e["resource"]["resourceType"] for e in package["entry"]}, "input left alone"
    assert len(signed["entry"]) == len(package["entry"]) + 1
    provenance = signed["entry"][-1]
    assert provenance["request"] == {"method": "POST", "url": "Provenance"}
    assert len(provenance["resource"]["target"]) == len(package["entry"])
    signature = jose_signature(signed)
    assert signature["type"] == [{"system": "urn:iso-astm:E1762-95:2013", "code": "1.2.840.10065.1.12.1.1",
                                  "display": "Author's Signature"}]
    assert signature["when"] == "2025-03-04T08:30:15.123Z"
    assert signature["who"] == {"reference": SIGNER}
    assert (signature["sigFormat"], signature["targetFormat"]) == ("application/jose", "application/fhir+json")
    header, payload, sig = jws_parts(signed)
    assert payload == "", "detached (RFC 7515 Appendix F)"
    assert json.loads(base64.urlsafe_b64decode(header + "==")) == {"alg": "ES256", "kid": "tan-chau-2025"}
    assert len(base64.urlsafe_b64decode(sig + "==")) == 64

    verified = verify_package(signed, [public(ec_key)])
    assert (verified.alg, verified.kid, verified.signer) == ("ES256", "tan-chau-2025", SIGNER)
    assert verified.fingerprint == key_fingerprint(public(ec_key))
    assert verified.when == "2025-03-04T08:30:15.123Z"
    assert verified.provenance == provenance["fullUrl"]


def test_rs256_package_verifies_and_a_key_without_kid_is_named_by_its_thumbprint(
        package: dict[str, Any], rsa_key: RSAKey, ec_key: ECKey) -> None:
    signed = signed_with(package, rsa_key)
    header = json.loads(base64.urlsafe_b64decode(jws_parts(signed)[0] + "=="))
    assert header == {"alg": "RS256", "kid": key_fingerprint(rsa_key)}
    verified = verify_package(signed, [public(ec_key), public(rsa_key)])  # the partner's keys, any order
    assert (verified.alg, verified.fingerprint) == ("RS256", key_fingerprint(rsa_key))


def test_the_same_package_survives_fhir_json_text_with_decimals(package: dict[str, Any], ec_key: ECKey) -> None:
    observation = load_json(b'{"resourceType": "Observation", "id": "lab-1", "status": "final",'
                            b' "code": {"text": "creatinine"},'
                            b' "component": [{"code": {"text": "a"}, "valueQuantity": {"value": 1.50}},'
                            b' {"code": {"text": "b"}, "valueQuantity": {"value": 1e-3}},'
                            b' {"code": {"text": "c"}, "valueInteger": 7},'
                            b' {"code": {"text": "d"}, "valueQuantity": {"value": 12345678901234567890}}]}')
    bundle = copy.deepcopy(package)
    bundle["entry"].append({"fullUrl": "urn:uuid:lab-1", "resource": observation,
                            "request": {"method": "POST", "url": "Observation"}})
    signed = signed_with(bundle, ec_key)
    text = dump_json(signed)
    assert b'"value":1.50' in text and b'"value":1e-3' in text and b'"value":12345678901234567890' in text
    received = load_json(text)
    assert verify_package(received, [public(ec_key)]).alg == "ES256"
    # Precision is signed: 1.50 → 1.5 is an alteration, though the same float.
    refused(load_json(text.replace(b'"value":1.50', b'"value":1.5')), [public(ec_key)], "altered")
    refused(load_json(text.replace(b"12345678901234567890", b"12345678901234567891")), [public(ec_key)], "altered")
    # The same decimal in another notation is the same canonical number.
    assert verify_package(load_json(text.replace(b'"value":1e-3', b'"value":0.001')), [public(ec_key)])


def test_numbers_of_a_sender_built_in_python_agree_after_the_round_trip(ec_key: ECKey) -> None:
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"fullUrl": "urn:uuid:o", "resource": {
        "resourceType": "Observation", "valueQuantity": {"value": 12345678901234567890}, "extension": [
            {"url": "x", "valueDecimal": 0.1}, {"url": "y", "valueDecimal": 1e-7}, {"url": "z", "valueDecimal": 5.0},
            {"url": "w", "valueInteger": -3}]}}]}
    signed = sign_package(bundle, ec_key, signer_reference=SIGNER, when=WHEN)
    received = load_json(dump_json(signed))
    assert type(received["entry"][0]["resource"]["valueQuantity"]["value"]) is not int  # now an exact decimal
    assert canonical_json(received) == canonical_json(signed)
    verify_package(received, [public(ec_key)])


# ---- the canonical form ---------------------------------------------------------------------------


def test_canonical_json_is_rfc8785_with_exact_decimals() -> None:
    # RFC 8785 §3.2.3: members sorted by UTF-16 code units, so the emoji (a surrogate pair) sorts before U+FB33.
    keys = ["\u20ac", "\r", "\ufb33", "1", "\U0001f600", "\u0080", "\u00f6"]
    canonical = canonical_json({k: 1 for k in keys}).decode()
    assert list(json.loads(canonical)) == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]
    assert canonical_json({"b": [True, None, "Nguy\u1ec5n\n\u000f\"\\/"], "a": {"z": 1, "y": -0.0}}) == (
        '{"a":{"y":-0.0,"z":1},"b":[true,null,"Nguy\u1ec5n\\n\\u000f\\"\\\\/"]}'.encode())
    numbers = load_json(b"[1.50, 1e-3, 1E-3, 0.001, 12345678901234567890, 1e2, 100, 15e-1, 2.0]")
    assert canonical_json({"n": numbers}) == b'{"n":[1.50,0.001,0.001,0.001,12345678901234567890,1E+2,100,1.5,2.0]}'
    with pytest.raises(ValueError):
        canonical_json({"n": float("nan")})


def test_only_the_signature_data_is_left_out(package: dict[str, Any], ec_key: ECKey) -> None:
    signed = signed_with(package, ec_key)
    unsigned_form = copy.deepcopy(signed)
    del jose_signature(unsigned_form)["data"]
    assert canonical_json(signed) == canonical_json(unsigned_form)
    assert b'"sigFormat":"application/jose"' in canonical_json(signed)  # the rest of the signature is signed
    later = copy.deepcopy(signed)
    jose_signature(later)["when"] = "2025-03-05T08:30:15.123Z"
    refused(later, [public(ec_key)], "altered")


# ---- refusals -------------------------------------------------------------------------------------


def test_altered_packages_are_refused(package: dict[str, Any], ec_key: ECKey) -> None:
    signed = signed_with(package, ec_key)
    keys = [public(ec_key)]

    renamed = copy.deepcopy(signed)
    patient(renamed)["name"][0]["family"] = "Nguyễn"
    assert "does not match the package" in refused(renamed, keys, "altered")

    added = copy.deepcopy(signed)
    added["entry"].insert(1, {"fullUrl": "urn:uuid:extra", "resource": {"resourceType": "Condition"},
                              "request": {"method": "POST", "url": "Condition"}})
    refused(added, keys, "altered")

    removed = copy.deepcopy(signed)
    del removed["entry"][3]
    refused(removed, keys, "altered")

    reordered = copy.deepcopy(signed)  # entry order is part of what is signed
    reordered["entry"][1], reordered["entry"][2] = reordered["entry"][2], reordered["entry"][1]
    refused(reordered, keys, "altered")

    retyped = copy.deepcopy(signed)
    retyped["type"] = "batch"
    refused(retyped, keys, "altered")


def test_foreign_signed_packages_are_refused(package: dict[str, Any], ec_key: ECKey) -> None:
    stranger = ECKey.generate_key("P-256")
    message = refused(signed_with(package, stranger), [public(ec_key)], "foreign-signed")
    assert key_fingerprint(stranger) in message and "not pinned" in message
    refused(signed_with(package, ec_key), [], "foreign-signed")  # a partner with no key pinned
    # A stranger who copies the partner's kid is caught by the signature itself.
    impostor = ECKey.generate_key("P-256", parameters={"kid": "tan-chau-2025"})
    refused(signed_with(package, impostor), [public(ec_key)], "altered")


def test_unsigned_packages_are_refused(package: dict[str, Any], ec_key: ECKey) -> None:
    assert "no Provenance entry" in refused(package, [public(ec_key)], "unsigned")
    signed = signed_with(package, ec_key)
    del jose_signature(signed)["data"]
    refused(signed, [public(ec_key)], "unsigned")
    refused({"resourceType": "Patient"}, [public(ec_key)], "malformed")


def test_other_algorithms_are_refused(package: dict[str, Any], ec_key: ECKey, rsa_key: RSAKey) -> None:
    signed = signed_with(package, ec_key)
    header, _, _ = jws_parts(signed)

    def b64(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    none = with_jws(signed, b64({"alg": "none", "kid": "tan-chau-2025"}) + "..")
    assert "'none'" in refused(none, [public(ec_key)], "algorithm")
    # HS256 keyed with the public key's text, the classic confusion attack.
    secret = OctKey.import_key(json.dumps(public(ec_key)).encode())
    payload = canonical_json(signed)
    hs = jws.serialize_compact({"alg": "HS256", "kid": "tan-chau-2025"}, payload, secret, algorithms=["HS256"])
    refused(with_jws(signed, hs.split(".")[0] + ".." + hs.split(".")[2]), [public(ec_key)], "algorithm")
    # ES256 claimed, but the pinned key of that kid is an RSA key.
    rsa_pinned = {**public(rsa_key), "kid": "tan-chau-2025"}
    assert "RSA" in refused(signed, [rsa_pinned], "algorithm")


def test_malformed_signatures_are_refused(package: dict[str, Any], ec_key: ECKey) -> None:
    signed = signed_with(package, ec_key)
    keys = [public(ec_key)]
    header, _, sig = jws_parts(signed)

    assert "64" in refused(with_jws(signed, f"{header}..{sig[:40]}"), keys, "malformed")  # truncated signature
    refused(with_jws(signed, f"{header}.."), keys, "malformed")  # no signature at all
    refused(with_jws(signed, f"{header}.{sig}"), keys, "malformed")  # two parts
    refused(with_jws(signed, f"{header[:10]}..{sig}"), keys, "malformed")  # truncated header
    attached = base64.urlsafe_b64encode(canonical_json(signed)).rstrip(b"=").decode()
    assert "detached" in refused(with_jws(signed, f"{header}.{attached}.{sig}"), keys, "malformed")
    truncated_data = copy.deepcopy(signed)
    jose_signature(truncated_data)["data"] = jose_signature(signed)["data"][:-7]
    refused(truncated_data, keys, "malformed")
    twice = copy.deepcopy(signed)
    twice["entry"].append(copy.deepcopy(signed["entry"][-1]))
    assert "exactly one" in refused(twice, keys, "malformed")


def test_a_refusal_is_a_forbidden_store_error_with_an_outcome(package: dict[str, Any], ec_key: ECKey) -> None:
    with pytest.raises(Forbidden) as caught:
        verify_package(package, [public(ec_key)])
    assert caught.value.status == 403
    assert caught.value.issues[0].to_fhir()["code"] == "forbidden"
    assert "unsigned" in caught.value.issues[0].diagnostics


# ---- re-signing, an existing Provenance, fingerprints ---------------------------------------------


def test_resigning_replaces_the_signature_and_an_existing_provenance_can_carry_it(
        package: dict[str, Any], ec_key: ECKey, rsa_key: RSAKey) -> None:
    resigned = signed_with(signed_with(package, ec_key), rsa_key)
    assert len(resigned["entry"]) == len(package["entry"]) + 1
    assert len(resigned["entry"][-1]["resource"]["signature"]) == 1
    assert verify_package(resigned, [public(rsa_key)]).alg == "RS256"
    refused(resigned, [public(ec_key)], "foreign-signed")

    bundle = copy.deepcopy(package)
    bundle["entry"].append({"fullUrl": "urn:uuid:prov", "resource": {
        "resourceType": "Provenance", "target": [{"reference": bundle["entry"][0]["fullUrl"]}],
        "recorded": "2025-03-04T08:00:00Z", "agent": [{"who": {"reference": SIGNER}}]}})
    signed = sign_package(bundle, ec_key, signer_reference=SIGNER, when=WHEN, provenance="urn:uuid:prov")
    assert len(signed["entry"]) == len(bundle["entry"])
    assert verify_package(signed, [public(ec_key)]).provenance == "urn:uuid:prov"


def test_key_fingerprint_is_the_rfc7638_thumbprint() -> None:
    rfc7638_example = {  # RFC 7638 §3.1
        "kty": "RSA", "e": "AQAB", "alg": "RS256", "kid": "2011-04-29",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCi"
             "FV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZg"
             "nYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniI"
             "qbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"}
    assert key_fingerprint(rfc7638_example) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    digest = base64.urlsafe_b64decode("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs=")
    assert short_fingerprint(rfc7638_example) == " ".join(
        digest[:10].hex().upper()[i:i + 4] for i in range(0, 20, 4))
    assert len(short_fingerprint(rfc7638_example)) == 24
