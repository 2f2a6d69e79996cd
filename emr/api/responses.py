"""FHIR JSON responses and the API's own errors (store errors carry their status themselves)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Response

from fhir_store import Issue, operation_outcome

FHIR_JSON = "application/fhir+json; charset=utf-8"

class ApiError(Exception):
    """A problem found by the HTTP layer itself (format, headers, size)."""

    def __init__(self, status: int, message: str, code: str = "invalid") -> None:
        super().__init__(message)
        self.status = status
        self.issues = [Issue(code, message)]


def fhir_response(body: dict[str, Any] | None, status: int = 200, headers: dict[str, str] | None = None,
                  *, pretty: bool = False) -> Response:
    content = b"" if body is None else orjson.dumps(body, option=orjson.OPT_INDENT_2 if pretty else 0)
    return Response(content, status_code=status, headers=headers, media_type=FHIR_JSON if body is not None else None)


def outcome_response(status: int, issues: list[Issue], *, pretty: bool = False,
                     headers: dict[str, str] | None = None) -> Response:
    return fhir_response(operation_outcome(issues), status, headers, pretty=pretty)
