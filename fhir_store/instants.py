"""FHIR instants: the server's clock, their text form, and parsing what clients send.

BSON dates keep milliseconds and may come back without a zone, so every moment
the store hands out goes through here: what a client reads is what was stored.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fhir_store.errors import InvalidRequest


def now() -> datetime:
    """Now, truncated to the millisecond BSON dates keep, so what we return is what we stored."""
    moment = datetime.now(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def utc(moment: datetime) -> datetime:
    """A moment in UTC; a naive one (as the driver may return) is taken to be UTC already."""
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def format_instant(moment: datetime) -> str:
    moment = utc(moment)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_instant(name: str, raw: str) -> datetime:
    """A client's instant (`_since`, `ifModifiedSince`); one without a zone is taken as UTC."""
    try:
        return utc(datetime.fromisoformat(raw.replace("Z", "+00:00")))
    except (ValueError, OverflowError):  # OverflowError: a moment before year 1 in UTC
        raise InvalidRequest(f"{name} must be a FHIR instant like 2025-01-31T08:00:00Z; got '{raw}'") from None
