"""Search criteria of a request turned into `Clause`s for each type searched.

Each occurrence of a parameter becomes one `Clause` (they are ANDed); the
comma-separated values inside one occurrence are ORed. This module decides
which parameter a criterion names, checks its modifier, and hands each value to
`predicates`; what needs more than one value's text lives here: terminology
modifiers (codes from the terminology service), chains and `_has`.

Chained parameters (`subject:Patient.name=…`) and reverse chains
(`_has:Observation:patient:code=…`) run in stages: the inner search yields ids
(at most `stage_cap`, else a too-costly error rather than a slow server), which
the outer clause matches with `$in` on an indexed field.

Every aggregation of a search (stages, the main query, counts, includes) runs
through `aggregate`, which asks the database to stop it after the search time
limit (`maxTimeMS`, enforced by the server itself), so one search cannot keep
the database busy for minutes; running out of time is a too-costly error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import ExecutionTimeout

from fhir_store.errors import InvalidSearch, Issue, SearchTooCostly
from fhir_store.indexes import DRIVING_FIELDS
from fhir_store.search.clauses import Clause, Filter, TypeQuery
from fhir_store.search.parameters import SPLIT_PIPE, split_values, unescape
from fhir_store.search.predicates import any_of, modifier_allowed, point_date, predicate
from fhir_store.search.registry import Registry, SearchParam


class Terminology(Protocol):
    """What token modifiers need from the terminology service (`fhir_store.terminology`)."""

    async def codes_in(self, canonical: str) -> list[tuple[str, str]]: ...

    async def codes_below(self, system: str | None, code: str, *, above: bool = False) -> list[tuple[str, str]]: ...

    async def codes_matching(self, text: str) -> list[tuple[str, str]]: ...


#: Token modifiers answered with codes from the terminology service.
TERMINOLOGY_MODIFIERS = ("in", "not-in", "below", "above", "text")
#: Chained parameters and `_has` nest at most this deep (`subject:Patient.organization.name` is 2).
MAX_CHAIN_DEPTH = 4
#: Inner (chained or `_has`) searches one request may run: a chain through a reference that may point to
#: any type runs one per type, and nesting such chains multiplies them.
MAX_STAGES = 256
#: Comma-separated (ORed) values one occurrence of a parameter may carry.
MAX_VALUES = 1000
#: Parameters one search (or set of conditional criteria) may carry, and the longest name and value of one.
MAX_PARAMETERS = 100
MAX_NAME_CHARS = 256
MAX_VALUE_CHARS = 64 * 1024


@dataclass
class QueryBuilder:
    registry: Registry
    resources: AsyncCollection[dict[str, Any]]
    local_base: str | None = None
    stage_cap: int = 10_000
    session: AsyncClientSession | None = None
    terminology: Terminology | None = None
    #: Where an inner search of a type runs (AuditEvents live apart); None: `resources` for every type.
    collection_of: Callable[[str], AsyncCollection[dict[str, Any]]] | None = None
    #: Inner searches run so far for this request (at most MAX_STAGES).
    stages: int = 0
    #: Seconds the database may spend on each aggregation; None: no limit (bulk export).
    time_limit: float | None = None

    async def build(self, types: list[str], criteria: list[tuple[str, str]], *, strict: bool,
                    issues: list[Issue]) -> list[TypeQuery]:
        """One `TypeQuery` per type searched, each holding a clause per known criterion."""
        check_bounds(criteria)
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

    async def criterion(self, rtype: str, name: str, raw: str, *, issues: list[Issue], depth: int = 0) -> Clause:
        if depth > MAX_CHAIN_DEPTH:
            raise SearchTooCostly(f"Chained parameters and _has nest at most {MAX_CHAIN_DEPTH} levels deep "
                                  "(the limit)")
        if name.startswith("_has:"):
            return await self._has(rtype, name, raw, issues, depth)
        head, dot, rest = name.partition(".")
        code, colon, modifier = head.partition(":")
        param = self.registry.param(rtype, code)
        if param is None:
            raise InvalidSearch(f"Unknown search parameter '{code}' for {rtype}")
        if dot:
            return await self._chain(param, modifier if colon else None, rest, raw, issues, depth)
        if param.type == "token" and modifier in TERMINOLOGY_MODIFIERS and self.terminology is not None:
            return await self._terminology(self.terminology, param, modifier, raw)
        return self.condition(param, modifier if colon else None, raw)

    async def _terminology(self, terminology: Terminology, param: SearchParam, modifier: str, raw: str) -> Clause:
        """`:in`/`:not-in` a value set, `:below`/`:above` a code, `:text` also matching the codes' titles."""
        field = f"ix.{param.code}"
        values = _values(param, raw)
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
                parts = SPLIT_PIPE.split(value)
                if len(parts) > 2 or not parts[-1]:
                    raise InvalidSearch(f"{param.code}:{modifier} takes [system|]code, not '{value}'")
                system = unescape(parts[0]) if len(parts) == 2 and parts[0] else None
                codes = await terminology.codes_below(system, unescape(parts[-1]), above=modifier == "above")
            tokens = sorted({f"{system}|{code}" if system else code for system, code in codes})
            cond: Filter = {field: {"$in": tokens}}
            if modifier == "text":
                own_text = predicate(param, "text", value, field, self.local_base)  # the record's own text
                alternatives.append(any_of([own_text, Clause(cond, None)]))
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
        if modifier is not None and not modifier_allowed(param, modifier):
            raise InvalidSearch(f"The modifier ':{modifier}' is not supported on {param.type} parameter "
                                f"'{param.code}'")
        values = _values(param, raw)
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
            cond = point_date(field, raw)
            return Clause(cond, cond if "$or" not in cond else None)
        return predicate(param, modifier, raw, field, self.local_base)

    # ---- chains and _has --------------------------------------------------------------------

    async def _chain(self, param: SearchParam, type_modifier: str | None, rest: str, raw: str,
                     issues: list[Issue], depth: int) -> Clause:
        if param.type != "reference":
            raise InvalidSearch(f"'{param.code}' is not a reference parameter, so it cannot be chained")
        targets = [type_modifier] if type_modifier else list(param.targets)
        next_code = rest.split(".", 1)[0].split(":", 1)[0]
        targets = [t for t in targets if self.registry.param(t, next_code) is not None
                   or (next_code == "_has" and bool(self.registry.params(t)))]  # a type this server has
        if not targets:
            raise InvalidSearch(f"No type that '{param.code}' points to has a search parameter '{next_code}'")
        refs: list[str] = []
        for target in targets:
            inner = await self.criterion(target, rest, raw, issues=issues, depth=depth + 1)
            refs += [doc["_id"] for doc in await self._stage(TypeQuery(target, [inner]), {"_id": True})]
        cond = {f"ix.{param.code}": {"$in": refs}}
        return Clause(cond, cond)

    async def _has(self, rtype: str, name: str, raw: str, issues: list[Issue], depth: int) -> Clause:
        parts = name.split(":", 3)
        if len(parts) < 4 or not parts[3]:
            raise InvalidSearch(f"'{name}' must look like _has:Type:reference-parameter:parameter")
        _, source, ref_code, rest = parts
        ref_param = self.registry.param(source, ref_code)
        if ref_param is None or ref_param.type != "reference":
            raise InvalidSearch(f"'{ref_code}' is not a reference search parameter of {source}")
        inner = await self.criterion(source, rest, raw, issues=issues, depth=depth + 1)
        prefix = f"{rtype}/"
        keys: set[str] = set()
        for doc in await self._stage(TypeQuery(source, [inner]), {f"ix.{ref_code}": True}):
            keys.update(r for r in (doc.get("ix") or {}).get(ref_code, []) if r.startswith(prefix))
        cond = {"_id": {"$in": sorted(keys)}}
        return Clause(cond, cond)

    async def _stage(self, query: TypeQuery, projection: Filter) -> list[dict[str, Any]]:
        """Rows of an inner (chained or `_has`) search, refusing more than `stage_cap`."""
        self.stages += 1
        if self.stages > MAX_STAGES:
            raise SearchTooCostly(f"This search needs more than {MAX_STAGES} inner searches for its chains and _has "
                                  "(the limit); name the target type (subject:Patient.name) to narrow them down")
        pipeline = [*match_stages(query), {"$limit": self.stage_cap + 1}, {"$project": projection}]
        collection = self.collection_of(query.resource_type) if self.collection_of else self.resources
        rows = await aggregate(collection, pipeline, session=self.session, time_limit=self.time_limit)
        if len(rows) > self.stage_cap:
            raise SearchTooCostly(f"A chained or _has stage matches more than {self.stage_cap} resources; "
                                  "add criteria to narrow it down")
        return rows


_FIELDS = {"_id": "_id", "_lastUpdated": "ts"}


async def aggregate(collection: AsyncCollection[dict[str, Any]], pipeline: list[Filter], *,
                    session: AsyncClientSession | None, time_limit: float | None) -> list[dict[str, Any]]:
    """Every row of one aggregation of a search, which the database stops after `time_limit` seconds.

    `maxTimeMS` bounds the aggregation and its cursor's later batches together, on the server: a client-side
    timeout would leave the database working on a query nobody waits for any more.
    """
    options: dict[str, Any] = {"maxTimeMS": max(1, round(time_limit * 1000))} if time_limit else {}
    try:
        cursor = await collection.aggregate(pipeline, session=session, **options)
        return await cursor.to_list()
    except ExecutionTimeout:
        raise SearchTooCostly(f"The search ran for longer than {time_limit:g} s (the limit) and was stopped; add "
                              "criteria to narrow it down") from None


def check_bounds(params: list[tuple[str, str]]) -> None:
    """Refuse a search too large to be sensible before any of it runs: too many parameters, chains or `_has`
    nested too deep, names or values too long."""
    if len(params) > MAX_PARAMETERS:
        raise SearchTooCostly(f"The search has {len(params)} parameters; a search may have at most {MAX_PARAMETERS} "
                              "(the limit)")
    for name, value in params:
        if name.count("_has:") + name.count(".") > MAX_CHAIN_DEPTH:
            raise SearchTooCostly(f"'{_shown(name)}': chained parameters and _has nest at most {MAX_CHAIN_DEPTH} "
                                  "levels deep (the limit)")
        if len(name) > MAX_NAME_CHARS:
            raise InvalidSearch(f"The parameter name '{_shown(name)}' is {len(name)} characters long; at most "
                                f"{MAX_NAME_CHARS} (the limit)")
        if len(value) > MAX_VALUE_CHARS:
            raise SearchTooCostly(f"The value of '{_shown(name)}' is {len(value)} characters long; at most "
                                  f"{MAX_VALUE_CHARS} (the limit)")


def _shown(text: str) -> str:
    return text if len(text) <= 64 else text[:64] + "…"


def _values(param: SearchParam, raw: str) -> list[str]:
    """The ORed values of one occurrence of `param`: none empty, at most MAX_VALUES."""
    values = split_values(raw)
    if not values or any(v == "" for v in values):
        raise InvalidSearch(f"Search parameter '{param.code}' has an empty value")
    if len(values) > MAX_VALUES:
        raise SearchTooCostly(f"Search parameter '{param.code}' has {len(values)} values; one occurrence may "
                              f"carry at most {MAX_VALUES} (the limit)")
    return values


def match_stages(query: TypeQuery, extra: list[Filter] | None = None) -> list[Filter]:
    """`$match` stages for one type: first the best driving condition (one index), then the rest."""
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
