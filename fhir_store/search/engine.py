"""Running a search: filter, sort, keyset paging, totals, `_include` / `_revinclude`.

Paging is by keyset on the sort keys plus `_id` (never by offset), so a client
walking `next` links through a result set that is growing meanwhile sees no
entry twice and skips none that existed when it started. The cursor carries
the last (or, for `previous`, the first) row's sort values.

Each aggregation runs under the engine's `time_limit` (`query.aggregate`), but
for an export's `_typeFilter` (`matching_ids`), which is long-running by design.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import bson
from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection

from fhir_store.compartments import compartment_params
from fhir_store.documents import VERSION_FIELDS, version_from_document
from fhir_store.errors import InvalidSearch, Issue
from fhir_store.model import Version
from fhir_store.params import page_size
from fhir_store.resource_types import resource_types
from fhir_store.search.clauses import Clause, Filter, TypeQuery
from fhir_store.search.query import QueryBuilder, Terminology, aggregate, check_bounds, match_stages
from fhir_store.search.registry import Registry

#: Query parameters that shape the result rather than select resources.
RESULT_PARAMETERS = {"_sort", "_count", "_include", "_revinclude", "_summary", "_elements", "_total",
                     "_totalMethod", "_contained", "_containedType", "_format", "_pretty", "_cursor", "_type"}
SUMMARY_MODES = ("true", "text", "data", "count", "false")
TOTAL_MODES = ("none", "estimate", "accurate")
#: Aidbox's `_totalMethod` (sent by the fhirpy client's `count()`), in `_total`'s terms.
TOTAL_METHODS = {"count": "accurate", "exact": "accurate", "accurate": "accurate", "estimate": "estimate",
                 "none": "none"}
MAX_INCLUDED = 1000
#: Rounds of `:iterate` includes at most (each round fetches what the previous one found).
MAX_INCLUDE_ROUNDS = 10
#: Keys `_sort` may name (MongoDB sorts on at most 32).
MAX_SORT_KEYS = 8
#: An `_elements` entry: an element name, optionally after its type (`Patient.name`).
_ELEMENT = re.compile(r"(?:[A-Z][A-Za-z]{0,63}\.)?[a-z][A-Za-z0-9]{0,127}")
#: Types `$everything` adds when the patient's records reference them (they are outside the compartment).
EVERYTHING_REFERENCED = {"Practitioner", "PractitionerRole", "Organization", "Location", "Medication", "Device",
                         "Substance", "HealthcareService"}


@dataclass(frozen=True)
class Include:
    source: str
    param: str
    target: str | None
    iterate: bool


@dataclass
class SearchRequest:
    types: list[str]
    criteria: list[tuple[str, str]] = field(default_factory=list)
    sort: list[tuple[str, int]] = field(default_factory=list)
    count: int = 50
    includes: list[Include] = field(default_factory=list)
    revincludes: list[Include] = field(default_factory=list)
    total: str | None = None
    summary: str | None = None
    elements: list[str] | None = None
    cursor: str | None = None
    strict: bool = False
    #: this server's base URL: absolute references to it are matched as relative ones
    local_base: str | None = None


@dataclass
class SearchResult:
    matches: list[Version]
    included: list[Version]
    total: int | None
    next_cursor: str | None
    previous_cursor: str | None
    issues: list[Issue]
    #: How the client asked entries to be shaped (`_summary`, `_elements`).
    summary: str | None = None
    elements: list[str] | None = None


def parse_request(registry: Registry, types: list[str], params: list[tuple[str, str]], *, strict: bool,
                  default_count: int, max_count: int, local_base: str | None = None) -> SearchRequest:
    """Split the query into selection criteria and result parameters, checking the latter."""
    request = SearchRequest(types=types, count=default_count, strict=strict, local_base=local_base)
    check_bounds(params)
    for name, value in params:
        base = name.split(":", 1)[0]
        if base not in RESULT_PARAMETERS:
            request.criteria.append((name, value))
        elif base == "_count":
            request.count = page_size(value, default_count, max_count)
        elif base == "_sort":
            keys: dict[str, int] = {}
            for key in value.split(","):
                if key:
                    sort_field, direction = _sort_key(registry, types, key)
                    keys.setdefault(sort_field, direction)  # `name,-name`: the first says how
            request.sort = list(keys.items())
            if len(request.sort) > MAX_SORT_KEYS:
                raise InvalidSearch(f"_sort names {len(request.sort)} keys; at most {MAX_SORT_KEYS} (the limit)")
        elif base in ("_include", "_revinclude"):
            include = _include(registry, name, value)
            found = request.includes if base == "_include" else request.revincludes
            if include not in found:  # a hundred `_include:iterate=*` are one
                found.append(include)
        elif base == "_summary":
            if value not in SUMMARY_MODES:
                raise InvalidSearch(f"_summary must be one of {', '.join(SUMMARY_MODES)}, not '{value}'")
            request.summary = value
        elif base == "_total":
            if value not in TOTAL_MODES:
                raise InvalidSearch(f"_total must be one of {', '.join(TOTAL_MODES)}, not '{value}'")
            request.total = value
        elif base == "_totalMethod":
            if value not in TOTAL_METHODS:
                raise InvalidSearch(f"_totalMethod must be one of {', '.join(TOTAL_METHODS)}, not '{value}'")
            request.total = TOTAL_METHODS[value]
        elif base == "_elements":
            request.elements = [e.strip() for e in value.split(",") if e.strip()]
            for element in request.elements:
                if not _ELEMENT.fullmatch(element):
                    raise InvalidSearch(f"_elements names elements (name, or Type.name); "
                                        f"'{_shown(element)}' is not one")
        elif base == "_cursor":
            request.cursor = value
    return request


def _shown(text: str) -> str:
    return text if len(text) <= 64 else text[:64] + "…"


def _sort_key(registry: Registry, types: list[str], key: str) -> tuple[str, int]:
    direction = DESCENDING if key.startswith("-") else ASCENDING
    code = key.lstrip("-")
    if code == "_id":
        return "_id", direction
    if code == "_lastUpdated":
        return "ts", direction
    for rtype in types:
        param = registry.param(rtype, code)
        if param is None or param.type in ("composite", "special"):
            raise InvalidSearch(f"Cannot sort {rtype} by '{code}'")
    return f"sk.{code}", direction


def _include(registry: Registry, name: str, value: str) -> Include:
    iterate = name.endswith(":iterate") or name.endswith(":recurse")
    parts = value.split(":")
    if value == "*":
        return Include("*", "*", None, iterate)
    if len(parts) not in (2, 3):
        raise InvalidSearch(f"{name} takes Type:parameter[:targetType], not '{_shown(value)}'")
    source, code = parts[0], parts[1]
    target = parts[2] if len(parts) == 3 else None
    known = resource_types()
    for rtype in (source, target):
        if rtype is not None and rtype != "*" and rtype not in known:
            raise InvalidSearch(f"{name}: '{_shown(rtype)}' is not a resource type")
    param = registry.param(source, code) if code != "*" else None
    if code != "*" and (param is None or param.type != "reference"):
        raise InvalidSearch(f"'{code}' is not a reference search parameter of {source}")
    return Include(source, code, target, iterate)


class SearchEngine:
    """Runs searches as aggregation pipelines: `$match` on the driving index, `$match` the rest, sort, page.

    Real MongoDB merges the two `$match` stages and plans them as one; an
    embedded server with a simpler planner still starts from the right index.
    """

    def __init__(self, registry: Registry, resources: AsyncCollection[dict[str, Any]],
                 terminology: Terminology | None = None,
                 collection_of: Callable[[str], AsyncCollection[dict[str, Any]]] | None = None,
                 time_limit: float | None = None) -> None:
        self.registry = registry
        self.resources = resources
        #: Seconds the database may spend on each aggregation of a search (None: no limit).
        self.time_limit = time_limit
        #: The collection of each type for chains and `_has` (a type kept apart, such as AuditEvent).
        self.collection_of = collection_of
        #: Token `:in`, `:below`, … need the terminology service; without it they match as plain tokens.
        self.terminology = terminology

    async def queries(self, request: SearchRequest, issues: list[Issue],
                      compartment: tuple[str, str] | None = None,
                      session: AsyncClientSession | None = None,
                      within: Mapping[str, Sequence[str]] | None = None, *,
                      time_limit: float | None) -> list[TypeQuery]:
        builder = QueryBuilder(self.registry, self.resources, request.local_base, session=session,
                               terminology=self.terminology, collection_of=self.collection_of, time_limit=time_limit)
        queries = await builder.build(request.types, request.criteria, strict=request.strict, issues=issues)
        if compartment is not None:
            owner = f"{compartment[0]}/{compartment[1]}"
            for query in queries:
                compartment_params(compartment[0], query.resource_type)  # unknown compartment: 400
                query.clauses.append(Clause({"cp": owner}, {"cp": owner}))
        if within is not None:
            narrowed: Filter = {"$or": [{f"ix.{key}": {"$in": list(values)}} for key, values in within.items()]
                                or [{"_id": {"$in": []}}]}  # nothing allowed: nothing found
            for query in queries:
                query.clauses.append(Clause(narrowed))
        return queries

    async def matching(self, request: SearchRequest, *, limit: int,
                       session: AsyncClientSession | None = None) -> list[Version]:
        """Matches without paging or includes (conditional interactions)."""
        stages = _match(await self.queries(request, [], session=session, time_limit=self.time_limit))
        docs = await self._rows([*stages, {"$limit": limit}], session)
        return [version_from_document(doc) for doc in docs]

    async def matching_ids(self, request: SearchRequest) -> list[str]:
        """The ids of every match, however many (an export's `_typeFilter`): no paging, ids only."""
        stages = _match(await self.queries(request, [], time_limit=None))
        docs = await aggregate(self.resources, [*stages, {"$project": {"id": True}}], session=None, time_limit=None)
        return [doc["id"] for doc in docs]

    async def search(self, request: SearchRequest, *, compartment: tuple[str, str] | None = None,
                     within: Mapping[str, Sequence[str]] | None = None,
                     session: AsyncClientSession | None = None) -> SearchResult:
        issues: list[Issue] = []
        queries = await self.queries(request, issues, compartment, session, within, time_limit=self.time_limit)
        if request.summary == "count" or request.count == 0:  # `_count=0`: how many, and nothing else
            return SearchResult([], [], await self._count(queries, session), None, None, issues, request.summary)
        sort = request.sort if any(k == "_id" for k, _ in request.sort) else [*request.sort, ("_id", ASCENDING)]
        direction, last = _decode_cursor(request.cursor, len(sort))
        run_sort = sort if direction == "after" else [(k, -d) for k, d in sort]
        keyset = None if last is None else _after(run_sort, last)
        projection = {**VERSION_FIELDS, **{k: True for k, _ in sort if k.startswith("sk.")},
                      **self._include_projection(request)}
        pipeline = [*_match(queries, keyset), {"$sort": dict(run_sort)}, {"$limit": request.count + 1},
                    {"$project": projection}]
        docs = await self._rows(pipeline, session)
        more = len(docs) > request.count
        docs = docs[: request.count]
        if direction == "before":
            docs.reverse()
        next_cursor = previous_cursor = None
        if docs:
            if more or direction == "before":
                next_cursor = _encode_cursor("after", _sort_values(sort, docs[-1]))
            if last is not None and (direction == "after" or more):
                previous_cursor = _encode_cursor("before", _sort_values(sort, docs[0]))
        total: int | None = None
        if request.total in ("accurate", "estimate"):
            total = await self._count(queries, session)
        elif request.total is None and last is None and not more:
            total = len(docs)  # known for free
        included = await self._includes(request, docs, issues, session) if request.count else []
        return SearchResult([version_from_document(d) for d in docs], included, total, next_cursor,
                            previous_cursor, issues, request.summary, request.elements)

    async def everything(self, owner: str, *, types: list[str] | None, since: datetime | None, count: int,
                         cursor: str | None, session: AsyncClientSession | None = None) -> SearchResult:
        """`$everything`: the compartment of `owner` ("Patient/1"), page by page in `_id` order, and on
        each page the practitioners, organisations, locations and medications it references."""
        direction, last = _decode_cursor(cursor, 1)
        if direction != "after" or (last is not None and not isinstance(last[0], str)):
            raise InvalidSearch("$everything pages forward only, with the _cursor of its next link")
        rest: list[Filter] = [{"deleted": False}]
        if types:
            rest.append({"type": {"$in": types}})
        if since is not None:
            rest.append({"ts": {"$gte": since}})
        if last is not None:
            rest.append({"_id": {"$gt": last[0]}})
        pipeline: list[Filter] = [{"$match": {"cp": owner}}, {"$match": {"$and": rest}}, {"$sort": {"_id": 1}},
                                  {"$limit": count + 1}, {"$project": {**VERSION_FIELDS, "ix": True}}]
        docs = await self._rows(pipeline, session)
        more = len(docs) > count
        docs = docs[:count]
        next_cursor = _encode_cursor("after", [docs[-1]["_id"]]) if more and docs else None
        seen = {d["_id"] for d in docs}
        wanted = {ref for d in docs for values in (d.get("ix") or {}).values() for ref in values
                  if isinstance(ref, str) and ref.split("/", 1)[0] in EVERYTHING_REFERENCED and ref.count("/") == 1}
        if types:
            wanted = {ref for ref in wanted if ref.split("/", 1)[0] in types}
        referenced = await self._fetch({"_id": {"$in": sorted(wanted - seen)}}, seen, session) if wanted - seen else []
        matches = [version_from_document(d) for d in docs + referenced]
        total = len(matches) if last is None and not more else None
        return SearchResult(matches, [], total, next_cursor, None, [])

    async def explain(self, request: SearchRequest) -> dict[str, Any]:
        """The database's plan for the search's main query (tests check that an index is used)."""
        queries = await self.queries(request, [], time_limit=self.time_limit)
        sort = request.sort if any(k == "_id" for k, _ in request.sort) else [*request.sort, ("_id", ASCENDING)]
        pipeline = [*_match(queries), {"$sort": dict(sort)}, {"$limit": request.count}]
        db = self.resources.database
        explained: dict[str, Any] = await db.command(
            "explain", {"aggregate": self.resources.name, "pipeline": pipeline, "cursor": {}})
        return explained

    async def _rows(self, pipeline: list[Filter], session: AsyncClientSession | None) -> list[dict[str, Any]]:
        return await aggregate(self.resources, pipeline, session=session, time_limit=self.time_limit)

    async def _count(self, queries: list[TypeQuery], session: AsyncClientSession | None) -> int:
        rows = await self._rows([*_match(queries), {"$count": "n"}], session)
        return int(rows[0]["n"]) if rows else 0

    def _include_projection(self, request: SearchRequest) -> dict[str, bool]:
        if any(inc.param == "*" for inc in request.includes):
            return {"ix": True}
        return {f"ix.{inc.param}": True for inc in request.includes}

    async def _includes(self, request: SearchRequest, docs: list[dict[str, Any]], issues: list[Issue],
                        session: AsyncClientSession | None) -> list[Version]:
        if not request.includes and not request.revincludes:
            return []
        seen = {d["_id"] for d in docs}
        included: list[dict[str, Any]] = []
        frontier = docs
        first_round = True
        rounds = 0
        while frontier:
            rounds += 1
            if rounds > MAX_INCLUDE_ROUNDS:
                issues.append(Issue("too-costly", f"_include:iterate and _revinclude:iterate stopped after "
                                                  f"{MAX_INCLUDE_ROUNDS} rounds (the limit)", severity="warning"))
                break
            found: list[dict[str, Any]] = []
            for inc in request.includes:
                if first_round or inc.iterate:
                    found += await self._forward(inc, frontier, seen, session)
            for inc in request.revincludes:
                if first_round or inc.iterate:
                    found += await self._reverse(inc, frontier, seen, session)
            included += found
            if len(included) > MAX_INCLUDED:
                included = included[:MAX_INCLUDED]
                issues.append(Issue("too-costly", f"Only the first {MAX_INCLUDED} included resources are returned",
                                    severity="warning"))
                break
            frontier = found
            first_round = False
        return [version_from_document(d) for d in included]

    async def _fetch(self, first: Filter, seen: set[str],
                     session: AsyncClientSession | None = None) -> list[dict[str, Any]]:
        pipeline: list[Filter] = [{"$match": first}, {"$match": {"deleted": False}}, {"$limit": MAX_INCLUDED + 1},
                    {"$project": {**VERSION_FIELDS, "ix": True}}]
        out = []
        for doc in await self._rows(pipeline, session):
            if doc["_id"] not in seen:
                seen.add(doc["_id"])
                out.append(doc)
        return out

    async def _forward(self, inc: Include, docs: list[dict[str, Any]], seen: set[str],
                       session: AsyncClientSession | None) -> list[dict[str, Any]]:
        keys: set[str] = set()
        for doc in docs:
            if inc.source not in ("*", doc["type"]):
                continue
            ix = doc.get("ix") or {}
            params = [p.code for p in self.registry.params(doc["type"]).values() if p.type == "reference"] \
                if inc.param == "*" else [inc.param]
            for code in params:
                for ref in ix.get(code, []):
                    if "/" in ref and not ref.startswith(("http://", "https://", "urn:")) and \
                            (inc.target is None or ref.startswith(f"{inc.target}/")):
                        keys.add(ref)
        keys -= seen
        return await self._fetch({"_id": {"$in": sorted(keys)}}, seen, session) if keys else []

    async def _reverse(self, inc: Include, docs: list[dict[str, Any]], seen: set[str],
                       session: AsyncClientSession | None) -> list[dict[str, Any]]:
        targets = [d["_id"] for d in docs if inc.target is None or d["type"] == inc.target]
        if not targets:
            return []
        return await self._fetch({"type": inc.source, f"ix.{inc.param}": {"$in": targets}}, seen, session)


def _match(queries: list[TypeQuery], keyset: Filter | None = None) -> list[Filter]:
    """The `$match` stages of a search over one type (index-driven) or several (one `$or`)."""
    extra = [keyset] if keyset else []
    if len(queries) == 1:
        return match_stages(queries[0], extra)
    alternatives = [{"$and": [{"type": q.resource_type}, {"deleted": False}, *(c.exact for c in q.clauses)]}
                    for q in queries]
    return [{"$match": {"$or": alternatives}}, *({"$match": e} for e in extra)]


def _sort_values(sort: list[tuple[str, int]], doc: dict[str, Any]) -> list[Any]:
    values = []
    for key, _ in sort:
        value: Any = doc
        for part in key.split(".", 1) if key.startswith("sk.") else [key]:
            value = value.get(part) if isinstance(value, dict) else None
        values.append(value)
    return values


def _after(sort: list[tuple[str, int]], last: list[Any]) -> Filter:
    """Rows strictly after `last` in `sort` order (nulls first ascending, last descending, as MongoDB sorts)."""
    branches: list[Filter] = []
    equal: list[Filter] = []
    for (key, direction), value in zip(sort, last, strict=True):
        if direction == ASCENDING:
            later: Filter | None = {key: {"$ne": None}} if value is None else {key: {"$gt": value}}
        else:
            later = None if value is None else {"$or": [{key: {"$lt": value}}, {key: None}]}
        if later is not None:
            branches.append({"$and": [*equal, later]} if equal else later)
        equal.append({key: value})
    return {"$or": branches} if branches else {"_id": {"$in": []}}


def _encode_cursor(direction: str, values: list[Any]) -> str:
    return base64.urlsafe_b64encode(bson.encode({"d": direction, "v": values})).decode().rstrip("=")


#: What a sort key may be (`sk` values, `_id`, `ts`): a cursor holding anything else was not made here, and
#: a document in it would reach the keyset filter as a query operator (`{"$regex": ...}`).
_CURSOR_VALUES = (str, int, float, datetime, type(None))


def _decode_cursor(token: str | None, keys: int) -> tuple[str, list[Any] | None]:
    """The direction and row position of a `_cursor`, which must hold `keys` plain values."""
    if not token:
        return "after", None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        doc: dict[str, Any] = bson.decode(raw, bson.CodecOptions(tz_aware=True))
        direction, values = doc["d"], doc["v"]
        if direction not in ("after", "before") or not isinstance(values, list) or len(values) != keys \
                or not all(isinstance(v, _CURSOR_VALUES) for v in values):
            raise ValueError
        return direction, values
    except Exception:
        raise InvalidSearch("_cursor is not one this server made; follow the Bundle's links") from None
