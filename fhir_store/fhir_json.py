"""FHIR JSON in and out, keeping every decimal as it was written.

FHIR gives a decimal's precision meaning (`1.50` is not `1.5`), and a float
cannot hold it; nor can a BSON integer hold `12345678901234567890`. Parsing
is orjson's, so it stays fast and strict: only when the text holds a number a
float would not reproduce (found by a cheap scan; a false alarm costs only
time) is it parsed again with the standard library, which hands over each
number's text. Such a number becomes an `ExactDecimal`: a float, so search
extraction, validation and comparisons treat it as the number it is, that
also carries its text, which `dumps` writes back verbatim.

MongoDB stores the float in the resource and the texts beside it
(`exact_numbers` / `restore_exact_numbers`, used by `documents.py`), so the
stored resource stays plain FHIR for anyone who queries the database.

Nesting is bounded (`MAX_DEPTH`): no FHIR resource, Bundle included, comes near
it, and the standard-library parser and everything that walks JSON afterwards
recurse, so hostile depth must stop here, as a clear error, never as a
RecursionError.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

#: A number a float may not reproduce: an exponent, a fraction ending in 0, 16 or more digits,
#: a tiny fraction (0.0000…) or minus zero. Also matches inside strings now and then: harmless.
_SUSPECT = re.compile(rb"[:\[,]\s*(?:-0(?![0-9.eE])|-?(?:[0-9.]*[eE]|[0-9]*\.[0-9]*0(?![0-9])|(?=[0-9.]{16})|0\.0000))")
_INT64 = range(-(2**63), 2**63)

Path = list[str | int]

#: Deepest nesting of arrays and objects accepted (a Bundle of Observations with components and extensions
#: is about 12 deep; orjson's own limit is 1024, beyond what recursive code may walk).
MAX_DEPTH = 64


class TooDeep(orjson.JSONDecodeError):
    """JSON nested deeper than `MAX_DEPTH` (a `JSONDecodeError`, so callers handle it as invalid JSON)."""

    def __init__(self) -> None:
        super().__init__(f"nested more than {MAX_DEPTH} levels deep (the limit is {MAX_DEPTH})", "", 0)

    def __str__(self) -> str:  # no "line 1 column 1": the position says nothing here
        return str(self.msg)


class ExactDecimal(float):
    """A JSON number whose written text a float or a 64-bit integer would not give back."""

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> ExactDecimal:
        number = super().__new__(cls, text)
        number.text = text
        return number

    def __reduce__(self) -> tuple[type[ExactDecimal], tuple[str]]:
        return ExactDecimal, (self.text,)

    def __repr__(self) -> str:
        return self.text

    __str__ = __repr__


def _float(text: str) -> float:
    number = float(text)
    if number in (float("inf"), float("-inf")):
        raise ValueError(f"{text} is too large for a decimal")
    return number if orjson.dumps(number) == text.encode() else ExactDecimal(text)


def _integer(text: str) -> int | float:
    number = int(text)
    return number if number in _INT64 and str(number) == text else ExactDecimal(text)


def _refuse_constant(text: str) -> Any:
    raise ValueError(f"{text} is not a JSON number")


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse JSON (raises `orjson.JSONDecodeError`, a `ValueError`, when it is not valid; `TooDeep`, one of
    those, when it nests more than `MAX_DEPTH` levels)."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if "depth" in str(exc):  # orjson's own limit (1024): far past ours
            raise TooDeep() from None
        raise
    if depth_exceeds(value, MAX_DEPTH):
        raise TooDeep()
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if _SUSPECT.search(raw) is None:
        return value
    # Only now the (recursive) standard-library parser: the text is known to nest at most MAX_DEPTH deep.
    try:
        return json.loads(raw, parse_float=_float, parse_int=_integer, parse_constant=_refuse_constant)
    except ValueError as exc:
        raise orjson.JSONDecodeError(str(exc), raw.decode("utf-8", "replace"), 0) from None


def depth_exceeds(value: Any, limit: int) -> bool:
    """Does `value` nest arrays and objects more than `limit` deep? Walked with a stack, never recursion."""
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return False


def _default(value: Any) -> Any:
    if isinstance(value, ExactDecimal):
        return orjson.Fragment(value.text)
    raise TypeError(f"{type(value).__name__} is not JSON")


def dumps(value: Any, *, pretty: bool = False, newline: bool = False, sort_keys: bool = False) -> bytes:
    """Serialise JSON, writing each `ExactDecimal` as its text."""
    option = ((orjson.OPT_INDENT_2 if pretty else 0) | (orjson.OPT_APPEND_NEWLINE if newline else 0)
              | (orjson.OPT_SORT_KEYS if sort_keys else 0))
    return orjson.dumps(value, default=_default, option=option)


def exact_numbers(value: Any) -> list[list[Any]]:
    """Where the exact decimals are: each as its path (keys and indexes) followed by its text."""
    found: list[list[Any]] = []
    _collect(value, [], found)
    return found


def _collect(value: Any, path: Path, found: list[list[Any]]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict | list | ExactDecimal):
                _collect(item, [*path, key], found)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, dict | list | ExactDecimal):
                _collect(item, [*path, index], found)
    elif isinstance(value, ExactDecimal):
        found.append([*path, value.text])


def restore_exact_numbers(value: Any, numbers: list[list[Any]]) -> None:
    """Put the texts found by `exact_numbers` back in place (the value was stored as a float)."""
    for *path, text in numbers:
        holder = value
        for step in path[:-1]:
            holder = holder[step]
        holder[path[-1]] = ExactDecimal(text)
