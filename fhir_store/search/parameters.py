"""The value text of a search parameter turned into values: no MongoDB in here.

FHIR escapes `,`, `|` and `$` with a backslash, so values are split on the
unescaped separators only and unescaped afterwards. Dates and numbers carry an
optional comparison prefix and an implicit precision, which becomes a range:
`2024-03` is all of March, `100` is [99.5, 100.5). Digits are ASCII only:
`Decimal()` and `int()` would read "٣" or "３" as 3 (and `Decimal` takes "1_000"
and surrounding spaces too), so what a value means never depends on that.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from fhir_store.errors import InvalidSearch
from fhir_store.search.dates import MAX, MIN, parse_range

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
_SPLIT_COMMA = re.compile(r"(?<!\\),")
#: Separates a token's system and code, a quantity's number, system and code.
SPLIT_PIPE = re.compile(r"(?<!\\)\|")
#: Separates the components of a composite value.
SPLIT_DOLLAR = re.compile(r"(?<!\\)\$")
#: A search number: FHIR's decimal, with an exponent allowed (`1e3`), ASCII digits only.
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def unescape(value: str) -> str:
    return value.replace("\\,", ",").replace("\\|", "|").replace("\\$", "$").replace("\\\\", "\\")


def split_values(raw: str) -> list[str]:
    """The comma-separated (ORed) values of one occurrence of a parameter, still escaped."""
    return [v for v in _SPLIT_COMMA.split(raw)]


def split_prefix(raw: str) -> tuple[str, str]:
    """`ge2024` → (`ge`, `2024`); no prefix means `eq`."""
    if len(raw) > 2 and raw[:2] in PREFIXES and raw[2] in "0123456789-+.":
        return raw[:2], raw[2:]
    return "eq", raw


def date_range(param_code: str, raw: str) -> tuple[str, datetime, datetime]:
    """A prefixed search date and the UTC range [lo, hi) its precision implies."""
    prefix, text = split_prefix(raw)
    try:
        lo, hi = parse_range(text)
    except (ValueError, OverflowError):
        raise InvalidSearch(f"'{raw}' is not a valid date for '{param_code}' "
                            "(use e.g. 2024, 2024-03, 2024-03-05 or 2024-03-05T08:30:00+07:00 with digits 0-9, "
                            "and an optional prefix eq, ne, gt, lt, ge, le, sa, eb, ap)") from None
    return prefix, lo, hi


def approx(lo: datetime, hi: datetime) -> tuple[datetime, datetime]:
    """The range `ap` means: widened by a tenth of its distance from now, at least a day."""
    now = datetime.now(UTC)
    gap = max(abs((now - lo).total_seconds()), abs((now - hi).total_seconds())) * 0.1
    delta = timedelta(seconds=max(gap, 86400))
    return (lo - delta if lo - MIN > delta else MIN), (hi + delta if MAX - hi > delta else MAX)


def decimal(param_code: str, text: str) -> tuple[float, float, float]:
    """A search number and the range its precision implies: 100 is [99.5, 100.5)."""
    if not _NUMBER.fullmatch(text):
        raise InvalidSearch(f"'{text}' is not a number for '{param_code}' (digits 0-9, e.g. 5.4, -2 or 1e3)")
    number = Decimal(text)
    try:
        half = Decimal(5).scaleb(number.as_tuple().exponent - 1)  # type: ignore[operator]
        value, lo, hi = float(number), float(number - half), float(number + half)
    except ArithmeticError:  # an exponent past what decimal arithmetic holds (1e999999999999999999)
        value = lo = hi = math.inf
    if not all(math.isfinite(x) for x in (value, lo, hi)):
        raise InvalidSearch(f"'{text}' is outside the range of numbers '{param_code}' can be searched with")
    # Past a double's 16 digits the range may round to nothing: keep the value itself inside it.
    return value, min(lo, value), hi if hi > value else math.nextafter(value, math.inf)
