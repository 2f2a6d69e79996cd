"""FHIR JSON responses and the API's own errors (store errors carry their status themselves)."""

from __future__ import annotations

from typing import Any

from fastapi import Response

from fhir_store import Issue, dump_json, operation_outcome

FHIR_JSON = "application/fhir+json; charset=utf-8"

class ApiError(Exception):
    """A problem found by the HTTP layer itself (format, headers, size)."""

    def __init__(self, status: int, message: str, code: str = "invalid") -> None:
        super().__init__(message)
        self.status = status
        self.issues = [Issue(code, message)]


class FhirResponse(Response):
    """A FHIR JSON answer that keeps the resource it carries, so version negotiation can check its types."""

    def __init__(self, resource: dict[str, Any] | None, status: int, headers: dict[str, str] | None,
                 *, pretty: bool) -> None:
        self.resource = resource
        content = b"" if resource is None else dump_json(resource, pretty=pretty)
        super().__init__(content, status_code=status, headers=headers,
                         media_type=FHIR_JSON if resource is not None else None)


def fhir_response(body: dict[str, Any] | None, status: int = 200, headers: dict[str, str] | None = None,
                  *, pretty: bool = False) -> FhirResponse:
    return FhirResponse(body, status, headers, pretty=pretty)


def outcome_response(status: int, issues: list[Issue], *, pretty: bool = False,
                     headers: dict[str, str] | None = None) -> Response:
    return fhir_response(operation_outcome(issues), status, headers, pretty=pretty)
