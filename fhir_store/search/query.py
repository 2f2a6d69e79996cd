"""Search parameters of a request turned into one MongoDB filter.

Each occurrence of a parameter is ANDed; the comma-separated values inside one
occurrence are ORed. Chained parameters (`subject:Patient.name=…`) and reverse
chains (`_has:Observation:patient:code=…`) run in stages: the inner search
yields ids (at most `stage_cap`, else a too-costly error rather than a slow
server), which the outer filter matches with `$in` on an indexed field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection

from fhir_store.errors import InvalidSearch, Issue, SearchTooCostly
from fhir_store.search.dates import parse_range
from fhir_store.search.extract import normalise_reference, token_values
from fhir_store.search.registry import MODIFIERS, Registry, SearchParam
from fhir_store.text import fold, nfc

Filter = dict[str, Any]

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
_SPLIT_COMMA = re.compile(r"(?<!\\),")
_SPLIT_PIPE = re.compile(r"(?<!\\)\|")
_SPLIT_DOLLAR = re.compile(r"(?<!\\)\$")
_NOTHING: Filter = {"_id": {"$in": []}}


def unescape(value: str) -> str:
    return value.replace("\\,", ",").replace("\\|", "|").replace("\\$", "$").replace("\\\\", "\\")


def split_values(raw: str) -> list[str]:
    return [v for v in _SPLIT_COMMA.split(raw)]


@dataclass
class QueryBuilder:
    registry: Registry
    resources: AsyncCollection[dict[str, Any]]
    local_base: str | None = None
    stage_cap: int = 10_000

    async def build(self, types: list[str], criteria: list[tuple[str, str]], *, strict: bool,
                    issues: list[Issue]) -> Filter:
        """The filter for current, non-deleted resources of `types` matching every criterion."""
        known = [(name, raw) for name, raw in criteria if self._known(types, name, strict, issues)]
        per_type: list[Filter] = []
        for rtype in types:
            clauses: list[Filter] = [{"type": rtype}, {"deleted": False}]
            for name, raw in known:
                clauses.append(await self.criterion(rtype, name, raw, issues=issues))
            per_type.append({"$and": clauses})
        return per_type[0] if len(per_type) == 1 else {"$or": per_type}

    def _known(self, types: list[str], name: str, strict: bool, issues: list[Issue]) -> bool:
        """Is `name` a parameter of every type searched? Unknown everywhere: ignored, unless strict."""
        if name.startswith("_has:"):
            return True
        code = name.split(".", 1)[0].split(":", 1)[0]
        have = [t for t in types if self.registry.param(t, code) is not None]
        if len(have) == len(types):
            return True
        where = types[0] if len(types) == 1 else "every type searched"
        message = f"Unknown search parameter '{code}' for {where}"
        if strict or have:
            raise InvalidSearch(message)
        issues.append(Issue("not-supported", f"{message}; it was ignored", severity="warning"))
        return False

    async def criterion(self, rtype: str, name: str, raw: str, *, issues: list[Issue]) -> Filter:
        if name.startswith("_has:"):
            return await self._has(rtype, name, raw, issues)
        head, dot, rest = name.partition(".")
        code, colon, modifier = head.partition(":")
        param = self.registry.param(rtype, code)
        if param is None:
            raise InvalidSearch(f"Unknown search parameter '{code}' for {rtype}")
        if dot:
            return await self._chain(param, modifier if colon else None, rest, raw, issues)
        return self.condition(param, modifier if colon else None, raw)

    # ---- one parameter, several OR-ed values ------------------------------------------------

    def condition(self, param: SearchParam, modifier: str | None, raw: str) -> Filter:
        if modifier == "missing":
            if raw not in ("true", "false"):
                raise InvalidSearch(f"{param.code}:missing takes true or false, not '{raw}'")
            field = _FIELDS.get(param.code, f"ix.{param.code}")
            return {field: {"$exists": raw == "false"}}
        if modifier is not None and not _modifier_allowed(param, modifier):
            raise InvalidSearch(f"The modifier ':{modifier}' is not supported on {param.type} parameter "
                                f"'{param.code}'")
        values = split_values(raw)
        if not values or any(v == "" for v in values):
            raise InvalidSearch(f"Search parameter '{param.code}' has an empty value")
        if param.type == "token" and modifier == "not":
            alternatives = [self.value(param, None, v, field=f"ix.{param.code}") for v in values]
            return {"$nor": alternatives}
        alternatives = [self.value(param, modifier, v, field=_FIELDS.get(param.code, f"ix.{param.code}"))
                        for v in values]
        return alternatives[0] if len(alternatives) == 1 else {"$or": alternatives}

    def value(self, param: SearchParam, modifier: str | None, raw: str, *, field: str) -> Filter:
        if param.code == "_id":
            return {"id": unescape(raw)}
        if param.code == "_lastUpdated":
            return _point_date(field, raw)
        builder = _BUILDERS[param.type]
        return builder(self, param, modifier, raw, field)

    # ---- chains and _has --------------------------------------------------------------------

    async def _chain(self, param: SearchParam, type_modifier: str | None, rest: str, raw: str,
                     issues: list[Issue]) -> Filter:
        if param.type != "reference":
            raise InvalidSearch(f"'{param.code}' is not a reference parameter, so it cannot be chained")
        targets = [type_modifier] if type_modifier else list(param.targets)
        next_code = rest.split(".", 1)[0].split(":", 1)[0]
        targets = [t for t in targets if self.registry.param(t, next_code) is not None or next_code.startswith("_")]
        if not targets:
            raise InvalidSearch(f"No type that '{param.code}' points to has a search parameter '{next_code}'")
        refs: list[str] = []
        for target in targets:
            inner = await self.criterion(target, rest, raw, issues=issues)
            ids = await self._ids({"$and": [{"type": target}, {"deleted": False}, inner]})
            refs += [f"{target}/{i}" for i in ids]
        return {f"ix.{param.code}": {"$in": refs}}

    async def _has(self, rtype: str, name: str, raw: str, issues: list[Issue]) -> Filter:
        parts = name.split(":", 3)
        if len(parts) < 4 or not parts[3]:
            raise InvalidSearch(f"'{name}' must look like _has:Type:reference-parameter:parameter")
        _, source, ref_code, rest = parts
        ref_param = self.registry.param(source, ref_code)
        if ref_param is None or ref_param.type != "reference":
            raise InvalidSearch(f"'{ref_code}' is not a reference search parameter of {source}")
        inner = await self.criterion(source, rest, raw, issues=issues)
        query = {"$and": [{"type": source}, {"deleted": False}, inner]}
        prefix = f"{rtype}/"
        ids: set[str] = set()
        async for doc in self.resources.find(query, {f"ix.{ref_code}": True}).limit(self.stage_cap + 1):
            ids.update(r[len(prefix):] for r in (doc.get("ix") or {}).get(ref_code, []) if r.startswith(prefix))
        if len(ids) > self.stage_cap:
            raise SearchTooCostly(f"'{name}' matches more than {self.stage_cap} resources; narrow it down")
        return {"id": {"$in": sorted(ids)}}

    async def _ids(self, query: Filter) -> list[str]:
        ids = [doc["id"] async for doc in self.resources.find(query, {"id": True}).limit(self.stage_cap + 1)]
        if len(ids) > self.stage_cap:
            raise SearchTooCostly(f"A chained search stage matches more than {self.stage_cap} resources; "
                                  "add criteria to narrow it down")
        return ids


_FIELDS = {"_id": "id", "_lastUpdated": "ts"}


def _modifier_allowed(param: SearchParam, modifier: str) -> bool:
    allowed = MODIFIERS.get(param.type, ())
    if param.code == "_id":
        return False
    if param.type == "reference" and modifier not in allowed:
        return modifier in param.targets or (not param.targets and modifier[:1].isupper())
    return modifier in allowed


# ---- per-type value builders --------------------------------------------------------------------

def _string(qb: QueryBuilder, param: SearchParam, modifier: str | None, raw: str, field: str) -> Filter:
    text = unescape(raw)
    if modifier == "exact":
        return {f"{field}:exact": nfc(text)}
    folded = fold(text)
    if not folded:
        return _NOTHING
    if modifier == "contains":
        return {field: {"$regex": re.escape(folded)}}
    return {field: {"$regex": "^" + re.escape(folded)}}


def _token(qb: QueryBuilder, param: SearchParam, modifier: str | None, raw: str, field: str) -> Filter:
    if modifier == "text":
        return {f"{field}:text": {"$regex": "^" + re.escape(fold(unescape(raw)))}}
    if modifier == "of-type":
        parts = _SPLIT_PIPE.split(raw)
        if len(parts) != 3 or not all(parts):
            raise InvalidSearch(f"{param.code}:of-type takes system|code|value, not '{raw}'")
        return {f"{field}:of-type": "|".join(unescape(p) for p in parts)}
    parts = _SPLIT_PIPE.split(raw)
    if len(parts) > 2:
        raise InvalidSearch(f"A token is [system]|[code]; '{raw}' has too many '|'")
    if len(parts) == 1:
        code = unescape(parts[0])
        digits = re.sub(r"\D", "", code)
        if param.code in ("phone", "telecom") and digits and digits != code:
            return {field: {"$in": [code, digits]}}
        return {field: code}
    system, code = unescape(parts[0]), unescape(parts[1])
    if not code:
        if not system:
            raise InvalidSearch(f"'{param.code}=|' names neither a system nor a code")
        return {field: {"$regex": "^" + re.escape(f"{system}|")}}
    return {field: token_values(system or None, code)[0]}


def _reference(qb: QueryBuilder, param: SearchParam, modifier: str | None, raw: str, field: str) -> Filter:
    value = unescape(raw)
    if modifier == "identifier":
        parts = _SPLIT_PIPE.split(raw)
        system, code = (unescape(parts[0]), unescape(parts[1])) if len(parts) == 2 else (None, value)
        return {f"{field}:identifier": token_values(system or None, code)[0] if system else code}
    if qb.local_base and value.startswith(qb.local_base.rstrip("/") + "/"):
        value = value[len(qb.local_base.rstrip("/")) + 1:]
    if value.startswith(("http://", "https://", "urn:")):
        return {field: value}
    value = normalise_reference(value)
    if "/" in value:
        if modifier and not value.startswith(f"{modifier}/"):
            raise InvalidSearch(f"'{param.code}:{modifier}={raw}' names another type")
        return {field: value}
    types = [modifier] if modifier else list(param.targets)
    if not types:
        return {field: value}
    return {field: {"$in": [f"{t}/{value}" for t in types]}}


def _split_prefix(raw: str) -> tuple[str, str]:
    if len(raw) > 2 and raw[:2] in PREFIXES and (raw[2].isdigit() or raw[2] in "-+."):
        return raw[:2], raw[2:]
    return "eq", raw


def _date_range(param_code: str, raw: str) -> tuple[str, datetime, datetime]:
    prefix, text = _split_prefix(raw)
    try:
        lo, hi = parse_range(text)
    except ValueError:
        raise InvalidSearch(f"'{raw}' is not a valid date for '{param_code}' "
                            "(use e.g. 2024, 2024-03, 2024-03-05 or 2024-03-05T08:30:00+07:00, "
                            "with an optional prefix eq, ne, gt, lt, ge, le, sa, eb, ap)") from None
    return prefix, lo, hi


def _approx(lo: datetime, hi: datetime) -> tuple[datetime, datetime]:
    now = datetime.now(UTC)
    gap = max(abs((now - lo).total_seconds()), abs((now - hi).total_seconds())) * 0.1
    delta = timedelta(seconds=max(gap, 86400))
    return lo - delta, hi + delta


def _date(qb: QueryBuilder, param: SearchParam, modifier: str | None, raw: str, field: str) -> Filter:
    prefix, lo, hi = _date_range(param.code, raw)
    if prefix == "ap":
        lo, hi = _approx(lo, hi)
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
        return {field: {"$not": {"$elemMatch": cond}}}
    return {field: {"$elemMatch": cond}}


def _point_date(field: str, raw: str) -> Filter:
    """Date prefixes on a single instant (`_lastUpdated`), same meaning as on ranges."""
    prefix, lo, hi = _date_range("_lastUpdated", raw)
    if prefix == "ap":
        lo, hi = _approx(lo, hi)
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


def _decimal(param_code: str, text: str) -> tuple[float, float, float]:
    """A search number and the range its precision implies: 100 is [99.5, 100.5)."""
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise InvalidSearch(f"'{text}' is not a number for '{param_code}'") from None
    if not number.is_finite():
        raise InvalidSearch(f"'{text}' is not a finite number for '{param_code}'")
    half = Decimal(5).scaleb(number.as_tuple().exponent - 1)  # type: ignore[operator]
    return float(number), float(number - half), float(number + half)


def _number_cond(prefix: str, value: float, lo: float, hi: float, lo_key: str, hi_key: str) -> Filter:
    if prefix == "ap":
        delta = abs(value) * 0.1
        return {lo_key: {"$lte": value + delta}, hi_key: {"$gte": value - delta}}
    return {
        "eq": {lo_key: {"$gte": lo}, hi_key: {"$lt": hi}},
        "gt": {hi_key: {"$gt": value}},
        "sa": {lo_key: {"$gt": value}},
        "ge": {hi_key: {"$gte": value}},
        "lt": {lo_key: {"$lt": value}},
        "eb": {hi_key: {"$lt": value}},
        "le": {lo_key: {"$lte": value}},
    }[prefix]


def _number(qb: QueryBuilder, param: SearchParam, modifier: str | None, raw: str, field: str) -> Filter:
    prefix, text = _split_prefix(raw)
    value, lo, hi = _decimal(param.code, text)
    if prefix == "ne":
        return {field: {"$not": {"$gte": lo, "$lt": hi}}}
    if prefix == "ap":
        delta = abs(value) * 0.1
        return {field: {"$gte": value - delta, "$lte": value + delta}}
    ops = {"eq": {"$gte": lo, "$lt": hi}, "gt": {"$gt": value}, "sa": {"$gt": value}, "ge": {"$gte": value},
           "lt": {"$lt": value}, "eb": {"$lt": value}, "le": {"$lte": value}}
    return {field: ops[prefix]}


def _quantity(qb: QueryBuilder, param: SearchParam, modifier: str | None, raw: str, field: str) -> Filter:
    parts = _SPLIT_PIPE.split(raw)
    if len(parts) not in (1, 3):
        raise InvalidSearch(f"A quantity is [prefix]number[|system|code]; '{raw}' is not one")
    prefix, text = _split_prefix(parts[0])
    value, lo, hi = _decimal(param.code, text)
    cond: Filter = {}
    if len(parts) == 3:
        system, code = unescape(parts[1]), unescape(parts[2])
        if system:
            cond["s"] = system
        if code:
            cond["$or"] = [{"c": code}, {"u": code}]
    if prefix == "ne":
        return {field: {"$not": {"$elemMatch": {**cond, **_number_cond("eq", value, lo, hi, "lo", "hi")}}}}
    return {field: {"$elemMatch": {**cond, **_number_cond(prefix, value, lo, hi, "lo", "hi")}}}


def _uri(qb: QueryBuilder, param: SearchParam, modifier: str | None, raw: str, field: str) -> Filter:
    value = unescape(raw)
    if modifier == "below":
        return {field: {"$regex": "^" + re.escape(value)}}
    if modifier == "above":
        parts = value.split("/")
        return {field: {"$in": ["/".join(parts[:i]) for i in range(3, len(parts) + 1)]}}
    return {field: value}


def _composite(qb: QueryBuilder, param: SearchParam, modifier: str | None, raw: str, field: str) -> Filter:
    pieces = _SPLIT_DOLLAR.split(raw)
    if len(pieces) != len(param.components):
        raise InvalidSearch(f"'{param.code}' takes {len(param.components)} values joined by '$'; got '{raw}'")
    cond: Filter = {}
    for i, (component, piece) in enumerate(zip(param.components, pieces, strict=True)):
        fake = SearchParam(code=f"{param.code}${i}", type=component.param_type, url="", expression="",
                           leaves=component.leaves)
        cond.update(_BUILDERS[component.param_type](qb, fake, None, piece, str(i)))
    return {field: {"$elemMatch": cond}}


_BUILDERS = {
    "string": _string,
    "token": _token,
    "reference": _reference,
    "date": _date,
    "number": _number,
    "quantity": _quantity,
    "uri": _uri,
    "composite": _composite,
}
