"""FHIR version negotiation, the spec's way: the `fhirVersion` parameter of the FHIR media type.

The store keeps R4B (4.3). An R4 (4.0) client says so with
`Accept: application/fhir+json; fhirVersion=4.0` (or in `_format`, or in the
`Content-Type` of what it sends), and is answered in R4: a CapabilityStatement
saying 4.0.1, the media type labelled `fhirVersion=4.0`, and resources as they
are, since R4 and R4B forms are the same for almost every type. What differs
(`fhir_store.r4_problem`: a few types, and resources using what only R4B has)
is refused with a 4xx naming it, never sent in a form an R4 parser would
misread: 406 for an answer, 415 for a body.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from fastapi import Request, Response

from emr.api.responses import ApiError, FhirResponse
from fhir_store import FHIR_VERSION, r4_differences, r4_problem

R4, R4B = "4.0", "4.3"
DEFAULT = R4B
#: The versions this server speaks, as `fhirVersion` names them (major.minor), with their full numbers.
RELEASES = {R4: "4.0.1", R4B: FHIR_VERSION}


def _declared(header: str) -> str | None:
    """The `fhirVersion` of the first media range that names one (`4.0.1` counts as `4.0`)."""
    for media_range in header.split(","):
        for param in media_range.split(";")[1:]:
            key, _, value = param.partition("=")
            if key.strip().lower() == "fhirversion":
                return value.strip().strip('"')
    return None


def _release(declared: str, status: int, where: str) -> str:
    release = ".".join(declared.split(".")[:2])
    if release not in RELEASES:
        known = ", ".join(f"{r} ({full})" for r, full in RELEASES.items())
        raise ApiError(status, f"{where} asks for FHIR version '{declared}'; this server speaks {known}",
                       "not-supported")
    return release


def negotiate(request: Request) -> str:
    """The FHIR version to answer in: asked for by `_format` or `Accept`, else that of the body, else R4B."""
    accept = request.query_params.get("_format") or request.headers.get("accept", "")
    sent = body_release(request, None)
    if (declared := _declared(accept)) is None:
        return sent or DEFAULT
    release = _release(declared, 406, "Accept")
    if sent not in (None, release):
        raise ApiError(400, f"The body is FHIR {sent} but FHIR {release} is asked for: one interaction, one version",
                       "invalid")
    return release


def body_release(request: Request, otherwise: str | None) -> str | None:
    """The FHIR version of the request body: its `Content-Type`'s `fhirVersion`, else `otherwise`."""
    declared = _declared(request.headers.get("content-type", ""))
    return otherwise if declared is None else _release(declared, 415, "Content-Type")


def _refuse(problems: list[str], status: int) -> None:
    raise ApiError(status, f"Cannot be exchanged as FHIR R4 (4.0.1), whose form differs from the R4B (4.3.0) this "
                   f"server keeps: {'; '.join(problems)}. Ask with fhirVersion=4.3.", "not-supported")


def check_types(release: str, types: Iterable[str], status: int) -> None:
    """Refuse, for an R4 client, the resource types whose R4 form is not the R4B one we keep."""
    if release == R4 and (problems := [f"{t}: {r4_differences()[t]}" for t in types if t in r4_differences()]):
        _refuse(problems, status)


def check_resources(release: str, resources: Iterable[dict[str, Any]], status: int) -> None:
    """Refuse, for an R4 client, resources it could not read as they are."""
    if release == R4 and (problems := sorted({p for r in resources if (p := r4_problem(r)) is not None})):
        _refuse(problems, status)


def resources_in(value: Any) -> Iterator[dict[str, Any]]:
    """The resources in a resource: itself, contained ones, Bundle entries, Parameters' resources."""
    if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
        return
    yield value
    for contained in value.get("contained") or []:
        yield from resources_in(contained)
    for entry in value.get("entry") or [] if value["resourceType"] == "Bundle" else []:
        if isinstance(entry, dict):
            yield from resources_in(entry.get("resource"))
            yield from resources_in((entry.get("response") or {}).get("outcome"))
    if value["resourceType"] == "Parameters":
        yield from _parameter_resources(value.get("parameter") or [])


def _parameter_resources(parameters: list[Any]) -> Iterator[dict[str, Any]]:
    for parameter in parameters:
        if isinstance(parameter, dict):
            yield from resources_in(parameter.get("resource"))
            yield from _parameter_resources(parameter.get("part") or [])


def answer_in(release: str, response: Response) -> Response:
    """Label an answer with the version it is in, after checking an R4 client can read every resource of it."""
    if release == DEFAULT or not isinstance(response, FhirResponse):
        return response
    check_resources(release, resources_in(response.resource), 406)
    response.headers["content-type"] = f"application/fhir+json; fhirVersion={release}; charset=utf-8"
    return response


def versions_plain() -> dict[str, Any]:
    return {"versions": list(RELEASES), "default": DEFAULT}


def versions_parameters() -> dict[str, Any]:
    """The answer of `$versions`: every version spoken, and the default."""
    return {"resourceType": "Parameters", "parameter": [
        *({"name": "version", "valueCode": release} for release in RELEASES),
        {"name": "default", "valueCode": DEFAULT}]}
