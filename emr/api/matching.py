"""`POST /fhir/Patient/$match`: which of our patients is this one (https://hl7.org/fhir/R4/patient-operation-match.html).

The input is a Parameters resource with `resource` (the Patient sent), `onlyCertainMatches` and
`count` (a bare Patient body is taken as `resource`). The answer is a searchset Bundle, strongest
first, each entry with `search.score` and the match-grade extension. The matching itself is the
referral room's (`referral.PatientMatcher`); this module only reads the request and writes the Bundle.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from emr.api.context import Call
from emr.api.responses import ApiError, fhir_response
from emr.api.routing import operation
from fhir_store import Issue, SearchResult, page_links, searchset_bundle, whole_number
from referral import PatientMatcher

router = APIRouter(prefix="/fhir")

MATCH_GRADE = "http://hl7.org/fhir/StructureDefinition/match-grade"
DEFAULT_COUNT = 10


def _inputs(body: Any) -> tuple[dict[str, Any], bool, int]:
    """The Patient, onlyCertainMatches and count of a $match request."""
    if isinstance(body, dict) and body.get("resourceType") == "Patient":
        return body, False, DEFAULT_COUNT
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise ApiError(400, "Patient/$match takes a Parameters resource (or a Patient)")
    patient: Any = None
    only_certain, count = False, DEFAULT_COUNT
    if not isinstance(body.get("parameter", []), list):
        raise ApiError(400, "Parameters.parameter must be a list")
    for param in body.get("parameter", []):
        name = param.get("name") if isinstance(param, dict) else None
        if name == "resource":
            patient = param.get("resource")
        elif name == "onlyCertainMatches":
            if not isinstance(param.get("valueBoolean"), bool):
                raise ApiError(400, "Parameter 'onlyCertainMatches' must be a valueBoolean")
            only_certain = param["valueBoolean"]
        elif name == "count":
            value = param.get("valueInteger")
            if isinstance(value, bool) or not isinstance(value, int):
                raise ApiError(400, "Parameter 'count' must be a valueInteger")
            count = whole_number("Parameter 'count'", str(value))
    if not isinstance(patient, dict) or patient.get("resourceType") != "Patient":
        raise ApiError(400, "Patient/$match needs the parameter 'resource' holding a Patient")
    return patient, only_certain, count


@operation(router, "POST", "/Patient/$match", "match", resource_type="Patient")
async def patient_match(call: Call) -> Response:
    """Our patients that may be the one sent, graded certain, probable, possible or certainly-not."""
    patient, only_certain, count = _inputs(await call.json())
    matcher = PatientMatcher(call.store, terminology=call.services.terminology)
    candidates = await matcher.match(patient, count=count)
    issues: list[Issue] = []
    if only_certain:
        certain = [c for c in candidates if c.grade == "certain"]
        candidates = certain if len(certain) <= 1 else []
        if len(certain) > 1:
            issues.append(Issue("multiple-matches", f"{len(certain)} of our patients match certainly (the same "
                                "national number): they are duplicates for a records clerk to merge",
                                severity="warning"))
    result = SearchResult(matches=[c.version for c in candidates], included=[], total=len(candidates),
                          next_cursor=None, previous_cursor=None, issues=issues)
    bundle = searchset_bundle(call.base, result, page_links(f"{call.base}/Patient/$match", [], None))
    for entry, candidate in zip(bundle.get("entry", []), candidates, strict=False):
        entry["search"] = {"extension": [{"url": MATCH_GRADE, "valueCode": candidate.grade}],
                           "mode": "match", "score": candidate.score}
    return fhir_response(bundle, pretty=call.pretty)
