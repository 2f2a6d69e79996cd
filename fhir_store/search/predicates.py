"""One value of a search parameter turned into a `Clause`, per parameter type.

Each builder matches the normalised index values `extract` wrote (folded
strings, `system|code` tokens, `Type/id` references, `{lo, hi}` ranges), so it
knows the shape of `ix` and nothing of requests, chains or the database. What a
builder needs beyond the value comes in as plain arguments (`local_base`), so
this module does not depend on the query builder.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from fhir_store.errors import InvalidSearch
from fhir_store.search.clauses import Clause, Filter
from fhir_store.search.extract import INDEXED_CHARS, exact_value, normalise_reference, token_values
from fhir_store.search.parameters import SPLIT_DOLLAR, SPLIT_PIPE, approx, date_range, decimal, split_prefix, unescape
from fhir_store.search.registry import MODIFIERS, SearchParam
from fhir_store.text import fold, nfc

#: Sorts after every string that starts with a prefix, so [p, p + _TOP) is "starts with p".
_TOP = "\U0010ffff"
#: The longest `:contains` text: the index keeps the first INDEXED_CHARS of each text, so a longer one could
#: never match, and the regex it becomes stays small.
MAX_CONTAINS_CHARS = INDEXED_CHARS
_NOTHING = Clause({"_id": {"$in": []}}, {"_id": {"$in": []}})

#: (param, modifier, raw value, field, this server's base URL) → the clause for that one value.
Builder = Callable[[SearchParam, str | None, str, str, str | None], Clause]


def predicate(param: SearchParam, modifier: str | None, raw: str, field: str, local_base: str | None) -> Clause:
    """The clause for one (still escaped) value of `param` on the index field `field`."""
    return _BUILDERS[param.type](param, modifier, raw, field, local_base)


def any_of(alternatives: list[Clause]) -> Clause:
    """OR of clauses; equalities on one field become one `$in`, which an index serves."""
    if len(alternatives) == 1:
        return alternatives[0]
    exact: Filter = {"$or": [a.exact for a in alternatives]}
    drives = [a.drive for a in alternatives]
    if all(d is not None and len(d) == 1 for d in drives):
        fields = {next(iter(d)) for d in drives if d}
        if len(fields) == 1:
            field = fields.pop()
            values: list[Any] = []
            for d in drives:
                cond = d[field] if d else None
                if isinstance(cond, dict) and set(cond) == {"$in"}:
                    values += cond["$in"]
                elif not isinstance(cond, dict):
                    values.append(cond)
                else:
                    return Clause(exact)
            return Clause(exact, {field: {"$in": values}})
    return Clause(exact)


def modifier_allowed(param: SearchParam, modifier: str) -> bool:
    allowed = MODIFIERS.get(param.type, ())
    if param.code == "_id":
        return False
    if param.type == "reference" and modifier not in allowed:
        return modifier in param.targets or (not param.targets and modifier[:1].isupper())
    return modifier in allowed


def point_date(field: str, raw: str) -> Filter:
    """Date prefixes on a single instant (`_lastUpdated`), same meaning as on ranges."""
    prefix, lo, hi = date_range("_lastUpdated", raw)
    if prefix == "ap":
        lo, hi = approx(lo, hi)
        return {field: {"$gte": lo, "$lt": hi}}
    conditions: dict[str, Filter] = {
        "eq": {field: {"$gte": lo, "$lt": hi}},
        "ne": {"$or": [{field: {"$lt": lo}}, {field: {"$gte": hi}}]},
        "gt": {field: {"$gte": hi}},
        "sa": {field: {"$gte": hi}},
        "ge": {field: {"$gte": lo}},
        "lt": {field: {"$lt": lo}},
        "eb": {field: {"$lt": lo}},
        "le": {field: {"$lt": hi}},
    }
    return conditions[prefix]


# ---- per-type value builders: each returns the Clause for one value --------------------------

def _prefix_range(text: str) -> Filter:
    return {"$gte": text, "$lt": text + _TOP}


def _starts_with(field: str, text: str) -> Clause:
    """Some element of the array `field` starts with `text`; the plain range drives the index."""
    return Clause({field: {"$elemMatch": _prefix_range(text)}}, {field: _prefix_range(text)})


def _string(param: SearchParam, modifier: str | None, raw: str, field: str, local_base: str | None) -> Clause:
    text = unescape(raw)
    folded = fold(text)
    # The index keeps each text's first INDEXED_CHARS: a longer value is matched on those (exactly, for :exact).
    indexed = folded[:INDEXED_CHARS]
    if modifier == "exact":
        return Clause({f"{field}:exact": exact_value(nfc(text))}, {field: indexed} if indexed else None)
    if not folded:
        return _NOTHING
    if modifier == "contains":
        if len(folded) > MAX_CONTAINS_CHARS:
            raise InvalidSearch(f"{param.code}:contains takes at most {MAX_CONTAINS_CHARS} characters (the limit); "
                                f"got {len(folded)}")
        return Clause({field: {"$regex": re.escape(folded)}})
    return _starts_with(field, indexed)


def _token(param: SearchParam, modifier: str | None, raw: str, field: str, local_base: str | None) -> Clause:
    if modifier == "text":
        return Clause(_starts_with(f"{field}:text", fold(unescape(raw))[:INDEXED_CHARS]).exact)
    if modifier == "of-type":
        parts = SPLIT_PIPE.split(raw)
        if len(parts) != 3 or not all(parts):
            raise InvalidSearch(f"{param.code}:of-type takes system|code|value, not '{raw}'")
        return Clause({f"{field}:of-type": "|".join(unescape(p) for p in parts)})
    parts = SPLIT_PIPE.split(raw)
    if len(parts) > 2:
        raise InvalidSearch(f"A token is [system]|[code]; '{raw}' has too many '|'")
    if len(parts) == 1:
        code = unescape(parts[0])
        digits = re.sub(r"\D", "", code)
        if param.code in ("phone", "telecom") and digits and digits != code:
            cond: Filter = {field: {"$in": [code, digits]}}
            return Clause(cond, cond)
        return Clause({field: code}, {field: code})
    system, code = unescape(parts[0]), unescape(parts[1])
    if not code:
        if not system:
            raise InvalidSearch(f"'{param.code}=|' names neither a system nor a code")
        return _starts_with(field, f"{system}|")
    value = token_values(system or None, code)[0]
    return Clause({field: value}, {field: value})


def _reference(param: SearchParam, modifier: str | None, raw: str, field: str, local_base: str | None) -> Clause:
    value = unescape(raw)
    if modifier == "identifier":
        parts = SPLIT_PIPE.split(raw)
        system, code = (unescape(parts[0]), unescape(parts[1])) if len(parts) == 2 else (None, value)
        return Clause({f"{field}:identifier": token_values(system or None, code)[0] if system else code})
    if local_base and value.startswith(local_base.rstrip("/") + "/"):
        value = value[len(local_base.rstrip("/")) + 1:]
    cond: Filter
    if value.startswith(("http://", "https://", "urn:")):
        cond = {field: value}
    else:
        value = normalise_reference(value)
        if "/" in value:
            if modifier and not value.startswith(f"{modifier}/"):
                raise InvalidSearch(f"'{param.code}:{modifier}={raw}' names another type")
            cond = {field: value}
        else:
            types = [modifier] if modifier else list(param.targets)
            cond = {field: {"$in": [f"{t}/{value}" for t in types]}} if types else {field: value}
    return Clause(cond, cond)


def _date(param: SearchParam, modifier: str | None, raw: str, field: str, local_base: str | None) -> Clause:
    """Stored values are ranges [lo, hi); each prefix compares ranges the spec's way."""
    prefix, lo, hi = date_range(param.code, raw)
    if prefix == "ap":
        lo, hi = approx(lo, hi)
    cond = {
        "eq": {"lo": {"$gte": lo}, "hi": {"$lte": hi}},
        "ap": {"lo": {"$lt": hi}, "hi": {"$gt": lo}},
        "gt": {"hi": {"$gt": hi}},
        "lt": {"lo": {"$lt": lo}},
        "ge": {"hi": {"$gt": lo}},
        "le": {"lo": {"$lt": hi}},
        "sa": {"lo": {"$gte": hi}},
        "eb": {"hi": {"$lte": lo}},
        "ne": {"lo": {"$gte": lo}, "hi": {"$lte": hi}},
    }[prefix]
    if prefix == "ne":
        return Clause({field: {"$not": {"$elemMatch": cond}}})
    # a necessary condition on `lo` alone lets the (lo, hi) index drive
    lo_bound = {"eq": {"$gte": lo, "$lt": hi}, "ap": {"$lt": hi}, "lt": {"$lt": lo}, "le": {"$lt": hi},
                "sa": {"$gte": hi}}.get(prefix)
    return Clause({field: {"$elemMatch": cond}}, {f"{field}.lo": lo_bound} if lo_bound else None)


def _number_cond(prefix: str, value: float, lo: float, hi: float, lo_key: str, hi_key: str) -> Filter:
    """Conditions on a stored value range [lo_key, hi_key] (equal for a single value)."""
    if prefix == "ap":
        delta = abs(value) * 0.1
        return {lo_key: {"$lte": value + delta}, hi_key: {"$gte": value - delta}}
    conditions: dict[str, Filter] = {
        "eq": {lo_key: {"$gte": lo}, hi_key: {"$lt": hi}},
        "gt": {hi_key: {"$gt": value}},
        "sa": {lo_key: {"$gt": value}},
        "ge": {hi_key: {"$gte": value}},
        "lt": {lo_key: {"$lt": value}},
        "eb": {hi_key: {"$lt": value}},
        "le": {lo_key: {"$lte": value}},
    }
    return conditions[prefix]


def _number(param: SearchParam, modifier: str | None, raw: str, field: str, local_base: str | None) -> Clause:
    prefix, text = split_prefix(raw)
    value, lo, hi = decimal(param.code, text)
    if prefix == "ne":
        return Clause({field: {"$not": {"$elemMatch": {"$gte": lo, "$lt": hi}}}})
    ops: dict[str, Filter] = {
        "eq": {"$gte": lo, "$lt": hi}, "gt": {"$gt": value}, "sa": {"$gt": value}, "ge": {"$gte": value},
        "lt": {"$lt": value}, "eb": {"$lt": value}, "le": {"$lte": value},
        "ap": {"$gte": value - abs(value) * 0.1, "$lte": value + abs(value) * 0.1},
    }
    return Clause({field: {"$elemMatch": ops[prefix]}})


def _quantity(param: SearchParam, modifier: str | None, raw: str, field: str, local_base: str | None) -> Clause:
    parts = SPLIT_PIPE.split(raw)
    if len(parts) not in (1, 3):
        raise InvalidSearch(f"A quantity is [prefix]number[|system|code]; '{raw}' is not one")
    prefix, text = split_prefix(parts[0])
    value, lo, hi = decimal(param.code, text)
    cond: Filter = {}
    if len(parts) == 3:
        system, code = unescape(parts[1]), unescape(parts[2])
        if system:
            cond["s"] = system
        if code:
            cond["$or"] = [{"c": code}, {"u": code}]
    if prefix == "ne":
        return Clause({field: {"$not": {"$elemMatch": {**cond, **_number_cond("eq", value, lo, hi, "lo", "hi")}}}})
    return Clause({field: {"$elemMatch": {**cond, **_number_cond(prefix, value, lo, hi, "lo", "hi")}}})


def _uri(param: SearchParam, modifier: str | None, raw: str, field: str, local_base: str | None) -> Clause:
    value = unescape(raw)
    if modifier == "below":
        return _starts_with(field, value)
    if modifier == "above":
        parts = value.split("/")
        cond: Filter = {field: {"$in": ["/".join(parts[:i]) for i in range(3, len(parts) + 1)]}}
        return Clause(cond, cond)
    return Clause({field: value}, {field: value})


def _composite(param: SearchParam, modifier: str | None, raw: str, field: str, local_base: str | None) -> Clause:
    pieces = SPLIT_DOLLAR.split(raw)
    if len(pieces) != len(param.components):
        raise InvalidSearch(f"'{param.code}' takes {len(param.components)} values joined by '$'; got '{raw}'")
    cond: Filter = {}
    for i, (component, piece) in enumerate(zip(param.components, pieces, strict=True)):
        fake = SearchParam(code=f"{param.code}${i}", type=component.param_type, url="", expression="",
                           leaves=component.leaves)
        cond.update(predicate(fake, None, piece, str(i), local_base).exact)
    return Clause({field: {"$elemMatch": cond}})


_BUILDERS: dict[str, Builder] = {
    "string": _string,
    "token": _token,
    "reference": _reference,
    "date": _date,
    "number": _number,
    "quantity": _quantity,
    "uri": _uri,
    "composite": _composite,
}
