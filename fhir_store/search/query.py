"""Search parameters of a request turned into MongoDB filter clauses.

Each occurrence of a parameter becomes one `Clause` (they are ANDed); the
comma-separated values inside one occurrence are ORed. A clause has its exact
filter and, where one exists, a *driving* condition: a necessary condition on a
single indexed field (e.g. a string prefix as a plain range, where the exact
filter needs `$elemMatch`). The engine starts each query from the best driving
condition, so the database walks one index and checks the rest on few rows.

Chained parameters (`subject:Patient.name=…`) and reverse chains
(`_has:Observation:patient:code=…`) run in stages: the inner search yields ids
(at most `stage_cap`, else a too-costly error rather than a slow server), which
the outer clause matches with `$in` on an indexed field.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection

from fhir_store.errors import InvalidSearch, Issue, SearchTooCostly
from fhir_store.search.dates import parse_range
from fhir_store.search.extract import normalise_reference, token_values
from fhir_store.search.registry import MODIFIERS, Registry, SearchParam
from fhir_store.text import fold, nfc

Filter = dict[str, Any]
#: Sorts after every string that starts with a prefix, so [p, p + _TOP) is "starts with p".
_TOP = "\U0010ffff"


@dataclass(frozen=True)
class Clause:
    exact: Filter
    drive: Filter | None = None


@dataclass
class TypeQuery:
    """The clauses that select resources of one type (ANDed)."""

    resource_type: str
    clauses: list[Clause]

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
_SPLIT_COMMA = re.compile(r"(?<!\\),")
_SPLIT_PIPE = re.compile(r"(?<!\\)\|")
_SPLIT_DOLLAR = re.compile(r"(?<!\\)\$")
_NOTHING = Clause({"_id": {"$in": []}}, {"_id": {"$in": []}})


def unescape(value: str) -> str:
    return value.replace("\\,", ",").replace("\\|", "|").replace("\\$", "$").replace("\\\\", "\\")


def split_values(raw: str) -> list[str]:
    return [v for v in _SPLIT_COMMA.split(raw)]


class Terminology(Protocol):
    """What token modifiers need from the terminology service (`fhir_store.terminology`)."""

    async def codes_in(self, canonical: str) -> list[tuple[str, str]]: ...

    async def codes_below(self, system: str | None, code: str, *, above: bool = False) -> list[tuple[str, str]]: ...

    async def codes_matching(self, text: str) -> list[tuple[str, str]]: ...


#: Token modifiers answered with codes from the terminology service.
TERMINOLOGY_MODIFIERS = ("in", "not-in", "below", "above", "text")


@dataclass
class QueryBuilder:
    registry: Registry
    resources: AsyncCollection[dict[str, Any]]
    local_base: str | None = None
    stage_cap: int = 10_000
    session: AsyncClientSession | None = None
    terminology: Terminology | None = None

    async def build(self, types: list[str], criteria: list[tuple[str, str]], *, strict: bool,
                    issues: list[Issue]) -> list[TypeQuery]:
        """One `TypeQuery` per type searched, each holding a clause per known criterion."""
        known = [(name, raw) for name, raw in criteria if self._known(types, name, strict, issues)]
        return [TypeQuery(rtype, [await self.criterion(rtype, name, raw, issues=issues) for name, raw in known])
                for rtype in types]

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

    async def criterion(self, rtype: str, name: str, raw: str, *, issues: list[Issue]) -> Clause:
        if name.startswith("_has:"):
            return await self._has(rtype, name, raw, issues)
        head, dot, rest = name.partition(".")
        code, colon, modifier = head.partition(":")
        param = self.registry.param(rtype, code)
        if param is None:
            raise InvalidSearch(f"Unknown search parameter '{code}' for {rtype}")
        if dot:
            return await self._chain(param, modifier if colon else None, rest, raw, issues)
        if param.type == "token" and modifier in TERMINOLOGY_MODIFIERS and self.terminology is not None:
            return await self._terminology(self.terminology, param, modifier, raw)
        return self.condition(param, modifier if colon else None, raw)

    async def _terminology(self, terminology: Terminology, param: SearchParam, modifier: str, raw: str) -> Clause:
        """`:in`/`:not-in` a value set, `:below`/`:above` a code, `:text` also matching the codes' titles."""
        field = f"ix.{param.code}"
        values = split_values(raw)
        if not values or any(v == "" for v in values):
            raise InvalidSearch(f"Search parameter '{param.code}' has an empty value")
        alternatives: list[Clause] = []
        for value in values:
            if modifier in ("in", "not-in"):
                codes = await terminology.codes_in(unescape(value))
            elif modifier == "text":
                try:
                    codes = await terminology.codes_matching(unescape(value))
                except SearchTooCostly:  # a word or two matching half the lists: the record's own text only
                    codes = []
            else:
                parts = _SPLIT_PIPE.split(value)
                if len(parts) > 2 or not parts[-1]:
                    raise InvalidSearch(f"{param.code}:{modifier} takes [system|]code, not '{value}'")
                system = unescape(parts[0]) if len(parts) == 2 and parts[0] else None
                codes = await terminology.codes_below(system, unescape(parts[-1]), above=modifier == "above")
            tokens = sorted({f"{system}|{code}" if system else code for system, code in codes})
            cond: Filter = {field: {"$in": tokens}}
            if modifier == "text":
                alternatives.append(any_of([_token(self, param, "text", value, field), Clause(cond, None)]))
            else:
                alternatives.append(Clause(cond, cond))
        clause = any_of(alternatives)
        if modifier == "not-in":
            return Clause({"$nor": [clause.exact]})
        return clause

    # ---- one parameter, several OR-ed values ------------------------------------------------

    def condition(self, param: SearchParam, modifier: str | None, raw: str) -> Clause:
        if modifier == "missing":
            if raw not in ("true", "false"):
                raise InvalidSearch(f"{param.code}:missing takes true or false, not '{raw}'")
            field = _FIELDS.get(param.code, f"ix.{param.code}")
            return Clause({field: {"$exists": raw == "false"}})
        if modifier is not None and not _modifier_allowed(param, modifier):
            raise InvalidSearch(f"The modifier ':{modifier}' is not supported on {param.type} parameter "
                                f"'{param.code}'")
        values = split_values(raw)
        if not values or any(v == "" for v in values):
            raise InvalidSearch(f"Search parameter '{param.code}' has an empty value")
        if param.type == "token" and modifier == "not":
            alternatives = [self.value(param, None, v, field=f"ix.{param.code}") for v in values]
            return Clause({"$nor": [a.exact for a in alternatives]})
        alternatives = [self.value(param, modifier, v, field=_FIELDS.get(param.code, f"ix.{param.code}"))
                        for v in values]
        return any_of(alternatives)

    def value(self, param: SearchParam, modifier: str | None, raw: str, *, field: str) -> Clause:
        if param.code == "_id":
            key = {"_id": f"{param.owner}/{unescape(raw)}"}
            return Clause(key, key)
        if param.code == "_lastUpdated":
            cond = _point_date(field, raw)
            return Clause(cond, cond if "$or" not in cond else None)
        builder = _BUILDERS[param.type]
        return builder(self, param, modifier, raw, field)

    # ---- chains and _has --------------------------------------------------------------------

    async def _chain(self, param: SearchParam, type_modifier: str | None, rest: str, raw: str,
                     issues: list[Issue]) -> Clause:
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
            refs += [doc["_id"] async for doc in self._stage(TypeQuery(target, [inner]), {"_id": True})]
        cond = {f"ix.{param.code}": {"$in": refs}}
        return Clause(cond, cond)

    async def _has(self, rtype: str, name: str, raw: str, issues: list[Issue]) -> Clause:
        parts = name.split(":", 3)
        if len(parts) < 4 or not parts[3]:
            raise InvalidSearch(f"'{name}' must look like _has:Type:reference-parameter:parameter")
        _, source, ref_code, rest = parts
        ref_param = self.registry.param(source, ref_code)
        if ref_param is None or ref_param.type != "reference":
            raise InvalidSearch(f"'{ref_code}' is not a reference search parameter of {source}")
        inner = await self.criterion(source, rest, raw, issues=issues)
        prefix = f"{rtype}/"
        keys: set[str] = set()
        async for doc in self._stage(TypeQuery(source, [inner]), {f"ix.{ref_code}": True}):
            keys.update(r for r in (doc.get("ix") or {}).get(ref_code, []) if r.startswith(prefix))
        cond = {"_id": {"$in": sorted(keys)}}
        return Clause(cond, cond)

    async def _stage(self, query: TypeQuery, projection: Filter) -> AsyncIterator[dict[str, Any]]:
        """Rows of an inner (chained or `_has`) search, refusing more than `stage_cap`."""
        pipeline = [*match_stages(query), {"$limit": self.stage_cap + 1}, {"$project": projection}]
        count = 0
        async for doc in await self.resources.aggregate(pipeline, session=self.session):
            count += 1
            if count > self.stage_cap:
                raise SearchTooCostly(f"A chained or _has stage matches more than {self.stage_cap} resources; "
                                      "add criteria to narrow it down")
            yield doc


_FIELDS = {"_id": "_id", "_lastUpdated": "ts"}


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


def match_stages(query: TypeQuery, extra: list[Filter] | None = None) -> list[Filter]:
    """`$match` stages for one type: first the best driving condition (one index), then the rest."""
    from fhir_store.indexes import DRIVING_FIELDS

    best: Filter | None = None
    best_rank = len(DRIVING_FIELDS)
    for clause in query.clauses:
        if clause.drive:
            field = next(iter(clause.drive))
            rank = DRIVING_FIELDS.index(field) if field in DRIVING_FIELDS else len(DRIVING_FIELDS)
            if rank < best_rank:
                best, best_rank = clause.drive, rank
    first: Filter = {"type": query.resource_type, **(best or {})}
    rest: list[Filter] = [{"deleted": False}, *(c.exact for c in query.clauses), *(extra or [])]
    return [{"$match": first}, {"$match": {"$and": rest}}]


def _modifier_allowed(param: SearchParam, modifier: str) -> bool:
    allowed = MODIFIERS.get(param.type, ())
    if param.code == "_id":
        return False
    if param.type == "reference" and modifier not in allowed:
        return modifier in param.targets or (not param.targets and modifier[:1].isupper())
    return modifier in allowed


# ---- per-type value builders: each returns the Clause for one value --------------------------

def _prefix_range(text: str) -> Filter:
    return {"$gte": text, "$lt": text + _TOP}


def _starts_with(field: str, text: str) -> Clause:
    """Some element of the array `field` starts with `text`; the plain range drives the index."""
    return Clause({field: {"$elemMatch": _prefix_range(text)}}, {field: _prefix_range(text)})


def _string(qb: QueryBuilder, param: SearchParam, modifier: str | None, raw: str, field: str) -> Clause:
    text = unescape(raw)
    folded = fold(text)
    if modifier == "exact":
        return Clause({f"{field}:exact": nfc(text)}, {field: folded} if folded else None)
    if not folded:
        return _NOTHING
    if modifier == "contains":
        return Clause({field: {"$regex": re.escape(folded)}})
    return _starts_with(field, folded)


def _token(qb: QueryBuilder, param: SearchParam, modifier: str | None, raw: str, field: str) -> Clause:
    if modifier == "text":
        return Clause(_starts_with(f"{field}:text", fold(unescape(raw))).exact)
    if modifier == "of-type":
        parts = _SPLIT_PIPE.split(raw)
        if len(parts) != 3 or not all(parts):
            raise InvalidSearch(f"{param.code}:of-type takes system|code|value, not '{raw}'")
        return Clause({f"{field}:of-type": "|".join(unescape(p) for p in parts)})
    parts = _SPLIT_PIPE.split(raw)
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


def _reference(qb: QueryBuilder, param: SearchParam, modifier: str | None, raw: str, field: str) -> Clause:
    value = unescape(raw)
    if modifier == "identifier":
        parts = _SPLIT_PIPE.split(raw)
        system, code = (unescape(parts[0]), unescape(parts[1])) if len(parts) == 2 else (None, value)
        return Clause({f"{field}:identifier": token_values(system or None, code)[0] if system else code})
    if qb.local_base and value.startswith(qb.local_base.rstrip("/") + "/"):
        value = value[len(qb.local_base.rstrip("/")) + 1:]
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


def _date(qb: QueryBuilder, param: SearchParam, modifier: str | None, raw: str, field: str) -> Clause:
    """Stored values are ranges [lo, hi); each prefix compares ranges the spec's way."""
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
        return Clause({field: {"$not": {"$elemMatch": cond}}})
    # a necessary condition on `lo` alone lets the (lo, hi) index drive
    lo_bound = {"eq": {"$gte": lo, "$lt": hi}, "ap": {"$lt": hi}, "lt": {"$lt": lo}, "le": {"$lt": hi},
                "sa": {"$gte": hi}}.get(prefix)
    return Clause({field: {"$elemMatch": cond}}, {f"{field}.lo": lo_bound} if lo_bound else None)


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


def _number(qb: QueryBuilder, param: SearchParam, modifier: str | None, raw: str, field: str) -> Clause:
    prefix, text = _split_prefix(raw)
    value, lo, hi = _decimal(param.code, text)
    if prefix == "ne":
        return Clause({field: {"$not": {"$elemMatch": {"$gte": lo, "$lt": hi}}}})
    ops: dict[str, Filter] = {
        "eq": {"$gte": lo, "$lt": hi}, "gt": {"$gt": value}, "sa": {"$gt": value}, "ge": {"$gte": value},
        "lt": {"$lt": value}, "eb": {"$lt": value}, "le": {"$lte": value},
        "ap": {"$gte": value - abs(value) * 0.1, "$lte": value + abs(value) * 0.1},
    }
    return Clause({field: {"$elemMatch": ops[prefix]}})


def _quantity(qb: QueryBuilder, param: SearchParam, modifier: str | None, raw: str, field: str) -> Clause:
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
        return Clause({field: {"$not": {"$elemMatch": {**cond, **_number_cond("eq", value, lo, hi, "lo", "hi")}}}})
    return Clause({field: {"$elemMatch": {**cond, **_number_cond(prefix, value, lo, hi, "lo", "hi")}}})


def _uri(qb: QueryBuilder, param: SearchParam, modifier: str | None, raw: str, field: str) -> Clause:
    value = unescape(raw)
    if modifier == "below":
        return _starts_with(field, value)
    if modifier == "above":
        parts = value.split("/")
        cond: Filter = {field: {"$in": ["/".join(parts[:i]) for i in range(3, len(parts) + 1)]}}
        return Clause(cond, cond)
    return Clause({field: value}, {field: value})


def _composite(qb: QueryBuilder, param: SearchParam, modifier: str | None, raw: str, field: str) -> Clause:
    pieces = _SPLIT_DOLLAR.split(raw)
    if len(pieces) != len(param.components):
        raise InvalidSearch(f"'{param.code}' takes {len(param.components)} values joined by '$'; got '{raw}'")
    cond: Filter = {}
    for i, (component, piece) in enumerate(zip(param.components, pieces, strict=True)):
        fake = SearchParam(code=f"{param.code}${i}", type=component.param_type, url="", expression="",
                           leaves=component.leaves)
        cond.update(_BUILDERS[component.param_type](qb, fake, None, piece, str(i)).exact)
    return Clause({field: {"$elemMatch": cond}})


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
