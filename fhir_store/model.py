"""Plain values the store hands back: a stored version, a write's result, a history page."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from bson import ObjectId
from bson.errors import InvalidId

from fhir_store.errors import InvalidRequest, Issue

Operation = Literal["create", "update", "delete"]


@dataclass(frozen=True)
class Version:
    """One version of one resource, as kept. `resource` is None for a deletion."""

    resource_type: str
    id: str
    version_id: int
    last_updated: datetime
    operation: Operation
    resource: dict[str, Any] | None
    order: ObjectId  # tie-breaker for versions written in the same millisecond

    @property
    def deleted(self) -> bool:
        return self.operation == "delete"

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.resource_type, self.id, self.version_id)


@dataclass(frozen=True)
class WriteResult:
    """What a write did. `created` is true when a new resource came into being (201)."""

    version: Version
    created: bool
    changed: bool = True  # false when an update or delete found nothing to change
    #: Warnings the write checks raised but did not refuse the write for (terminology in warn mode).
    warnings: tuple[Issue, ...] = ()


@dataclass(frozen=True)
class HistoryCursor:
    """Keyset position in newest-first history: stable while new versions arrive.

    `horizon` is the write horizon of the read the first page began (type and system
    history), so every page of one read answers the same `meta.lastUpdated`.
    """

    last_updated: datetime
    order: ObjectId
    horizon: datetime | None = None

    def encode(self) -> str:
        text = f"{_millis(self.last_updated)}.{self.order}"
        return f"{text}.{_millis(self.horizon)}" if self.horizon is not None else text

    @classmethod
    def decode(cls, text: str) -> HistoryCursor:
        millis, _, rest = text.partition(".")
        oid, _, horizon = rest.partition(".")
        try:
            return cls(_moment(millis), ObjectId(oid), _moment(horizon) if horizon else None)
        except (ValueError, TypeError, OverflowError, OSError, InvalidId):  # OSError: a time out of range
            raise InvalidRequest("_cursor is not one this server made; follow the Bundle's links") from None


def _millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _moment(millis: str) -> datetime:
    return datetime.fromtimestamp(int(millis) / 1000, UTC)


@dataclass(frozen=True)
class HistoryPage:
    versions: list[Version]
    next: HistoryCursor | None
    #: Type and system history: every version older than this is in this read (or its other pages), none
    #: younger is; a poller resumes with `_since` = this. None for an instance's history (all of it, at once).
    horizon: datetime | None = None
