"""Numbers and instants read from request parameters: one parser for each, used everywhere.

`str.isdigit()` is true for "²", which `int()` refuses; only ASCII digits are numbers here.
"""

from __future__ import annotations

import re
from datetime import datetime

from fhir_store.errors import InvalidRequest
from fhir_store.instants import parse_instant

_DIGITS = re.compile(r"[0-9]{1,18}")


def whole_number(name: str, raw: str) -> int:
    if not _DIGITS.fullmatch(raw):
        raise InvalidRequest(f"{name} must be a whole number; got '{raw}'")
    return int(raw)


def page_size(raw: str | None, default: int, maximum: int) -> int:
    """`_count`: the default when absent, never more than the maximum."""
    return default if raw is None else min(whole_number("_count", raw), maximum)


def since(raw: str | None) -> datetime | None:
    if raw is None:
        return None
    try:
        return parse_instant("_since", raw)
    except OverflowError:  # 0001-01-01T00:00:00+14:00 is before the first moment a datetime holds in UTC
        raise InvalidRequest(f"_since is out of range; got '{raw}'") from None


def last(params: list[tuple[str, str]], name: str) -> str | None:
    """The last value of a parameter sent (possibly several times), or None."""
    found = [v for k, v in params if k == name]
    return found[-1] if found else None
