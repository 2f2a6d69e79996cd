"""Store errors, each carrying the FHIR OperationOutcome issues that explain it.

Each error class carries the status FHIR gives that outcome (`status`): the REST
API answers with it, and batch/transaction responses put it in
`entry.response.status`, so the mapping lives in one place. Keeping the issue
list on the exception means the answer a client sees is written where the
problem is understood.
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
    status = 400

    def __init__(self, message: str, issues: list[Issue] | None = None) -> None:
        super().__init__(message)
        self.issues = issues or [Issue(self.issue_code, message)]

    def __reduce__(self) -> tuple[Any, ...]:
        # Whole, with its issues, across a process boundary (validation of a large resource runs in a worker).
        return _restore, (type(self), self.args, self.__dict__)


def _restore(cls: type[StoreError], args: tuple[Any, ...], state: dict[str, Any]) -> StoreError:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class InvalidResource(StoreError):
    """The resource is not valid FHIR R4 (structure, types, cardinality, required codes)."""

    issue_code = "invalid"


class InvalidRequest(StoreError):
    """The request itself is malformed: wrong ids, bad patch, bad search criteria."""

    issue_code = "invalid"


class UnknownResourceType(StoreError):
    issue_code = "not-supported"
    status = 404


class ResourceNotFound(StoreError):
    issue_code = "not-found"
    status = 404


class ResourceExists(StoreError):
    """A create with a client-chosen id (a transaction's `urn:uuid:` entry, an import) found the id taken."""

    issue_code = "duplicate"
    status = 409


class ResourceGone(StoreError):
    """The resource existed and was deleted; its history remains readable."""

    issue_code = "deleted"
    status = 410

    def __init__(self, message: str, version_id: int) -> None:
        super().__init__(message)
        self.version_id = version_id


class Forbidden(StoreError):
    """The caller may not do this (raised by an interceptor of the pipeline: authorisation)."""

    issue_code = "forbidden"
    status = 403


class MethodNotAllowed(StoreError):
    """The interaction exists, but not for this resource (AuditEvents are never changed)."""

    issue_code = "not-supported"
    status = 405


class Unauthorized(StoreError):
    """No credentials, or credentials that do not (or no longer) identify anyone: sign in again."""

    issue_code = "login"
    status = 401


class VersionConflict(StoreError):
    """If-Match named a version that is no longer current: the client must re-read."""

    issue_code = "conflict"
    status = 412


class MultipleMatches(StoreError):
    """A conditional interaction's criteria matched more than one resource."""

    issue_code = "multiple-matches"
    status = 412


class TooManyRequests(StoreError):
    """A write kept losing a race with concurrent writers; the client may retry."""

    issue_code = "transient"
    status = 429


class InvalidSearch(StoreError):
    """A search parameter, modifier or value the server cannot understand (always 400)."""

    issue_code = "invalid"


class SearchTooCostly(StoreError):
    """A chained or `_has` stage matched more resources than a search may carry between stages."""

    issue_code = "too-costly"
    status = 400


class PayloadTooLarge(StoreError):
    """A Bundle with more entries than the configured limit."""

    issue_code = "too-costly"
    status = 413


class EntryFailed(StoreError):
    """An entry of a transaction failed, so none of the transaction was kept."""

    def __init__(self, index: int, what: str, cause: StoreError) -> None:
        message = f"Bundle.entry[{index}] ({what}) failed, so the transaction was rolled back: {cause}"
        issues = [Issue(i.code, f"Bundle.entry[{index}] ({what}): {i.diagnostics}", i.severity,
                        (f"Bundle.entry[{index}]", *i.expression)) for i in cause.issues]
        super().__init__(message, issues)
        self.index = index
        self.status = cause.status
