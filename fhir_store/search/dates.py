"""FHIR date, dateTime and instant values as half-open UTC ranges [lo, hi).

A value's precision is a range: "1980" is all of 1980, "2024-03-05" the whole
day. A value without a time zone is read in the server's local zone (Vietnam,
UTC+7, no daylight saving), as the spec asks, for stored values and search
values alike, so a date typed at a ward terminal means that local day.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

LOCAL_TZ = timezone(timedelta(hours=7), "ICT")
MIN = datetime(1, 1, 1, tzinfo=UTC)
MAX = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)

#: ASCII digits only (`re.ASCII`): `\d` alone would take "２０２０" or "٢٠٢٠", which `int()` then reads as 2020.
_PATTERN = re.compile(
    r"(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?P<f>\.\d+)?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?",
    re.ASCII,
)


def parse_range(text: str) -> tuple[datetime, datetime]:
    """The UTC range a FHIR date/dateTime/instant covers. ValueError if it is not one."""
    m = _PATTERN.fullmatch(text.strip())
    if not m:
        raise ValueError(f"'{text}' is not a FHIR date or dateTime")
    tz = LOCAL_TZ
    if m["tz"]:
        tz = UTC if m["tz"] == "Z" else _offset(m["tz"])
    year = int(m["y"])
    if m["m"] is None:
        lo = datetime(year, 1, 1, tzinfo=tz)
        hi = datetime(year + 1, 1, 1, tzinfo=tz) if year < 9999 else MAX
    elif m["d"] is None:
        month = int(m["m"])
        lo = datetime(year, month, 1, tzinfo=tz)
        hi = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=tz) if (year, month) < (9999, 12) else MAX
    else:
        lo = datetime(year, int(m["m"]), int(m["d"]), tzinfo=tz)
        if m["H"] is None:
            hi = _later(lo, timedelta(days=1))
        else:
            lo = lo.replace(hour=int(m["H"]), minute=int(m["M"]))
            if m["S"] is None:
                hi = _later(lo, timedelta(minutes=1))
            else:
                lo = lo.replace(second=int(m["S"]))
                if m["f"]:
                    digits = m["f"][1:7]
                    lo = lo.replace(microsecond=int(digits.ljust(6, "0")))
                    hi = _later(lo, timedelta(microseconds=10 ** (6 - min(len(digits), 6))))
                else:
                    hi = _later(lo, timedelta(seconds=1))
    return _utc(lo), _utc(hi)


def _later(moment: datetime, delta: timedelta) -> datetime:
    """`moment + delta`, or the end of year 9999 (MAX) when that is past what a datetime holds."""
    try:
        return moment + delta
    except OverflowError:
        return MAX


def _utc(moment: datetime) -> datetime:
    """In UTC; the first days of year 1 and the last of year 9999 stay inside the range a datetime holds."""
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        return MIN if moment.year == 1 else MAX


def _offset(text: str) -> timezone:
    sign = 1 if text[0] == "+" else -1
    hours, minutes = int(text[1:3]), int(text[4:6])
    return timezone(sign * timedelta(hours=hours, minutes=minutes))
