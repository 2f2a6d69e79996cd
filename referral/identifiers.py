"""The national numbers a Vietnamese Patient carries, read the same way whichever guide the sender followed.

Two VN Core guides are in use (`../shared/data/vn-core-ig/README.md`): the Ministry's
(`http://fhir.ehealth.gov.vn/core/sid/...`) and HL7 Vietnam's community guide
(`http://fhir.hl7.org.vn/core/sid/...`). They name the same citizen id (CCCD) and the same
health-insurance number (BHYT) under different systems, so both systems of each are one identifier here.

A BHYT number is written in one of three forms (`../shared/notes/vietnam.md`):
- the old 15-character card code: 2-letter beneficiary group, 1-digit benefit level, 2-digit
  province, then the 10-digit social-insurance number (`DN4890123456789`);
- the 10-digit social-insurance number alone (mã số BHXH, on cards since 2021);
- the 12-digit CCCD, which serves as the insurance number since Decree 188/2025.
The card and the social-insurance number are comparable (the card ends with it); a CCCD is
comparable only with a CCCD, since nothing links it to the social-insurance number arithmetically.
A card's group, level and province change over a life (a student becomes a worker, moves), so cards
are compared on their last 10 digits, never as whole codes.

Identifiers under any other system (a facility's own patient code, `patient-internal-id`, a passport)
are not read at all: a district hospital's record number means nothing at the provincial hospital.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

#: The CCCD (căn cước công dân / số định danh cá nhân, 12 digits) in the Ministry's and the community's guide.
CCCD_MOH = "http://fhir.ehealth.gov.vn/core/sid/national_id"
CCCD_HL7VN = "http://fhir.hl7.org.vn/core/sid/cccd"
CCCD_SYSTEMS = (CCCD_MOH, CCCD_HL7VN)
#: The health-insurance number (số thẻ BHYT) in the Ministry's and the community's guide.
BHYT_MOH = "http://fhir.ehealth.gov.vn/core/sid/insurance_number"
BHYT_HL7VN = "http://fhir.hl7.org.vn/core/sid/bhyt"
BHYT_SYSTEMS = (BHYT_MOH, BHYT_HL7VN)

InsuranceForm = Literal["card", "social-insurance", "citizen-id"]

_CARD = re.compile(r"([A-Z]{2})([1-5])([0-9]{2})([0-9]{10})")
_SOCIAL_INSURANCE = re.compile(r"[0-9]{10}")
_CITIZEN_ID = re.compile(r"[0-9]{12}")
_WRITING = re.compile(r"[\s.\-]+")  # what people type between the groups of a number


def _clean(value: str) -> str:
    return _WRITING.sub("", value).upper()


def citizen_id(value: str) -> str | None:
    """The 12 digits of a CCCD as written (spaces, dots and dashes dropped), or None if it is not one."""
    cleaned = _clean(value)
    return cleaned if _CITIZEN_ID.fullmatch(cleaned) else None


@dataclass(frozen=True)
class InsuranceNumber:
    """One BHYT number, in the form it was written and what of it can be compared."""

    text: str  # normalised: upper case, no spaces or dashes
    form: InsuranceForm
    #: The 10-digit social-insurance number: the number itself, or a card's last 10 digits.
    social_insurance: str | None = None
    #: The CCCD, when the insurance number is one.
    citizen_id: str | None = None
    #: A card's beneficiary group (`DN`, `HS`, …), benefit level (1–5) and province code, for display only.
    group: str | None = None
    benefit_level: int | None = None
    province: str | None = None


def insurance_number(value: str) -> InsuranceNumber | None:
    """Read a BHYT number in any of its three forms; None when it is none of them (not guessed at)."""
    cleaned = _clean(value)
    card = _CARD.fullmatch(cleaned)
    if card:
        group, level, province, social = card.groups()
        return InsuranceNumber(cleaned, "card", social_insurance=social, group=group, benefit_level=int(level),
                               province=province)
    if _SOCIAL_INSURANCE.fullmatch(cleaned):
        return InsuranceNumber(cleaned, "social-insurance", social_insurance=cleaned)
    if _CITIZEN_ID.fullmatch(cleaned):
        return InsuranceNumber(cleaned, "citizen-id", citizen_id=cleaned)
    return None


@dataclass(frozen=True)
class NationalNumbers:
    """The comparable national numbers of one Patient."""

    citizen_ids: frozenset[str] = frozenset()
    social_insurance: frozenset[str] = frozenset()
    cards: frozenset[str] = frozenset()  # whole card codes, to find a record holding the same card

    def __bool__(self) -> bool:
        return bool(self.citizen_ids or self.social_insurance)

    def search_tokens(self) -> list[str]:
        """`system|value` tokens that find a stored Patient holding any of these numbers in any of its forms.

        A stored card whose group, level or province differ from every card sent is not among them (a
        token search is exact): such a record is found by name and birth date and confirmed by its number.
        """
        tokens = [f"{s}|{v}" for v in sorted(self.citizen_ids) for s in (*CCCD_SYSTEMS, *BHYT_SYSTEMS)]
        tokens += [f"{s}|{v}" for v in sorted(self.social_insurance | self.cards) for s in BHYT_SYSTEMS]
        return tokens


def national_numbers(patient: dict[str, Any]) -> NationalNumbers:
    """The CCCDs and social-insurance numbers among a Patient's identifiers (other systems are ignored)."""
    citizen: set[str] = set()
    social: set[str] = set()
    cards: set[str] = set()
    for system, value in _identifiers(patient.get("identifier")):
        if system in CCCD_SYSTEMS:
            found = citizen_id(value)
            if found:
                citizen.add(found)
        elif system in BHYT_SYSTEMS:
            number = insurance_number(value)
            if number is None:
                continue
            if number.citizen_id:
                citizen.add(number.citizen_id)
            if number.social_insurance:
                social.add(number.social_insurance)
            if number.form == "card":
                cards.add(number.text)
    return NationalNumbers(frozenset(citizen), frozenset(social), frozenset(cards))


def _identifiers(value: Any) -> Iterable[tuple[str, str]]:
    if not isinstance(value, list):
        return
    for ident in value:
        if isinstance(ident, dict) and isinstance(ident.get("system"), str) and isinstance(ident.get("value"), str):
            if ident.get("use") == "old":
                continue  # an identifier the patient no longer holds says nothing either way
            yield ident["system"], ident["value"]
