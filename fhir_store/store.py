"""The FHIR resource store: versioned resources in MongoDB.

Layout (see docs/architecture.md):
- `resources` holds the current version of every resource, one document per
  resource (`_id` = "Type/id"), with its search-index values in `ix`. A deletion
  leaves a tombstone here (`deleted: true`, no `res`), so a read answers 410.
- `history` holds every superseded version (`_id` = "Type/id/vid"), never
  indexed for search, so history growth never slows search.
- `claims` holds short-lived leases that serialise conditional creates with
  the same criteria.

A new version replaces the current one with a compare-and-swap on `vid`
(`replace_one({_id, vid: n}, ...)`), after first copying version n into
`history`. The copy is idempotent (its `_id` is the version key), so a process
killed between the two steps leaves at worst a history copy of the still-current
version, which history reads de-duplicate; no version is ever lost and two
writers can never both succeed from the same base version.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import jsonpatch
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from fhir_store import indexes, params
from fhir_store.audit import AUDIT_EVENT, AuditTrail
from fhir_store.documents import Document, Indexer, current_document, history_document, version_from_document
from fhir_store.errors import (
    InvalidRequest,
    InvalidResource,
    InvalidSearch,
    Issue,
    MethodNotAllowed,
    MultipleMatches,
    ResourceExists,
    ResourceGone,
    ResourceNotFound,
    TooManyRequests,
    VersionConflict,
)
from fhir_store.fhir_json import exact_numbers
from fhir_store.hooks import WriteCheck, WriteContext, WriteObserver
from fhir_store.horizon import WriteHorizon
from fhir_store.ids import check_id, current_key, new_id
from fhir_store.instants import now
from fhir_store.model import HistoryCursor, HistoryPage, Operation, Version, WriteResult
from fhir_store.pipeline import Caller
from fhir_store.reads import VersionReader, check_type
from fhir_store.references import localise
from fhir_store.resource_types import resource_types
from fhir_store.search.engine import SearchEngine, SearchRequest, SearchResult, parse_request
from fhir_store.search.indexing import indexer, patient_references
from fhir_store.search.query import Terminology
from fhir_store.search.registry import Registry, load_registry
from fhir_store.validation import (
    MAX_SHORT_STRING_CHARS,
    MAX_STRING_CHARS,
    ElementLimits,
    nfc_resource,
)
from fhir_store.validation_runner import ValidationRunner

Criteria = tuple[tuple[str, str], ...]

# A writer that loses the compare-and-swap this many times in a row gives up (429).
_MAX_ATTEMPTS = 20
# A conditional-create lease older than this is presumed to belong to a dead process.
_CLAIM_LEASE = timedelta(seconds=30)
#: Seconds the database may spend on one aggregation of a search before it stops it (`maxTimeMS`).
SEARCH_TIME_LIMIT = 10.0


def parse_criteria(query: str) -> Criteria:
    """Conditional-interaction criteria: a search query string, in a canonical order."""
    pairs = tuple(sorted(parse_qsl(query.lstrip("?"), keep_blank_values=True)))
    if not pairs:
        raise InvalidRequest("Conditional criteria are empty")
    return pairs


def _content(resource: dict[str, Any] | None) -> dict[str, Any] | None:
    """A resource without the server-owned meta fields, for "did anything change?"."""
    if resource is None:
        return None
    meta = {k: v for k, v in (resource.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")}
    out = {k: v for k, v in resource.items() if k != "meta"}
    if meta:
        out["meta"] = meta
    return out


def _patch_problem(exc: Exception) -> str:
    """The patch library's message, in the client's terms (no Python type names)."""
    if isinstance(exc, jsonpatch.JsonPatchTestFailed):
        return "a 'test' operation found a different value"
    if isinstance(exc, KeyError | AttributeError | TypeError):
        return "an operation lacks 'op', 'path' or 'value', or is not an object"
    return re.sub(r"<class '(?:\w+\.)*(\w+)'>", r"\1", str(exc))


def _not_audit(resource_type: object) -> None:
    if resource_type == AUDIT_EVENT:
        raise MethodNotAllowed("AuditEvents are written by this server's audit trail alone, and never changed or "
                               "deleted")


def _same_content(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Equal apart from server-owned meta; 1.5 == 1.50 as numbers, so the written decimals must match too."""
    content_a, content_b = _content(a), _content(b)
    return content_a == content_b and exact_numbers(content_a) == exact_numbers(content_b)


class FhirStore:
    """Create, read, update, patch, delete and search FHIR resources, with full version history.

    Collaborators come in through the constructor: the search-parameter
    `registry` (one per process), the `write_checks` and `observers` other
    services plug into every write (see `hooks.py`), and the `terminology` that
    token modifiers such as `:in` need. Every method takes an optional `session`,
    so a transaction Bundle can run many interactions in one MongoDB
    transaction; write methods take the `caller`, which the hooks see, and the
    `base` the client used for this server: references to it are stored relative.
    The limits on text values (`max_string_chars`, `max_short_string_chars`, see
    `validation.py`) hold for every write, and `search_time_limit` (seconds, None
    for none) for every search but an export's.
    """

    def __init__(self, db: AsyncDatabase[Document], *, registry: Registry | None = None,
                 write_checks: Sequence[WriteCheck] = (), observers: Sequence[WriteObserver] = (),
                 terminology: Terminology | None = None, page_size: int = 50, max_page_size: int = 1000,
                 audit_journal: Path | None = None, max_string_chars: int = MAX_STRING_CHARS,
                 max_short_string_chars: int = MAX_SHORT_STRING_CHARS,
                 search_time_limit: float | None = SEARCH_TIME_LIMIT) -> None:
        self.db = db
        self.resources = db["resources"]
        self.history_versions = db["history"]
        self.claims = db["claims"]
        self._registry = registry
        self._terminology = terminology
        self.page_size = page_size
        self.max_page_size = max_page_size
        self._validation = ValidationRunner(ElementLimits(max_string_chars, max_short_string_chars))
        self._search_time_limit = search_time_limit
        self._reader = VersionReader(db)
        self._write_checks = tuple(write_checks)
        self._observers = tuple(observers)
        self._horizon = WriteHorizon(db)
        #: AuditEvents: their own collection, append-only (see `audit.py`).
        self.audit_trail = AuditTrail(db["audit"], lambda: self._indexer, journal=audit_journal)
        self._audit_reader = VersionReader(db, current="audit", past="audit")

    @property
    def registry(self) -> Registry:
        """The search parameters; loaded (about 3 s) when first needed, so commands that never search or
        write (`emr terminology list`) start at once."""
        if self._registry is None:
            self._registry = load_registry()
        return self._registry

    @cached_property
    def _indexer(self) -> Indexer:
        return indexer(self.registry)

    @cached_property
    def _engine(self) -> SearchEngine:
        return SearchEngine(self.registry, self.resources, self._terminology, self._collection_of,
                            self._search_time_limit)

    @cached_property
    def _audit_engine(self) -> SearchEngine:
        return SearchEngine(self.registry, self.audit_trail.collection, self._terminology, self._collection_of,
                            self._search_time_limit)

    def _collection_of(self, resource_type: str) -> AsyncCollection[Document]:
        return self.audit_trail.collection if resource_type == AUDIT_EVENT else self.resources

    def patients_of(self, resource: dict[str, Any]) -> list[str]:
        """The patients ("Patient/1") whose compartment `resource` is in: whose record it is part of."""
        return patient_references(self.registry, resource)

    def writing(self) -> AbstractAsyncContextManager[None]:
        """Hold the write horizon from now until the block ends: around a multi-write unit (a transaction),
        whose versions all become visible at its commit."""
        return self._horizon.writing()

    async def settled(self, moment: datetime, *, timeout: timedelta) -> bool:
        """Wait until every write stamped before `moment` is visible (an export's transaction time), at most
        `timeout`; False if it timed out."""
        return await self._horizon.passed(moment, timeout=timeout.total_seconds())

    async def close(self) -> None:
        """Stop holding other processes' change feeds back (a stopped server, a finished command), and ship
        the audit journal."""
        self._validation.close()
        await self._horizon.close()
        await self.audit_trail.close()

    async def ensure_indexes(self) -> None:
        """Create the indexes the store relies on; cheap when they already exist."""
        await self.resources.create_indexes(indexes.RESOURCES)
        await self.history_versions.create_indexes(indexes.HISTORY)
        await self.audit_trail.ensure_indexes()

    # ---- search ------------------------------------------------------------------------

    async def search(self, resource_type: str | None, query: Sequence[tuple[str, str]], *, base: str | None = None,
                     strict: bool = False, compartment: tuple[str, str] | None = None,
                     within: Mapping[str, Sequence[str]] | None = None,
                     session: AsyncClientSession | None = None) -> SearchResult:
        """Search as a client asks: `resource_type` None searches the types `_type` names (or all).

        `query` is the request's parameters as sent; `base` is this server's base URL (absolute
        references to it match relative ones); `strict` refuses unknown parameters (Prefer:
        handling=strict); `compartment` = ("Patient", id) limits the search to that compartment;
        `within` narrows it to resources whose index holds one of the values under one of the keys
        (`Interaction.within`: what access control allows a caller to see).
        """
        pairs = list(query)
        types = [resource_type] if resource_type else _named_types(pairs)
        for rtype in types:
            check_type(rtype)
        request = parse_request(self.registry, types, pairs, strict=strict, default_count=self.page_size,
                                max_count=self.max_page_size, local_base=base)
        if AUDIT_EVENT in types:
            if types != [AUDIT_EVENT]:
                raise InvalidSearch("AuditEvent is searched on its own, not with other types")
            await self.audit_trail.flush()  # what this process recorded is searchable at once
            return await self._audit_engine.search(request, compartment=compartment, within=within, session=session)
        return await self._engine.search(request, compartment=compartment, within=within, session=session)

    async def explain(self, resource_type: str, query: Sequence[tuple[str, str]]) -> dict[str, Any]:
        """The database's plan for a search (tests check that the intended index drives it)."""
        request = parse_request(self.registry, [resource_type], list(query), strict=True,
                                default_count=self.page_size, max_count=self.max_page_size)
        return await self._engine.explain(request)

    async def everything(self, patient_id: str, query: Sequence[tuple[str, str]] = (), *,
                         session: AsyncClientSession | None = None) -> SearchResult:
        """Patient/$everything (`_since`, `_type`, `_count`, paging): the patient, their compartment, and
        what it references."""
        pairs = list(query)
        await self.read("Patient", patient_id, session=session)  # 404 / 410 when there is no such patient
        types = [t for t in (params.last(pairs, "_type") or "").split(",") if t] or None
        for rtype in types or []:
            check_type(rtype)
        return await self._engine.everything(
            f"Patient/{patient_id}", types=types, since=params.since(params.last(pairs, "_since")),
            count=params.page_size(params.last(pairs, "_count"), self.page_size, self.max_page_size),
            cursor=params.last(pairs, "_cursor"), session=session)

    async def find(self, resource_type: str, criteria: str, *, limit: int = 2,
                   session: AsyncClientSession | None = None) -> list[Version]:
        """Current, non-deleted resources matching conditional-interaction criteria (a query string)."""
        return await self._find(resource_type, parse_criteria(criteria), limit=limit, session=session)

    async def ids_matching(self, resource_type: str, criteria: str) -> set[str]:
        """The ids of every current resource of a type matching a search query (an export's `_typeFilter`)."""
        check_type(resource_type)
        request = parse_request(self.registry, [resource_type], parse_qsl(criteria, keep_blank_values=True),
                                strict=True, default_count=self.page_size, max_count=self.max_page_size)
        return set(await self._engine.matching_ids(request))

    async def _find(self, resource_type: str, criteria: Criteria, *, limit: int = 2,
                    session: AsyncClientSession | None) -> list[Version]:
        check_type(resource_type)
        request = SearchRequest(types=[resource_type], criteria=list(criteria), strict=True)
        return await self._engine.matching(request, limit=limit, session=session)

    # ---- reads -------------------------------------------------------------------------

    async def read(self, resource_type: str, resource_id: str, *, session: AsyncClientSession | None = None) -> Version:
        """The current version; ResourceGone if the latest version is a deletion."""
        return await self._reader_of(resource_type).read(resource_type, resource_id, session=session)

    async def vread(self, resource_type: str, resource_id: str, version_id: int | str,
                    *, session: AsyncClientSession | None = None) -> Version:
        return await self._reader_of(resource_type).vread(resource_type, resource_id, version_id, session=session)

    def _reader_of(self, resource_type: str) -> VersionReader:
        return self._audit_reader if resource_type == AUDIT_EVENT else self._reader

    def iter_current(self, resource_type: str | None = None) -> AsyncIterator[Version]:
        """Every current, non-deleted resource (used by exports and tests)."""
        return self._reader.iter_current(resource_type)

    # ---- writes ------------------------------------------------------------------------

    async def create(self, resource: Any, *, resource_type: str | None = None, if_none_exist: str | None = None,
                     resource_id: str | None = None, session: AsyncClientSession | None = None,
                     caller: Caller | None = None, base: str | None = None) -> WriteResult:
        """Create with a server-assigned id (any id in the body is ignored, as the spec says).

        `resource_id` lets a caller that had to know the new id beforehand (a
        transaction resolving `urn:uuid:` references) choose it. With
        `if_none_exist`, an existing match is returned instead (created=False);
        concurrent calls with the same criteria create exactly one resource.
        """
        data = await self._valid(resource, resource_type, base)
        ctx = self._context(session, caller)
        if if_none_exist is not None:
            return await self._conditional_create(data, parse_criteria(if_none_exist), ctx, resource_id)
        data["id"] = check_id(resource_id) if resource_id else new_id()
        return await self._insert_first(data, ctx)

    async def prepare_create(self, resource: Any, *, resource_type: str | None, resource_id: str,
                             base: str | None = None) -> dict[str, Any]:
        """Validate a resource for `create_prepared`: the first half of a create, with no database work."""
        data = await self._valid(resource, resource_type, base)
        data["id"] = check_id(resource_id)
        return data

    async def create_prepared(self, prepared: list[dict[str, Any]], *, session: AsyncClientSession | None = None,
                              caller: Caller | None = None) -> list[WriteResult]:
        """Insert many new resources in one round trip (a transaction's plain POST entries)."""
        if not prepared:
            return []
        ctx = self._context(session, caller)
        warnings = [await self._check(d, ctx) for d in prepared]
        async with self._horizon.writing():
            docs = await asyncio.to_thread(
                lambda: [current_document(d["resourceType"], d["id"], 1, d, "create", self._indexer) for d in prepared])
            await self.resources.insert_many(docs, ordered=True, session=session)
        results = [WriteResult(version_from_document(doc), created=True, warnings=w)
                   for doc, w in zip(docs, warnings, strict=True)]
        for result in results:
            await self._observe(result.version, ctx)
        return results

    async def update(self, resource: Any, *, resource_type: str, resource_id: str, if_match: int | None = None,
                     session: AsyncClientSession | None = None, caller: Caller | None = None,
                     base: str | None = None) -> WriteResult:
        """Update, or create with the client's id when it does not exist yet (update-as-create).

        An update that changes nothing but server-owned meta makes no new version.
        """
        check_id(resource_id)

        async def make(current: Version | None) -> dict[str, Any]:
            if current is not None and current.resource is not None and isinstance(resource, dict):
                same = await asyncio.to_thread(nfc_resource, resource)
                if _same_content(same, current.resource):
                    return same  # identical to a version already validated: re-sends stay cheap
            data = await self._valid(resource, resource_type, base)
            if data.get("id") is None:
                raise InvalidResource("An update must carry the resource's id in the body")
            if data["id"] != resource_id:
                raise InvalidRequest(f"The body's id '{data['id']}' does not match the URL's id '{resource_id}'")
            return data

        return await self._write(resource_type, resource_id, make, if_match, self._context(session, caller))

    async def conditional_update(self, resource: Any, *, resource_type: str, criteria: str,
                                 if_match: int | None = None, session: AsyncClientSession | None = None,
                                 caller: Caller | None = None, base: str | None = None) -> WriteResult:
        """Update the one resource matching `criteria`; create when none does; 412 when several do."""
        data = await self._valid(resource, resource_type, base)
        matches = await self.find(resource_type, criteria, session=session)
        if len(matches) > 1:
            raise MultipleMatches(f"The criteria '{criteria}' match more than one {resource_type}")
        if matches:
            target = matches[0].id
            if data.get("id") not in (None, target):
                raise InvalidRequest(f"The body's id '{data['id']}' is not the matching resource's id '{target}'")
        else:
            target = check_id(data["id"]) if data.get("id") else new_id()
        data["id"] = target
        async def same(_current: Version | None) -> dict[str, Any]:
            return data

        return await self._write(resource_type, target, same, if_match, self._context(session, caller))

    async def patch(self, resource_type: str, resource_id: str, operations: Any, *, if_match: int | None = None,
                    session: AsyncClientSession | None = None, caller: Caller | None = None,
                    base: str | None = None) -> WriteResult:
        """Apply a JSON Patch (RFC 6902) to the current version and validate the result."""
        check_type(resource_type)
        check_id(resource_id)
        _not_audit(resource_type)
        try:
            patch = jsonpatch.JsonPatch(operations)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError, KeyError,
                AttributeError) as exc:
            raise InvalidRequest(f"The JSON Patch document is malformed: {_patch_problem(exc)}") from None
        if not isinstance(operations, list):
            raise InvalidRequest("A JSON Patch document must be a JSON array of operations")

        async def patched(current: Version | None) -> dict[str, Any]:
            if current is None:
                raise ResourceNotFound(f"{resource_type}/{resource_id} is not known")
            if current.resource is None:
                raise ResourceGone(f"{resource_type}/{resource_id} was deleted", current.version_id)
            try:
                result = await asyncio.to_thread(lambda: patch.apply(copy.deepcopy(current.resource)))
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError) as exc:
                raise InvalidRequest(f"The JSON Patch cannot be applied: {_patch_problem(exc)}") from None
            if not isinstance(result, dict) or result.get("resourceType") != resource_type \
                    or result.get("id") != resource_id:
                raise InvalidRequest("A patch may not change the resource's type or id")
            return await self._valid(result, resource_type, base)

        return await self._write(resource_type, resource_id, patched, if_match, self._context(session, caller),
                                 must_exist=True)

    async def delete(self, resource_type: str, resource_id: str, *, if_match: int | None = None,
                     session: AsyncClientSession | None = None, caller: Caller | None = None) -> WriteResult | None:
        """Record a deletion as a new version. None when there was nothing to delete."""
        check_type(resource_type)
        _not_audit(resource_type)
        check_id(resource_id)
        ctx = self._context(session, caller)
        for _ in range(_MAX_ATTEMPTS):
            current = await self._reader.current(resource_type, resource_id, session=session)
            if current is None or current.deleted:
                if if_match is not None:
                    raise VersionConflict(f"{resource_type}/{resource_id} has no current version {if_match}")
                return None if current is None else WriteResult(current, created=False, changed=False)
            if if_match is not None and if_match != current.version_id:
                raise VersionConflict(_stale(resource_type, resource_id, if_match, current.version_id))
            result = await self._replace(current, None, "delete", ctx)
            if result is not None:
                return result
        raise TooManyRequests(f"{resource_type}/{resource_id} is being changed by others; try again")

    async def conditional_delete(self, resource_type: str, criteria: str, *, session: AsyncClientSession | None = None,
                                 caller: Caller | None = None) -> WriteResult | None:
        _not_audit(resource_type)
        matches = await self.find(resource_type, criteria, session=session)
        if len(matches) > 1:
            raise MultipleMatches(f"The criteria '{criteria}' match more than one {resource_type}")
        if not matches:
            return None
        return await self.delete(resource_type, matches[0].id, session=session, caller=caller)

    # ---- history -----------------------------------------------------------------------

    async def history(self, resource_type: str | None = None, resource_id: str | None = None,
                      query: Sequence[tuple[str, str]] = (), *,
                      session: AsyncClientSession | None = None) -> HistoryPage:
        """Versions newest first, as a client asks (`_since`, `_count`, and the `_cursor` of a next link)."""
        if resource_type == AUDIT_EVENT:
            raise MethodNotAllowed("AuditEvents have no history: each is written once; search them instead")
        pairs = list(query)
        raw_cursor = params.last(pairs, "_cursor")
        before = HistoryCursor.decode(raw_cursor) if raw_cursor is not None else None
        horizon = None
        if resource_id is None:  # the change feed: only versions no late commit can land before
            horizon = before.horizon if before is not None and before.horizon else await self._horizon.horizon()
        return await self._reader.history(
            resource_type, resource_id, since=params.since(params.last(pairs, "_since")),
            count=params.page_size(params.last(pairs, "_count"), self.page_size, self.max_page_size),
            before=before, horizon=horizon, session=session)

    # ---- internals ---------------------------------------------------------------------

    async def _write(self, resource_type: str, resource_id: str,
                     make: Callable[[Version | None], Awaitable[dict[str, Any]]],
                     if_match: int | None, ctx: WriteContext, must_exist: bool = False) -> WriteResult:
        """Compare-and-swap loop shared by update, conditional update and patch."""
        for _ in range(_MAX_ATTEMPTS):
            current = await self._reader.current(resource_type, resource_id, session=ctx.session)
            if if_match is not None and (current is None or current.version_id != if_match):
                have = current.version_id if current else None
                raise VersionConflict(_stale(resource_type, resource_id, if_match, have))
            data = await make(current)
            if current is None:
                if must_exist:
                    raise ResourceNotFound(f"{resource_type}/{resource_id} is not known")
                try:
                    return await self._insert_first(data, ctx)
                except ResourceExists:
                    continue  # someone created it meanwhile: go round again as an update
            if not current.deleted and _same_content(current.resource, data):
                return WriteResult(current, created=False, changed=False)
            result = await self._replace(current, data, "update", ctx)
            if result is not None:
                return result
            if if_match is not None:
                raise VersionConflict(_stale(resource_type, resource_id, if_match, None))
        raise TooManyRequests(f"{resource_type}/{resource_id} is being changed by others; try again")

    async def _valid(self, resource: Any, resource_type: str | None, base: str | None) -> dict[str, Any]:
        """A valid resource, NFC, its references to this server (`base`, the request's) made relative; the
        work runs off the event loop (`validation_runner.py`)."""
        if isinstance(resource, dict):
            _not_audit(resource_type or resource.get("resourceType"))
        return await self._validation.validate(resource, resource_type, lambda valid: localise(valid, base))

    def _context(self, session: AsyncClientSession | None, caller: Caller | None) -> WriteContext:
        return WriteContext(session, caller, self._reader)

    async def _check(self, data: dict[str, Any], ctx: WriteContext) -> tuple[Issue, ...]:
        warnings: list[Issue] = []
        for check in self._write_checks:
            warnings += await check(data, ctx)
        return tuple(warnings)

    async def _observe(self, version: Version, ctx: WriteContext) -> None:
        for observer in self._observers:
            await observer(version, ctx)

    async def _insert_first(self, data: dict[str, Any], ctx: WriteContext) -> WriteResult:
        warnings = await self._check(data, ctx)
        async with self._horizon.writing():
            doc = await asyncio.to_thread(current_document, data["resourceType"], data["id"], 1, data, "create",
                                          self._indexer)
            try:
                await self.resources.insert_one(doc, session=ctx.session)
            except DuplicateKeyError:
                raise ResourceExists(f"{data['resourceType']}/{data['id']} exists already") from None
        version = version_from_document(doc)
        await self._observe(version, ctx)
        return WriteResult(version, created=True, warnings=warnings)

    async def _replace(self, current: Version, data: dict[str, Any] | None, op: Operation,
                       ctx: WriteContext) -> WriteResult | None:
        """Archive the current version, then swap in the next one; None if another writer won."""
        session = ctx.session
        warnings = await self._check(data, ctx) if data is not None else ()
        # Archived already, by a concurrent writer or an interrupted earlier attempt: fine.
        with contextlib.suppress(DuplicateKeyError):
            await self.history_versions.insert_one(history_document(current), session=session)
        rtype, rid, vid = current.resource_type, current.id, current.version_id
        async with self._horizon.writing():
            doc = await asyncio.to_thread(current_document, rtype, rid, vid + 1, data, op, self._indexer)
            outcome = await self.resources.replace_one({"_id": current_key(rtype, rid), "vid": vid}, doc,
                                                       session=session)
        if outcome.matched_count != 1:
            return None
        version = version_from_document(doc)
        await self._observe(version, ctx)
        return WriteResult(version, created=current.deleted and op != "delete", warnings=warnings)

    async def _conditional_create(self, data: dict[str, Any], criteria: Criteria, ctx: WriteContext,
                                  resource_id: str | None) -> WriteResult:
        rtype = data["resourceType"]
        claim_id = f"{rtype}?{urlencode(criteria)}"
        session = ctx.session
        for attempt in range(200):
            matches = await self._find(rtype, criteria, session=session)
            if len(matches) > 1:
                raise MultipleMatches(f"The If-None-Exist criteria match more than one {rtype}")
            if matches:
                return WriteResult(matches[0], created=False, changed=False)
            moment = now()
            try:
                await self.claims.insert_one({"_id": claim_id, "ts": moment}, session=session)
            except DuplicateKeyError:
                # Another request is creating the same resource; wait for it, or take over a dead lease.
                await self.claims.delete_one({"_id": claim_id, "ts": {"$lt": moment - _CLAIM_LEASE}},
                                             session=session)
                await asyncio.sleep(min(0.002 * (attempt + 1), 0.05))
                continue
            try:
                matches = await self._find(rtype, criteria, session=session)
                if matches:
                    return WriteResult(matches[0], created=False, changed=False)
                data["id"] = resource_id or new_id()
                return await self._insert_first(data, ctx)
            finally:
                await self.claims.delete_one({"_id": claim_id, "ts": moment}, session=session)
        raise TooManyRequests(f"A {rtype} with these criteria is being created by another request; try again")


def _named_types(query: list[tuple[str, str]]) -> list[str]:
    """The types a system-level search covers: those `_type` names, or every type."""
    named = [t for k, v in query if k == "_type" for t in v.split(",") if t]
    known = resource_types()
    for t in named:
        if t not in known:
            raise InvalidRequest(f"_type names an unknown resource type '{t}'")
    return named or list(known)


def _stale(resource_type: str, resource_id: str, wanted: int, have: int | None) -> str:
    now = f"the current version is {have}" if have is not None else "it has changed meanwhile"
    return f"{resource_type}/{resource_id}: If-Match asked for version {wanted} but {now}"
