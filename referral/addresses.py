"""Vietnamese addresses read into today's units, so an address written before 1 July 2025 compares with one after.

Since 1 July 2025 an address has two levels, province and commune (xã, phường, đặc khu); before,
it had three: province, district, commune. Old An Giang (89) and Kiên Giang (91) are both today's
An Giang (91), and many communes were merged under new names. Records on both sides carry both
forms, so each address is read as:

- **coded** (preferred): the Ministry's `extension-administrative-address` (`state`, `city`,
  `district`, `ward`) or the community guide's `vn-ext-province` / `vn-ext-ward`, codes of the
  statistics office's lists (`docs/terminology.md`: `dvhc-2025`, `dvhc-pre2025`, or no system);
  codes of any other system are passed over for the names written beside them;
- **text**: `state` is the province, `district` the district (old form only), `city` the commune;
  a part of `line` or of `text` ("Phường Mỹ Bình, TP Long Xuyên, An Giang") is placed by the word
  it starts with (xã/phường/thị trấn/đặc khu, quận/huyện/thị xã/thành phố, tỉnh).

An address naming a district (or coded in the old list) is in the old form. With the lists loaded
(`emr terminology load`), names are looked up in the list of their form and old units are turned
into today's through the ConceptMap `dvhc-pre2025-to-2025` (`TerminologyService.translate`), so
"Phường Mỹ Bình, Thành phố Long Xuyên" (old) is today's "Phường Long Xuyên". Without the lists,
two addresses of the same form are compared by folded names, and two of different forms only
when both give codes; anything else is "unknown", never "different".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from fhir_store import StoreError, TerminologyService, fold_text
from referral.values import items

#: The lists as loaded from `fhir_store/terminology/data` (see docs/terminology.md).
UNITS_2025 = "https://emr.angiang.vn/fhir/CodeSystem/dvhc-2025"
UNITS_PRE2025 = "https://emr.angiang.vn/fhir/CodeSystem/dvhc-pre2025"
UNITS_MAP = "https://emr.angiang.vn/fhir/ConceptMap/dvhc-pre2025-to-2025"
MOH_ADDRESS = "http://fhir.ehealth.gov.vn/core/StructureDefinition/extension-administrative-address"
HL7VN_PROVINCE = "http://fhir.hl7.org.vn/core/StructureDefinition/vn-ext-province"
HL7VN_WARD = "http://fhir.hl7.org.vn/core/StructureDefinition/vn-ext-ward"

#: How two addresses agree.
SAME_COMMUNE = 1.0
SAME_PROVINCE = 0.5
OTHER_PROVINCE = 0.0

# Folded words that open a unit's name, by level; longest first so "thi xa" wins over "xa".
_COMMUNE_WORDS = ("thi tran", "dac khu", "phuong", "xa", "tt", "p", "x")
_PLAIN_DISTRICT_WORDS = ("thi xa", "quan", "huyen", "tx", "q", "h")
_DISTRICT_WORDS = ("thanh pho", "tp", *_PLAIN_DISTRICT_WORDS)
_PROVINCE_WORDS = ("thanh pho", "tinh", "tp")
_ALL_WORDS = sorted({*_COMMUNE_WORDS, *_DISTRICT_WORDS, *_PROVINCE_WORDS}, key=len, reverse=True)
_COUNTRY = frozenset({"viet nam", "vietnam", "vn"})


def _opens_with(folded: str, words: Iterable[str]) -> bool:
    return any(folded == w or folded.startswith(w + " ") for w in words)


def bare_name(text: str) -> str:
    """A unit's folded name without the word saying its level: "Phường Mỹ Bình" → "my binh"."""
    folded = fold_text(text)
    for word in _ALL_WORDS:
        if folded.startswith(word + " "):
            return folded[len(word) + 1:]
    return folded


@dataclass(frozen=True)
class Coded:
    code: str
    system: str | None


@dataclass
class _Parts:
    """What one address says, as written."""

    province: str | None = None
    district: str | None = None
    commune: str | None = None
    coded: dict[str, Coded] = field(default_factory=dict)  # level → code


@dataclass(frozen=True)
class Place:
    """An address in today's units: codes where the lists resolved them, else bare folded names."""

    old_form: bool
    province_codes: frozenset[str] = frozenset()
    commune_codes: frozenset[str] = frozenset()
    province: str | None = None
    district: str | None = None
    commune: str | None = None


def compare(a: Place, b: Place) -> float | None:
    """SAME_COMMUNE, SAME_PROVINCE, OTHER_PROVINCE, or None when the two cannot be compared."""
    if a.commune_codes and b.commune_codes and a.commune_codes & b.commune_codes:
        return SAME_COMMUNE
    same_form = a.old_form == b.old_form
    if a.province_codes and b.province_codes:
        same_province: bool | None = bool(a.province_codes & b.province_codes)
    elif same_form and a.province and b.province:
        same_province = a.province == b.province
    else:
        same_province = None
    if same_province is False:
        return OTHER_PROVINCE
    if not (a.commune_codes and b.commune_codes) and same_form and a.commune and a.commune == b.commune \
            and same_province and (not (a.district and b.district) or a.district == b.district):
        return SAME_COMMUNE
    return SAME_PROVINCE if same_province else None


def _coding(value: Any) -> Coded | None:
    """The first coding of a Coding or CodeableConcept value."""
    if not isinstance(value, dict):
        return None
    codings = value.get("coding") if "coding" in value else [value]
    for coding in codings if isinstance(codings, list) else []:
        if isinstance(coding, dict) and isinstance(coding.get("code"), str) and coding["code"].strip():
            system = coding.get("system")
            return Coded(coding["code"].strip(), system if isinstance(system, str) else None)
    return None


def _text_of(value: Any) -> str | None:
    """The display of a coded value, for an address that is coded but not written out."""
    if not isinstance(value, dict):
        return None
    if isinstance(value.get("text"), str):
        return str(value["text"])
    codings = value.get("coding") if "coding" in value else [value]
    for coding in codings if isinstance(codings, list) else []:
        if isinstance(coding, dict) and isinstance(coding.get("display"), str):
            return str(coding["display"])
    return None


def _parts(address: dict[str, Any]) -> _Parts:
    parts = _Parts()
    for ext in items(address.get("extension")):
        if not isinstance(ext, dict):
            continue
        if ext.get("url") == MOH_ADDRESS:
            for sub in items(ext.get("extension")):
                if not isinstance(sub, dict):
                    continue
                level = {"state": "province", "city": "province", "district": "district",
                         "ward": "commune"}.get(str(sub.get("url")))
                value = sub.get("valueCodeableConcept") or sub.get("valueCoding")
                coded = _coding(value)
                if level and coded and level not in parts.coded:
                    parts.coded[level] = coded
                text = _text_of(value)
                if level and text and getattr(parts, level) is None:
                    setattr(parts, level, text)
        elif ext.get("url") in (HL7VN_PROVINCE, HL7VN_WARD):
            level = "province" if ext["url"] == HL7VN_PROVINCE else "commune"
            coded = _coding(ext.get("valueCoding") or ext.get("valueCodeableConcept"))
            if coded:
                parts.coded[level] = coded
            text = _text_of(ext.get("valueCoding"))
            if text and getattr(parts, level) is None:
                setattr(parts, level, text)

    def take(level: str, text: Any) -> None:
        if isinstance(text, str) and text.strip() and getattr(parts, level) is None:
            setattr(parts, level, text.strip())

    take("province", address.get("state"))
    take("district", address.get("district"))
    city = address.get("city")
    if isinstance(city, str) and city.strip():
        folded = fold_text(city)
        if _opens_with(folded, _DISTRICT_WORDS) and not _opens_with(folded, _COMMUNE_WORDS):
            take("district" if parts.province else "province", city)
        else:
            take("commune", city)
    for piece in (p for p in items(address.get("line")) if isinstance(p, str)):
        folded = fold_text(piece)  # only words that say their level: a line is no place for a province
        if _opens_with(folded, _COMMUNE_WORDS):
            take("commune", piece)
        elif _opens_with(folded, _PLAIN_DISTRICT_WORDS):
            take("district", piece)
    whole = address.get("text")
    written = [p for p in whole.split(",") if p.strip() and fold_text(p) not in _COUNTRY] \
        if isinstance(whole, str) else []
    for i, piece in enumerate(written):  # "Phường Mỹ Bình, TP Long Xuyên, An Giang": the province comes last
        folded = fold_text(piece)
        if _opens_with(folded, _COMMUNE_WORDS):
            take("commune", piece)
        elif _opens_with(folded, ("tinh",)) or (
                i == len(written) - 1 and i > 0 and not _opens_with(folded, _PLAIN_DISTRICT_WORDS)):
            take("province", piece)
        elif _opens_with(folded, _DISTRICT_WORDS):
            take("district", piece)  # "thành phố" before the last part is a city of the province
    return parts


class Places:
    """Reads addresses into `Place`s, asking the terminology service (when given and loaded) for codes.

    One instance answers one matching request: what it looked up is kept for the next address.
    """

    def __init__(self, terminology: TerminologyService | None) -> None:
        self._terminology = terminology
        self._codes: dict[tuple[str, str, str, str | None], frozenset[str]] = {}
        self._today: dict[str, frozenset[str]] = {}

    async def place(self, address: dict[str, Any]) -> Place | None:
        parts = _parts(address)
        if not (parts.province or parts.commune or parts.coded):
            return None
        systems = {c.system for c in parts.coded.values()}
        old = UNITS_PRE2025 in systems or (UNITS_2025 not in systems and (
            parts.district is not None or "district" in parts.coded))
        system = UNITS_PRE2025 if old else UNITS_2025
        provinces = await self._unit(parts, "province", system, None)
        parents = provinces
        if old and parts.district:
            districts = await self._unit(parts, "district", system, provinces)
            parents = districts or provinces
        communes = await self._unit(parts, "commune", system, parents) if parents or "commune" in parts.coded \
            else frozenset()
        if old:
            provinces, communes = await self._now(provinces), await self._now(communes)
        return Place(old, provinces, communes,
                     bare_name(parts.province) if parts.province else None,
                     bare_name(parts.district) if parts.district else None,
                     bare_name(parts.commune) if parts.commune else None)

    async def _unit(self, parts: _Parts, level: str, system: str, parents: frozenset[str] | None) -> frozenset[str]:
        """The codes (in `system`) a level of the address names: its own code, else its name under `parents`."""
        coded = parts.coded.get(level)
        if coded is not None and coded.system in (None, system):
            return frozenset({coded.code})
        name: str | None = getattr(parts, level)
        if name is None or parents is not None and not parents:
            return frozenset()
        found: set[str] = set()
        for parent in sorted(parents) if parents else [None]:
            found |= await self._named(system, "province" if level == "province" else
                                       "district" if level == "district" else "ward", name, parent)
        return frozenset(found)

    async def _named(self, system: str, kind: str, name: str, parent: str | None) -> frozenset[str]:
        key = (system, kind, bare_name(name), parent)
        if key in self._codes:
            return self._codes[key]
        found: frozenset[str] = frozenset()
        if self._terminology is not None and key[2]:
            include: dict[str, Any] = {"system": system, "filter": [{"property": "kind", "op": "=", "value": kind}]}
            if parent:
                include["filter"].append({"property": "concept", "op": "descendent-of", "value": parent})
            try:
                expansion = (await self._terminology.expand(
                    value_set={"resourceType": "ValueSet", "status": "active", "compose": {"include": [include]}},
                    text=key[2], count=50))["expansion"]
            except StoreError:
                self._terminology = None  # the lists are not loaded: names alone from here on
            else:
                hits = [c for c in expansion.get("contains", []) if bare_name(str(c.get("display", ""))) == key[2]]
                written = fold_text(name)
                exact = [c for c in hits if fold_text(str(c.get("display", ""))) == written]
                found = frozenset(str(c["code"]) for c in exact or hits)
        self._codes[key] = found
        return found

    async def _now(self, old_codes: frozenset[str]) -> frozenset[str]:
        """Today's units for units of the old list: a divided commune maps to each of its parts."""
        found: set[str] = set()
        for code in old_codes:
            if code not in self._today:
                self._today[code] = await self._translate(code)
            found |= self._today[code]
        return frozenset(found)

    async def _translate(self, code: str) -> frozenset[str]:
        if self._terminology is None:
            return frozenset()
        try:
            answer = await self._terminology.translate(url=UNITS_MAP, system=UNITS_PRE2025, code=code,
                                                       target=UNITS_2025)
        except StoreError:
            return frozenset()
        targets = set()
        for param in answer.get("parameter", []):
            if param.get("name") != "match":
                continue
            for part in param.get("part", []):
                if part.get("name") == "concept" and isinstance(part.get("valueCoding"), dict):
                    targets.add(str(part["valueCoding"].get("code")))
        return frozenset(targets)
