"""Signed referral packages: the sending facility signs the Bundle, the receiver checks it before storing anything.

The signature is a detached compact JWS (RFC 7515 Appendix F: `header..signature`, ES256 or RS256)
over `canonical_json(bundle)`, carried base64-encoded in `Provenance.signature.data` with
`sigFormat` `application/jose` and `targetFormat` `application/fhir+json`, as Da Vinci CDex does.

**What is signed** (`canonical_json`): the whole Bundle as sent (its `id`, `meta`, `type`, every entry with
its `fullUrl`, `request` and resource, and the package Provenance itself, its signature's `type`, `when`,
`who`, `sigFormat` and `targetFormat` included), with exactly one thing left out: the `data` of each
`Provenance.signature` whose `sigFormat` is `application/jose` (the JWS cannot sign itself; a package
carries exactly one, `verify_package` refuses more). Entry order is signed: a JSON array's order is part of
its content under RFC 8785, a document Bundle's first entry means something, and nothing should reorder a
package between the sender and the verifier. So the signature must be checked on the Bundle as received,
before the server assigns ids or `meta`.

**Canonical form**: RFC 8785 (JCS) — no whitespace, object members sorted by the UTF-16 code units of
their names, strings escaped as ECMAScript's `JSON.stringify` does, UTF-8 — except for numbers. JCS writes
a number as the IEEE-754 double nearest to it, which would let anyone turn `1.50` into `1.5` or change the
last digits of `12345678901234567890` without breaking the signature, and FHIR gives a decimal's precision
meaning. Here a number is written as the exact decimal it was written as (the text `fhir_store` keeps in
its decimals, the shortest round-trip text of a plain float, the digits of an integer), normalised with
the General Decimal Arithmetic "to-scientific-string" (Python's `str(Decimal)`): one text for one (sign,
digits, exponent), so `1e-3`, `1E-3` and `0.001` agree (same value, same precision), `15e-1` is `1.5`,
and `1.50` stays apart from `1.5` (`1e2` from `100`), as its precision does. Sender and receiver agree
after a round trip through `fhir_store.dump_json`/`load_json`, which keep each decimal's text; a plain JCS
library elsewhere writes numbers differently (`1.5`, `5`, `1e-7` for our `1.50`, `5.0`, `1E-7`).
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import math
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from joserfc import jws
from joserfc.errors import BadSignatureError, JoseError
from joserfc.jwk import ECKey, Key, RSAKey, import_key

from fhir_store import Forbidden, dump_json, format_instant

SIG_FORMAT = "application/jose"
TARGET_FORMAT = "application/fhir+json"
#: The signature's type: ISO/ASTM E1762-95 "Author's Signature".
AUTHOR_SIGNATURE = {"system": "urn:iso-astm:E1762-95:2013", "code": "1.2.840.10065.1.12.1.1",
                    "display": "Author's Signature"}
#: The only algorithms a package may be signed with (never `none`, never a shared-secret HMAC).
ALGORITHMS = ("ES256", "RS256")
_MIN_RSA_BITS = 2048
#: The largest canonical Bundle signed or checked (joserfc's own default, 128 kB, is less than one patient's record).
MAX_PACKAGE_BYTES = 64 * 1024 * 1024
_REGISTRY = jws.JWSRegistry(algorithms=list(ALGORITHMS))
_REGISTRY.max_payload_length = 4 * MAX_PACKAGE_BYTES // 3 + 4  # counted base64url-encoded


class SignatureRefused(Forbidden):
    """A referral package whose signature does not hold; nothing of it may be stored.

    `reason` is one of `unsigned`, `altered`, `foreign-signed`, `algorithm`, `malformed`; the message says
    exactly what was found (a `Forbidden`, so the API answers 403 with an OperationOutcome).
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"Referral package refused ({reason}): {detail}")
        self.reason = reason


@dataclass(frozen=True)
class VerifiedPackage:
    """A package whose signature holds against a pinned key."""

    bundle: dict[str, Any]
    alg: str
    kid: str
    fingerprint: str  # RFC 7638 thumbprint of the pinned key that verified it
    signer: str | None  # Provenance.signature.who.reference
    when: str | None  # Provenance.signature.when
    provenance: str | None  # the fullUrl of the Provenance entry that carries the signature


# ---- canonical form -------------------------------------------------------------------------------


def canonical_json(bundle: Mapping[str, Any]) -> bytes:
    """The bytes that are signed: RFC 8785 with exact decimals, the JOSE signatures' `data` left out.

    Raises `ValueError` for what is not JSON (a non-finite number, a lone surrogate, a non-string key)."""
    out: list[str] = []
    _write(_without_signature_data(bundle), out)
    try:
        return "".join(out).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"the Bundle holds text that is not Unicode: {exc.reason}") from None


def _without_signature_data(bundle: Mapping[str, Any]) -> Mapping[str, Any]:
    found = _jose_signatures(bundle)
    if not found:
        return bundle
    entries = list(bundle["entry"])
    for index, position in found:
        resource = dict(entries[index]["resource"])
        signatures = list(resource["signature"])
        signatures[position] = {k: v for k, v in signatures[position].items() if k != "data"}
        resource["signature"] = signatures
        entries[index] = {**entries[index], "resource": resource}
    return {**bundle, "entry": entries}


def _jose_signatures(bundle: Mapping[str, Any]) -> list[tuple[int, int]]:
    """Where the JOSE signatures are: (entry index, signature index) of each."""
    found: list[tuple[int, int]] = []
    entries = bundle.get("entry")
    if not isinstance(entries, list):
        return found
    for index, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or resource.get("resourceType") != "Provenance":
            continue
        signatures = resource.get("signature")
        if isinstance(signatures, list):
            found += [(index, i) for i, s in enumerate(signatures)
                      if isinstance(s, dict) and s.get("sigFormat") == SIG_FORMAT]
    return found


def _write(value: Any, out: list[str]) -> None:
    if isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str):
                raise ValueError(f"object member name {key!r} is not a string")
        out.append("{")
        for n, key in enumerate(sorted(value, key=_utf16)):
            if n:
                out.append(",")
            out.append(_string(key))
            out.append(":")
            _write(value[key], out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for n, item in enumerate(value):
            if n:
                out.append(",")
            _write(item, out)
        out.append("]")
    elif isinstance(value, str):
        out.append(_string(value))
    elif value is None or isinstance(value, bool):
        out.append({None: "null", True: "true", False: "false"}[value])
    elif isinstance(value, int | float):
        out.append(_number(value))
    else:
        raise ValueError(f"{type(value).__name__} is not JSON")


def _utf16(key: str) -> bytes:
    return key.encode("utf-16-be", "surrogatepass")  # byte order of UTF-16BE = order of the code units


def _string(text: str) -> str:
    # The standard library escapes exactly as JSON.stringify does: \" \\ \b \f \n \r \t, other controls as
    # \u00xx (lower-case hex), everything else as itself.
    return json.dumps(text, ensure_ascii=False)


def _number(number: int | float) -> str:
    if isinstance(number, float) and not math.isfinite(number):
        raise ValueError(f"{number} is not a JSON number")
    written = dump_json(number).decode()  # an exact decimal's own text, a float's shortest, an int's digits
    try:
        return str(Decimal(written))
    except InvalidOperation:
        raise ValueError(f"{written} is not a JSON number") from None


# ---- keys -----------------------------------------------------------------------------------------


def _key(jwk: Mapping[str, Any] | Key) -> Key:
    if isinstance(jwk, Mapping):
        return import_key(dict(jwk))
    return jwk


def key_fingerprint(public_jwk: Mapping[str, Any] | Key) -> str:
    """The key's RFC 7638 SHA-256 thumbprint, base64url (43 characters; the private part plays no role)."""
    return _key(public_jwk).thumbprint()


def short_fingerprint(public_jwk: Mapping[str, Any] | Key) -> str:
    """The first 80 bits of the thumbprint as upper-case hex in five groups of four (`"6C61 8110 7DE7 F14E
    A5B3"`), for staff to read out on the telephone when a partner's key is pinned."""
    digest = base64.urlsafe_b64decode(key_fingerprint(public_jwk) + "=")
    text = digest[:10].hex().upper()
    return " ".join(text[i:i + 4] for i in range(0, len(text), 4))


def _algorithm(key: Key) -> str:
    if isinstance(key, ECKey) and key.curve_name == "P-256":
        return "ES256"
    if isinstance(key, RSAKey):
        return "RS256"
    raise ValueError(f"a referral package is signed with an EC P-256 (ES256) or RSA (RS256) key, not {key.key_type}")


# ---- signing --------------------------------------------------------------------------------------


def sign_package(bundle: Mapping[str, Any], key: ECKey | RSAKey, *, signer_reference: str, when: datetime,
                 provenance: str | None = None) -> dict[str, Any]:
    """A copy of `bundle` signed with the private `key` (EC P-256 → ES256, RSA → RS256).

    The signature goes to the Provenance entry that already carries a JOSE signature (it is replaced: a
    re-signed package), else to the Provenance entry whose fullUrl is `provenance`, else to a new Provenance
    entry appended to the Bundle (targeting every entry, its agent the signer). The JWS header names the
    `kid`: the key's own, or its RFC 7638 thumbprint when it has none."""
    alg = _algorithm(key)
    if not key.is_private:
        raise ValueError("signing needs the private key")
    if bundle.get("resourceType") != "Bundle":
        raise ValueError("only a Bundle is signed as a referral package")
    signed: dict[str, Any] = copy.deepcopy(dict(bundle))
    entries: list[Any] = signed.setdefault("entry", [])
    instant = format_instant(when)
    signature: dict[str, Any] = {"type": [dict(AUTHOR_SIGNATURE)], "when": instant,
                                 "who": {"reference": signer_reference},
                                 "targetFormat": TARGET_FORMAT, "sigFormat": SIG_FORMAT}
    existing = _jose_signatures(signed)
    if len(existing) > 1:
        raise ValueError("the Bundle already carries more than one JOSE signature")
    if existing:
        index, position = existing[0]
        entries[index]["resource"]["signature"][position] = signature
    elif provenance is not None:
        carrier = next((e for e in entries if isinstance(e, dict) and e.get("fullUrl") == provenance), None)
        if carrier is None or carrier.get("resource", {}).get("resourceType") != "Provenance":
            raise ValueError(f"the Bundle has no Provenance entry {provenance}")
        carrier["resource"].setdefault("signature", []).append(signature)
    else:
        entries.append(_provenance_entry(signed, signature, signer_reference, instant))
    kid = key.kid or key.thumbprint()
    token = jws.serialize_compact({"alg": alg, "kid": kid}, canonical_json(signed), key, algorithms=[alg],
                                  registry=_REGISTRY)
    header, _, signature_part = token.split(".")
    signature["data"] = base64.b64encode(f"{header}..{signature_part}".encode("ascii")).decode("ascii")
    return signed


def _provenance_entry(bundle: dict[str, Any], signature: dict[str, Any], signer: str,
                      instant: str) -> dict[str, Any]:
    targets = []
    for existing in bundle["entry"]:
        resource = existing.get("resource") or {}
        if existing.get("fullUrl"):
            targets.append({"reference": existing["fullUrl"]})
        elif resource.get("resourceType") and resource.get("id"):
            targets.append({"reference": f"{resource['resourceType']}/{resource['id']}"})
    full_url = f"urn:uuid:{uuid.uuid4()}"
    entry: dict[str, Any] = {"fullUrl": full_url, "resource": {
        "resourceType": "Provenance", "target": targets, "recorded": instant,
        "agent": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                                        "code": "author"}]},
                   "who": {"reference": signer}}],
        "signature": [signature]}}
    if bundle.get("type") in ("transaction", "batch"):
        entry["request"] = {"method": "POST", "url": "Provenance"}
    return entry


# ---- verifying ------------------------------------------------------------------------------------


def verify_package(bundle: Mapping[str, Any], pinned_keys: Iterable[Mapping[str, Any] | Key]) -> VerifiedPackage:
    """Check the package's signature against the keys pinned for its sending partner (public JWKs).

    Raises `SignatureRefused` when the package is unsigned, signed with an algorithm other than ES256/RS256,
    signed by a key not pinned (`foreign-signed`), altered in any way after signing, or its JWS is malformed."""
    if not isinstance(bundle, Mapping) or bundle.get("resourceType") != "Bundle":
        raise SignatureRefused("malformed", "a referral package is a Bundle")
    found = _jose_signatures(bundle)
    if not found:
        raise SignatureRefused("unsigned", f"no Provenance entry carries a signature with sigFormat {SIG_FORMAT}")
    if len(found) > 1:
        raise SignatureRefused("malformed", f"{len(found)} Provenance signatures with sigFormat {SIG_FORMAT}: "
                                            "a package carries exactly one")
    index, position = found[0]
    entry = bundle["entry"][index]
    element = entry["resource"]["signature"][position]
    header_part, signature_part = _detached_jws(element.get("data"))
    header = _header(header_part)
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        raise SignatureRefused("algorithm", f"the JWS is signed with {alg!r}; only {' or '.join(ALGORITHMS)} "
                                            "are accepted")
    for name in ("crit", "b64"):
        if name in header:
            raise SignatureRefused("malformed", f"the JWS header has {name!r}, which a package signature never has")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise SignatureRefused("malformed", "the JWS header names no key (kid)")
    key = _pinned(kid, pinned_keys)
    if not signature_part:
        raise SignatureRefused("malformed", "the JWS signature is empty")
    if alg != _algorithm_or_none(key):
        raise SignatureRefused("algorithm", f"the JWS says {alg}, but the pinned key {kid} is a "
                                            f"{key.key_type} key (for {_algorithm_or_none(key) or 'neither'})")
    _check_signature_length(alg, key, signature_part)
    try:
        canonical = canonical_json(bundle)
    except ValueError as exc:
        raise SignatureRefused("malformed", f"the package is not JSON that can be signed: {exc}") from None
    if len(canonical) > MAX_PACKAGE_BYTES:
        raise SignatureRefused("malformed", f"the package is {len(canonical)} bytes, more than the "
                                            f"{MAX_PACKAGE_BYTES} a package may have")
    payload = base64.urlsafe_b64encode(canonical).rstrip(b"=").decode("ascii")
    try:
        jws.deserialize_compact(f"{header_part}.{payload}.{signature_part}", key, algorithms=[alg],
                                registry=_REGISTRY)
    except BadSignatureError:
        raise SignatureRefused("altered", f"the signature of key {kid} does not match the package: changed after "
                                          "it was signed (an entry added, removed, reordered or edited)") from None
    except (JoseError, ValueError) as exc:
        raise SignatureRefused("malformed", f"the JWS cannot be checked: {exc}") from None
    who = element.get("who")
    return VerifiedPackage(
        bundle=dict(bundle), alg=alg, kid=kid, fingerprint=key.thumbprint(),
        signer=who.get("reference") if isinstance(who, dict) else None,
        when=element.get("when") if isinstance(element.get("when"), str) else None,
        provenance=entry.get("fullUrl"))


def _detached_jws(data: Any) -> tuple[str, str]:
    if not isinstance(data, str) or not data:
        raise SignatureRefused("unsigned", f"the Provenance signature with sigFormat {SIG_FORMAT} has no data")
    try:
        text = base64.b64decode(data, validate=True).decode("ascii")
    except (binascii.Error, ValueError):
        raise SignatureRefused("malformed", "Provenance.signature.data is not base64 of a compact JWS") from None
    parts = text.split(".")
    if len(parts) != 3:
        raise SignatureRefused("malformed", f"the JWS has {len(parts)} parts, not 3 (header..signature)")
    header_part, payload_part, signature_part = parts
    if payload_part:
        raise SignatureRefused("malformed", "the JWS carries its payload: a package signature is detached "
                                            "(RFC 7515 Appendix F), over the Bundle itself")
    if not header_part:
        raise SignatureRefused("malformed", "the JWS header is empty")
    return header_part, signature_part


def _b64url(part: str) -> bytes:
    if not all(c.isascii() and (c.isalnum() or c in "-_") for c in part):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _header(part: str) -> dict[str, Any]:
    try:
        header: Any = json.loads(_b64url(part))
    except (binascii.Error, ValueError):
        raise SignatureRefused("malformed", "the JWS header is not base64url JSON") from None
    if not isinstance(header, dict):
        raise SignatureRefused("malformed", "the JWS header is not a JSON object")
    return header


def _pinned(kid: str, pinned_keys: Iterable[Mapping[str, Any] | Key]) -> Key:
    for candidate in pinned_keys:
        key = _key(candidate)
        if kid in (key.kid, key.thumbprint()):
            return key
    raise SignatureRefused("foreign-signed", f"signed with key {kid}, which is not pinned for this partner")


def _algorithm_or_none(key: Key) -> str | None:
    try:
        return _algorithm(key)
    except ValueError:
        return None


def _check_signature_length(alg: str, key: Key, signature_part: str) -> None:
    try:
        raw = _b64url(signature_part)
    except (binascii.Error, ValueError):
        raise SignatureRefused("malformed", "the JWS signature is not base64url") from None
    if alg == "ES256":
        expected = 64
    else:
        modulus = _b64url(str(key.as_dict(private=False)["n"]))
        expected = len(modulus.lstrip(b"\0"))
        if expected * 8 < _MIN_RSA_BITS:
            raise SignatureRefused("algorithm", f"the pinned RSA key {key.kid or ''} is shorter than "
                                                f"{_MIN_RSA_BITS} bits")
    if len(raw) != expected:
        raise SignatureRefused("malformed", f"the {alg} signature is {len(raw)} bytes, not {expected}: truncated "
                                            "or damaged")
