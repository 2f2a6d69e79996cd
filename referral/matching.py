"""Which of our patients is the patient a district hospital refers to us?

The rules of issue #12, strongest first (docs/referrals.md gives them with the scores):

1. The same CCCD, under either guide's system (or as a 12-digit insurance number) → `certain`.
2. The same social-insurance number, read from any BHYT form → `certain`.
3. A different CCCD → `certainly-not`, however alike the rest: two people can share a name and a
   birth date, a citizen id is never shared. (Listed only when the rest looked alike, so the clerk
   sees why a look-alike was not taken.)
4. Name, birth date, sex and address alone → `probable` or `possible`, for a records clerk to
   confirm: never a link by themselves.

A number match whose sex, birth year or name plainly disagree is only `probable`: a mistyped number
must not put one person's referral into another's chart. Identifiers of other systems (a
facility's own record number) are never compared.

Candidates are found through the store's indexed search, never by reading all patients: by the
national numbers first, then by folded family name with the birth date (and with the given name and
birth year, for a mistyped day or a record that holds only the year).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

from fhir_store import FhirStore, TerminologyService, Version
from referral.addresses import SAME_COMMUNE, SAME_PROVINCE, Place, Places, compare
from referral.identifiers import NationalNumbers, national_numbers
from referral.names import OTHER_MARKS, SAME, UNMARKED, Name, best_name_similarity, names_of
from referral.values import items

MatchGrade = Literal["certain", "probable", "possible", "certainly-not"]
GRADES: tuple[MatchGrade, ...] = ("certain", "probable", "possible", "certainly-not")

#: Scores: a number match, a number match that the demographics contradict, a different CCCD.
CCCD_SCORE = 1.0
INSURANCE_SCORE = 0.98
CONTRADICTED_SCORE = 0.8
DIFFERENT_CCCD_SCORE = 0.0
#: Demographic candidates: their weighted agreement times this (so at most 0.9, below any number match) …
DEMOGRAPHIC_SCALE = 0.9
#: … and a `possible` one at most this, so every `probable` ranks above every `possible`.
POSSIBLE_CEILING = 0.7
#: Weights of the demographic agreement, and the credit an absent item gets.
WEIGHTS = {"name": 0.5, "birth": 0.3, "sex": 0.1, "address": 0.1}
UNKNOWN_CREDIT = {"birth": 0.3, "sex": 0.5, "address": 0.3}
#: Below these, a demographic look-alike is no candidate at all.
MIN_NAME = 0.5
MIN_AGREEMENT = 0.55
#: `probable` needs at least this name agreement (reordered words without marks: 0.85 × 0.95).
PROBABLE_NAME = 0.8

MAX_COUNT = 100
_PER_SEARCH = 100
_DATE = re.compile(r"([0-9]{4})(?:-([0-9]{2})(?:-([0-9]{2}))?)?")


@dataclass(frozen=True)
class Candidate:
    """One of our patients that may be the patient sent, with how sure we are and why."""

    version: Version
    score: float
    grade: MatchGrade
    reasons: tuple[str, ...]

    @property
    def id(self) -> str:
        return self.version.id

    @property
    def patient(self) -> dict[str, Any]:
        return self.version.resource or {}

    @property
    def is_match(self) -> bool:
        """Whether this candidate is one at all (`certainly-not` ones are listed to be told apart)."""
        return self.grade != "certainly-not"


@dataclass(frozen=True)
class _Facts:
    """What of one Patient takes part in matching."""

    numbers: NationalNumbers
    names: list[Name]
    birth: str | None
    sex: str | None
    places: list[Place]


def _is_date(value: Any) -> bool:
    """A FHIR date (year, year-month or full date) that exists: anything else is left out, not searched."""
    found = _DATE.fullmatch(value) if isinstance(value, str) else None
    if found is None:
        return False
    year, month, day = found.groups()
    try:
        date(int(year), int(month or 1), int(day or 1))
    except ValueError:
        return False
    return True


def birth_similarity(a: str | None, b: str | None) -> float | None:
    """1 the same date; 0.7 one less precise but agreeing; 0.6 day and month swapped; 0.3 same year; 0 not."""
    if not a or not b:
        return None
    if a == b:
        return 1.0
    pa, pb = _DATE.fullmatch(a), _DATE.fullmatch(b)
    if pa is None or pb is None or pa[1] != pb[1]:
        return 0.0
    if a.startswith(b) or b.startswith(a):
        return 0.7
    if pa[3] and pb[3] and (pa[2], pa[3]) == (pb[3], pb[2]):
        return 0.6
    return 0.3


def _sex_similarity(a: str | None, b: str | None) -> float | None:
    known = ("male", "female")
    if a not in known or b not in known:
        return None
    return 1.0 if a == b else 0.0


def _credit(item: str, value: float | None) -> float:
    return WEIGHTS[item] * (UNKNOWN_CREDIT[item] if value is None else value)


def _name_reason(score: float) -> str:
    if score >= SAME:
        return "name: the same"
    if score >= UNMARKED:
        return "name: the same, written without tone marks on one side"
    if score >= PROBABLE_NAME:
        return "name: the same words in another order"
    if score > OTHER_MARKS:
        return "name: the same family and given name, middle names differ"
    return "name: the same letters with different tone marks (it may be another name)"


class PatientMatcher:
    """Finds and grades our Patients against one sent by another facility.

    `terminology` (the server's `TerminologyService`) lets addresses of before and after 1 July 2025
    be compared through the administrative-unit lists; without it, or without the lists loaded,
    addresses are compared by name within one form (see `referral/addresses.py`).
    """

    def __init__(self, store: FhirStore, *, terminology: TerminologyService | None = None) -> None:
        self._store = store
        self._terminology = terminology

    async def match(self, patient: dict[str, Any], *, count: int = 10) -> list[Candidate]:
        """The best `count` candidates, strongest first. None that `is_match` means a new patient: the caller
        creates it with the sender's identifiers (the matcher writes nothing)."""
        count = max(0, min(count, MAX_COUNT))
        places = Places(self._terminology)
        sent = await self._facts(patient, places)
        found: dict[str, Version] = {}
        for query in self._queries(sent):
            result = await self._store.search("Patient", [*query, ("_count", str(_PER_SEARCH))])
            for version in result.matches:
                found.setdefault(version.id, version)
        graded = [c for v in found.values() if (c := await self._grade(sent, v, places)) is not None]
        graded.sort(key=lambda c: (GRADES.index(c.grade), -c.score, c.id))
        return graded[:count]

    @staticmethod
    def _queries(sent: _Facts) -> list[list[tuple[str, str]]]:
        queries: list[list[tuple[str, str]]] = []
        tokens = sent.numbers.search_tokens()
        if tokens:
            queries.append([("identifier", ",".join(tokens))])
        for family, given in dict.fromkeys((n.family, n.given) for n in sent.names[:3]):
            if sent.birth:
                queries.append([("name", family), ("birthdate", sent.birth)])
                if len(sent.birth) > 4:  # a mistyped day, or a record holding only the year
                    queries.append([("name", family), ("name", given), ("birthdate", sent.birth[:4])])
            else:
                queries.append([("name", family), ("name", given)])
        return queries

    @staticmethod
    async def _facts(patient: dict[str, Any], places: Places) -> _Facts:
        birth = patient.get("birthDate")
        sex = patient.get("gender")
        found: list[Place] = []
        for address in items(patient.get("address")):
            if isinstance(address, dict):
                place = await places.place(address)
                if place is not None:
                    found.append(place)
        return _Facts(national_numbers(patient), names_of(patient), birth if _is_date(birth) else None,
                      sex if isinstance(sex, str) else None, found)

    async def _grade(self, sent: _Facts, version: Version, places: Places) -> Candidate | None:
        ours = await self._facts(version.resource or {}, places)
        name = best_name_similarity(sent.names, ours.names)
        birth = birth_similarity(sent.birth, ours.birth)
        sex = _sex_similarity(sent.sex, ours.sex)
        address = max((s for a in sent.places for b in ours.places if (s := compare(a, b)) is not None),
                      default=None)
        agreement = WEIGHTS["name"] * (name or 0.0) + _credit("birth", birth) + _credit("sex", sex) \
            + _credit("address", address)
        reasons = _demographic_reasons(name, birth, sex, address)
        contradicted = [what for what, value in (("sex", sex), ("birth year", birth), ("name", name)) if value == 0.0]

        same_cccd = sent.numbers.citizen_ids & ours.numbers.citizen_ids
        other_cccd = bool(sent.numbers.citizen_ids and ours.numbers.citizen_ids and not same_cccd)
        same_insurance = sent.numbers.social_insurance & ours.numbers.social_insurance
        other_insurance = bool(sent.numbers.social_insurance and ours.numbers.social_insurance
                               and not same_insurance)
        looks_alike = name is not None and name >= MIN_NAME and birth != 0.0
        if other_cccd:
            if not looks_alike:
                return None
            return Candidate(version, DIFFERENT_CCCD_SCORE, "certainly-not",
                             ("a different CCCD (citizen id): another person", *reasons))
        if same_cccd or same_insurance:
            which = "the same CCCD (citizen id)" if same_cccd else "the same social-insurance number (BHYT)"
            if contradicted:
                return Candidate(version, CONTRADICTED_SCORE, "probable",
                                 (f"{which}, but the {' and '.join(contradicted)} differ: check the card",
                                  *reasons))
            return Candidate(version, CCCD_SCORE if same_cccd else INSURANCE_SCORE, "certain", (which, *reasons))
        if not looks_alike or agreement < MIN_AGREEMENT:
            return None
        score = DEMOGRAPHIC_SCALE * agreement
        probable = name is not None and name >= PROBABLE_NAME and birth == 1.0 and sex != 0.0 and address != 0.0
        if other_insurance:
            reasons = ("a different social-insurance number (BHYT): probably another person", *reasons)
            return Candidate(version, round(min(score, POSSIBLE_CEILING) / 2, 3), "possible", reasons)
        if probable:
            return Candidate(version, round(score, 3), "probable", reasons)
        return Candidate(version, round(min(score, POSSIBLE_CEILING), 3), "possible", reasons)


def _demographic_reasons(name: float | None, birth: float | None, sex: float | None,
                         address: float | None) -> tuple[str, ...]:
    reasons = [_name_reason(name)] if name else []
    if birth is not None:
        reasons.append({1.0: "birth date: the same", 0.7: "birth date: agrees, one side less precise",
                        0.6: "birth date: day and month swapped", 0.3: "birth date: same year only"}.get(
            birth, "birth date: differs"))
    if sex is not None:
        reasons.append("sex: the same" if sex else "sex: differs")
    if address is not None:
        reasons.append({SAME_COMMUNE: "address: the same commune", SAME_PROVINCE: "address: the same province"}.get(
            address, "address: another province"))
    return tuple(reasons)
