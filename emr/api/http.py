"""HTTP's side of FHIR: version headers, conditional requests, `Prefer`, and the answers to writes.

The FHIR meaning lives in `fhir_store` (what a version is, when a read is not
modified); this module reads and writes the headers that carry it.
"""

from __future__ import annotations

import json
from datetime import timedelta
from email.utils import format_datetime, parsedate_to_datetime
from urllib.parse import parse_qsl

from fastapi import Response

from emr.api.context import Call
from emr.api.responses import ApiError, fhir_response
from fhir_store import Issue, Version, WriteResult, etag, not_modified, operation_outcome, parse_if_match

#: Response header carrying the OperationOutcome of a write kept with warnings (HAPI uses the same name).
VALIDATION_HEADER = "X-FHIR-Request-Validation"
#: Fields a `POST _search` form may hold (a search takes far fewer; this bounds the parsing).
_MAX_FORM_FIELDS = 1000


def prefer(call: Call) -> dict[str, str]:
    """The `Prefer` header's preferences: `return=minimal` → {"return": "minimal"}, `respond-async` → {…: ""}."""
    found: dict[str, str] = {}
    for item in call.request.headers.get("prefer", "").replace(";", ",").split(","):
        key, _, value = item.strip().partition("=")
        if key:
            found.setdefault(key.strip(), value.strip().strip('"'))
    return found


def strict(call: Call) -> bool:
    """`Prefer: handling=strict`: unknown parameters are refused rather than ignored."""
    return prefer(call).get("handling", "lenient") == "strict"


def if_match(call: Call) -> int | None:
    return parse_if_match("If-Match", call.request.headers.get("if-match"))


def version_headers(version: Version) -> dict[str, str]:
    return {"ETag": etag(version.version_id), "Last-Modified": format_datetime(version.last_updated, usegmt=True)}


def is_not_modified(call: Call, version: Version) -> bool:
    """`If-None-Match`, else `If-Modified-Since` (an HTTP date: whole seconds, so the whole second counts)."""
    headers = call.request.headers
    since = None
    if headers.get("if-modified-since"):
        try:
            since = parsedate_to_datetime(headers["if-modified-since"]) + timedelta(microseconds=999_999)
        except (TypeError, ValueError):
            since = None
    return not_modified(version, headers.get("if-none-match"), since)


def describe(result: WriteResult, verb: str) -> str:
    v = result.version
    if not result.changed:
        return f"{v.resource_type}/{v.id} is unchanged at version {v.version_id}"
    return f"{verb} {v.resource_type}/{v.id}, now at version {v.version_id}"


def write_response(call: Call, result: WriteResult, message: str) -> Response:
    """201/200 with Location or Content-Location, and the body `Prefer: return=` asks for."""
    version = result.version
    headers = version_headers(version)
    location = f"{call.base}/{version.resource_type}/{version.id}/_history/{version.version_id}"
    status = 201 if result.created else 200
    if result.created or call.it.kind == "create":
        headers["Location"] = location
    else:
        headers["Content-Location"] = location
    wanted = prefer(call).get("return", "representation")
    if result.warnings:
        # Kept despite problems (terminology in warn mode): said in a header whatever the body is, as HAPI does.
        headers[VALIDATION_HEADER] = json.dumps(operation_outcome(list(result.warnings)), ensure_ascii=True)
    if wanted == "minimal":
        return fhir_response(None, status, headers)
    if wanted == "OperationOutcome":
        issues = [Issue("informational", message, severity="information"), *result.warnings]
        return fhir_response(operation_outcome(issues), status, headers, pretty=call.pretty)
    return fhir_response(version.resource, status, headers, pretty=call.pretty)


def delete_response(call: Call, result: WriteResult | None, what: str) -> Response:
    headers = version_headers(result.version) if result else {}
    if prefer(call).get("return") == "minimal":
        return fhir_response(None, 204, headers)
    if result is None:
        message = f"{what}: nothing to delete"
    elif not result.changed:
        message = f"{what} was already deleted (version {result.version.version_id})"
    else:
        message = f"Deleted {result.version.resource_type}/{result.version.id}; " \
                  f"the deletion is version {result.version.version_id}"
    outcome = operation_outcome([Issue("informational", message, severity="information")])
    return fhir_response(outcome, 200, headers, pretty=call.pretty)


async def form_params(call: Call) -> list[tuple[str, str]]:
    """`POST _search`: the query string's parameters, then the form body's."""
    content_type = call.request.headers.get("content-type", "").split(";")[0].strip()
    if content_type != "application/x-www-form-urlencoded":
        raise ApiError(415, "POST _search takes an application/x-www-form-urlencoded body", "not-supported")
    limit = call.settings.max_body_bytes
    declared = call.request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"The search form is {declared} bytes; the limit is {limit}", "too-costly")
    body = bytearray()
    async for chunk in call.request.stream():  # counted as it comes: never more than the limit in memory
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"The search form is larger than the limit of {limit} bytes", "too-costly")
    try:
        form = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False,
                         max_num_fields=_MAX_FORM_FIELDS)
    except UnicodeDecodeError:
        raise ApiError(400, "The search form is not UTF-8") from None
    except ValueError:  # more fields than max_num_fields
        raise ApiError(400, f"The search form has more than {_MAX_FORM_FIELDS} fields (the limit)",
                       "too-costly") from None
    return call.query + form

