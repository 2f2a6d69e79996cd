"""Store errors, each carrying the FHIR OperationOutcome issues that explain it.

The store knows nothing of HTTP: the API layer maps each error class to a status
code in one table (`emr.api.outcomes`). Keeping the issue list on the exception
means the answer a client sees is written where the problem is understood.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Issue:
    """One OperationOutcome.issue: severity, a code from the FHIR issue-type list, and text."""

    code: str
    diagnostics: str
    severity: str = "error"
    expression: tuple[str, ...] = field(default_factory=tuple)

    def to_fhir(self) -> dict[str, Any]:
        out: dict[str, Any] = {"severity": self.severity, "code": self.code, "diagnostics": self.diagnostics}
        if self.expression:
            out["expression"] = list(self.expression)
        return out


def operation_outcome(issues: list[Issue]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [i.to_fhir() for i in issues]}


class StoreError(Exception):
    """Base of every error the store raises on purpose; anything else is a bug."""

    issue_code = "processing"

    def __init__(self, message: str, issues: list[Issue] | None = None) -> None:
        super().__init__(message)
        self.issues = issues or [Issue(self.issue_code, message)]


class InvalidResource(StoreError):
    """The resource is not valid FHIR R4 (structure, types, cardinality, required codes)."""

    issue_code = "invalid"


class InvalidRequest(StoreError):
    """The request itself is malformed: wrong ids, bad patch, bad search criteria."""

    issue_code = "invalid"


class UnknownResourceType(StoreError):
    issue_code = "not-supported"


class ResourceNotFound(StoreError):
    issue_code = "not-found"


class ResourceGone(StoreError):
    """The resource existed and was deleted; its history remains readable."""

    issue_code = "deleted"

    def __init__(self, message: str, version_id: int) -> None:
        super().__init__(message)
        self.version_id = version_id


class VersionConflict(StoreError):
    """If-Match named a version that is no longer current: the client must re-read."""

    issue_code = "conflict"


class MultipleMatches(StoreError):
    """A conditional interaction's criteria matched more than one resource."""

    issue_code = "multiple-matches"


class TooManyRequests(StoreError):
    """A write kept losing a race with concurrent writers; the client may retry."""

    issue_code = "transient"


class InvalidSearch(StoreError):
    """A search parameter, modifier or value the server cannot understand (always 400)."""

    issue_code = "invalid"


class SearchTooCostly(StoreError):
    """A chained or `_has` stage matched more resources than a search may carry between stages."""

    issue_code = "too-costly"
