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
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode

import jsonpatch
from pymongo import DESCENDING
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from fhir_store import indexes
from fhir_store.documents import Document, current_document, now, version_from_document
from fhir_store.errors import (
    InvalidRequest,
    InvalidResource,
    Issue,
    MultipleMatches,
    ResourceGone,
    ResourceNotFound,
    TooManyRequests,
    UnknownResourceType,
    VersionConflict,
)
from fhir_store.ids import check_id, current_key, new_id, version_key
from fhir_store.model import HistoryCursor, HistoryPage, Operation, Version, WriteResult
from fhir_store.resource_types import model_class
from fhir_store.search.engine import SearchEngine, SearchRequest, SearchResult
from fhir_store.search.registry import Registry, registry
from fhir_store.validation import nfc_json, validate_resource

Criteria = tuple[tuple[str, str], ...]
#: Runs before a validated resource is written: raises a StoreError to refuse it, returns warnings to keep it.
WriteCheck = Callable[[dict[str, Any]], Awaitable[list[Issue]]]
#: Runs after a version is written, inside the same session (derived data such as the terminology catalog).
WriteObserver = Callable[[Version, AsyncClientSession | None], Awaitable[None]]

# A writer that loses the compare-and-swap this many times in a row gives up (429).
_MAX_ATTEMPTS = 20
# A conditional-create lease older than this is presumed to belong to a dead process.
_CLAIM_LEASE = timedelta(seconds=30)


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


class FhirStore:
    """Create, read, update, patch and delete FHIR resources, with full version history.

    Every method takes an optional `session`, so that a transaction Bundle can
    run several interactions inside one MongoDB transaction.
    """

    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.db = db
        self.resources = db["resources"]
        self.history_versions = db["history"]
        self.claims = db["claims"]
        self.registry: Registry = registry()
        self.search_engine = SearchEngine(self.registry, self.resources)
        #: Checks beyond structural validation (terminology plugs in here); see `WriteCheck`.
        self.write_checks: list[WriteCheck] = []
        #: Keepers of data derived from resources; see `WriteObserver`.
        self.observers: list[WriteObserver] = []

    async def ensure_indexes(self) -> None:
        """Create the indexes the store relies on; cheap when they already exist."""
        await self.resources.create_indexes(indexes.RESOURCES)
        await self.history_versions.create_indexes(indexes.HISTORY)

    async def search(self, request: SearchRequest, *, compartment: tuple[str, str] | None = None,
                     session: AsyncClientSession | None = None) -> SearchResult:
        """Run a search; `compartment` = ("Patient", id) limits it to that patient's compartment."""
        for rtype in request.types:
            _check_type(rtype)
        return await self.search_engine.search(request, compartment=compartment, session=session)

    async def everything(self, patient_id: str, *, types: list[str] | None = None, since: datetime | None = None,
                         count: int = 50, cursor: str | None = None) -> SearchResult:
        """Patient/$everything: the patient, their compartment, and what it references."""
        await self.read("Patient", patient_id)  # 404 / 410 when there is no such patient
        for rtype in types or []:
            _check_type(rtype)
        return await self.search_engine.everything(f"Patient/{patient_id}", types=types, since=since, count=count,
                                                   cursor=cursor)

    # ---- reads -------------------------------------------------------------------------

    async def read(self, resource_type: str, resource_id: str, *, session: AsyncClientSession | None = None) -> Version:
        """The current version; ResourceGone if the latest version is a deletion."""
        _check_type(resource_type)
        check_id(resource_id)
        doc = await self.resources.find_one({"_id": current_key(resource_type, resource_id)}, session=session)
        if doc is None:
            raise ResourceNotFound(f"{resource_type}/{resource_id} is not known")
        version = version_from_document(doc)
        if version.deleted:
            raise ResourceGone(f"{resource_type}/{resource_id} was deleted", version.version_id)
        return version

    async def vread(self, resource_type: str, resource_id: str, version_id: int,
                    *, session: AsyncClientSession | None = None) -> Version:
        _check_type(resource_type)
        check_id(resource_id)
        doc = await self.resources.find_one(
            {"_id": current_key(resource_type, resource_id), "vid": version_id}, session=session)
        if doc is None:
            doc = await self.history_versions.find_one(
                {"_id": version_key(resource_type, resource_id, version_id)}, session=session)
        if doc is None:
            raise ResourceNotFound(f"{resource_type}/{resource_id} has no version {version_id}")
        version = version_from_document(doc)
        if version.deleted:
            raise ResourceGone(f"Version {version_id} of {resource_type}/{resource_id} is a deletion", version_id)
        return version

    async def find(self, resource_type: str, criteria: Criteria, *, limit: int = 2,
                   session: AsyncClientSession | None = None) -> list[Version]:
        """Current, non-deleted resources matching conditional-interaction criteria."""
        _check_type(resource_type)
        request = SearchRequest(types=[resource_type], criteria=list(criteria), strict=True)
        return await self.search_engine.matching(request, limit=limit, session=session)

    # ---- writes ------------------------------------------------------------------------

    async def create(self, resource: Any, *, resource_type: str | None = None, if_none_exist: str | None = None,
                     resource_id: str | None = None, session: AsyncClientSession | None = None) -> WriteResult:
        """Create with a server-assigned id (any id in the body is ignored, as the spec says).

        `resource_id` lets a caller that had to know the new id beforehand (a
        transaction resolving `urn:uuid:` references) choose it. With
        `if_none_exist`, an existing match is returned instead (created=False);
        concurrent calls with the same criteria create exactly one resource.
        """
        data = validate_resource(resource, expected_type=resource_type)
        if if_none_exist is not None:
            return await self._conditional_create(data, parse_criteria(if_none_exist), session, resource_id)
        data["id"] = check_id(resource_id) if resource_id else new_id()
        return await self._insert_first(data, session)

    def prepare_create(self, resource: Any, *, resource_type: str | None, resource_id: str) -> dict[str, Any]:
        """Validate a resource for `create_prepared`: the first half of a create, with no database work."""
        data = validate_resource(resource, expected_type=resource_type)
        data["id"] = check_id(resource_id)
        return data

    async def create_prepared(self, prepared: list[dict[str, Any]],
                              session: AsyncClientSession | None = None) -> list[WriteResult]:
        """Insert many new resources in one round trip (a transaction's plain POST entries)."""
        if not prepared:
            return []
        warnings = [await self._check(d) for d in prepared]
        docs = [current_document(d["resourceType"], d["id"], 1, d, "create") for d in prepared]
        await self.resources.insert_many(docs, ordered=True, session=session)
        results = [WriteResult(version_from_document(doc), created=True, warnings=w)
                   for doc, w in zip(docs, warnings, strict=True)]
        for result in results:
            await self._observe(result.version, session)
        return results

    async def update(self, resource: Any, *, resource_type: str, resource_id: str, if_match: int | None = None,
                     session: AsyncClientSession | None = None) -> WriteResult:
        """Update, or create with the client's id when it does not exist yet (update-as-create).

        An update that changes nothing but server-owned meta makes no new version.
        """
        check_id(resource_id)

        def make(current: Version | None) -> dict[str, Any]:
            if current is not None and current.resource is not None and isinstance(resource, dict):
                same = nfc_json(resource)
                if _content(same) == _content(current.resource):
                    return same  # identical to a version already validated: re-sends stay cheap
            data = validate_resource(resource, expected_type=resource_type)
            if data.get("id") is None:
                raise InvalidResource("An update must carry the resource's id in the body")
            if data["id"] != resource_id:
                raise InvalidRequest(f"The body's id '{data['id']}' does not match the URL's id '{resource_id}'")
            return data

        return await self._write(resource_type, resource_id, make, if_match, session)

    async def conditional_update(self, resource: Any, *, resource_type: str, criteria: str,
                                 if_match: int | None = None,
                                 session: AsyncClientSession | None = None) -> WriteResult:
        """Update the one resource matching `criteria`; create when none does; 412 when several do."""
        data = validate_resource(resource, expected_type=resource_type)
        matches = await self.find(resource_type, parse_criteria(criteria), session=session)
        if len(matches) > 1:
            raise MultipleMatches(f"The criteria '{criteria}' match more than one {resource_type}")
        if matches:
            target = matches[0].id
            if data.get("id") not in (None, target):
                raise InvalidRequest(f"The body's id '{data['id']}' is not the matching resource's id '{target}'")
        else:
            target = check_id(data["id"]) if data.get("id") else new_id()
        data["id"] = target
        return await self._write(resource_type, target, lambda _cur: data, if_match, session)

    async def patch(self, resource_type: str, resource_id: str, operations: Any, *, if_match: int | None = None,
                    session: AsyncClientSession | None = None) -> WriteResult:
        """Apply a JSON Patch (RFC 6902) to the current version and validate the result."""
        _check_type(resource_type)
        check_id(resource_id)
        try:
            patch = jsonpatch.JsonPatch(operations)
        except (jsonpatch.JsonPatchException, TypeError, KeyError, AttributeError) as exc:
            raise InvalidRequest(f"The JSON Patch document is malformed: {exc}") from None
        if not isinstance(operations, list):
            raise InvalidRequest("A JSON Patch document must be a JSON array of operations")

        def patched(current: Version | None) -> dict[str, Any]:
            if current is None:
                raise ResourceNotFound(f"{resource_type}/{resource_id} is not known")
            if current.resource is None:
                raise ResourceGone(f"{resource_type}/{resource_id} was deleted", current.version_id)
            try:
                result = patch.apply(copy.deepcopy(current.resource))
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError) as exc:
                raise InvalidRequest(f"The JSON Patch cannot be applied: {exc}") from None
            if not isinstance(result, dict) or result.get("resourceType") != resource_type \
                    or result.get("id") != resource_id:
                raise InvalidRequest("A patch may not change the resource's type or id")
            return validate_resource(result, expected_type=resource_type)

        return await self._write(resource_type, resource_id, patched, if_match, session, must_exist=True)

    async def delete(self, resource_type: str, resource_id: str, *, if_match: int | None = None,
                     session: AsyncClientSession | None = None) -> WriteResult | None:
        """Record a deletion as a new version. None when there was nothing to delete."""
        _check_type(resource_type)
        check_id(resource_id)
        for _ in range(_MAX_ATTEMPTS):
            doc = await self.resources.find_one({"_id": current_key(resource_type, resource_id)}, session=session)
            if doc is None or doc["deleted"]:
                if if_match is not None:
                    raise VersionConflict(f"{resource_type}/{resource_id} has no current version {if_match}")
                return None if doc is None else WriteResult(version_from_document(doc), created=False, changed=False)
            current = version_from_document(doc)
            if if_match is not None and if_match != current.version_id:
                raise VersionConflict(_stale(resource_type, resource_id, if_match, current.version_id))
            result = await self._replace(current, None, "delete", session)
            if result is not None:
                return result
        raise TooManyRequests(f"{resource_type}/{resource_id} is being changed by others; try again")

    async def conditional_delete(self, resource_type: str, criteria: str,
                                 *, session: AsyncClientSession | None = None) -> WriteResult | None:
        matches = await self.find(resource_type, parse_criteria(criteria), session=session)
        if len(matches) > 1:
            raise MultipleMatches(f"The criteria '{criteria}' match more than one {resource_type}")
        if not matches:
            return None
        return await self.delete(resource_type, matches[0].id, session=session)

    # ---- history -----------------------------------------------------------------------

    async def history(self, *, resource_type: str | None = None, resource_id: str | None = None,
                      since: datetime | None = None, count: int = 50, before: HistoryCursor | None = None,
                      session: AsyncClientSession | None = None) -> HistoryPage:
        """Versions newest first, `count` at a time, resumable from `before`.

        Merges the current and past-version collections by (lastUpdated, order),
        which is also the keyset, so paging never skips or repeats a version
        while new ones are being written.
        """
        query: Document = {}
        if resource_type is not None:
            _check_type(resource_type)
            query["type"] = resource_type
        if resource_id is not None:
            check_id(resource_id)
            query["id"] = resource_id
            if await self.resources.count_documents(
                    {"_id": current_key(str(resource_type), resource_id)}, limit=1, session=session) == 0:
                raise ResourceNotFound(f"{resource_type}/{resource_id} is not known")
        if since is not None:
            query["ts"] = {"$gte": since}
        if before is not None:
            query["$or"] = [{"ts": {"$lt": before.last_updated}},
                            {"ts": before.last_updated, "oid": {"$lt": before.order}}]
        order = [("ts", DESCENDING), ("oid", DESCENDING)]
        projection = {"ix": False}
        current = self.resources.find(query, projection, session=session).sort(order).limit(count + 1)
        past = self.history_versions.find(query, projection, session=session).sort(order).limit(count + 1)
        merged: dict[tuple[str, str, int], Version] = {}
        for doc in [d async for d in current] + [d async for d in past]:
            version = version_from_document(doc)
            merged.setdefault(version.key, version)
        versions = sorted(merged.values(), key=lambda v: (v.last_updated, v.order), reverse=True)
        page = versions[:count]
        more = len(versions) > count
        next_cursor = HistoryCursor(page[-1].last_updated, page[-1].order) if more and page else None
        return HistoryPage(page, next_cursor)

    async def iter_current(self, resource_type: str | None = None) -> AsyncIterator[Version]:
        """Every current, non-deleted resource (used by exports and tests)."""
        query: Document = {"deleted": False}
        if resource_type:
            query["type"] = resource_type
        async for doc in self.resources.find(query, {"ix": False}):
            yield version_from_document(doc)

    # ---- internals ---------------------------------------------------------------------

    async def _write(self, resource_type: str, resource_id: str, make: Any, if_match: int | None,
                     session: AsyncClientSession | None, must_exist: bool = False) -> WriteResult:
        """Compare-and-swap loop shared by update, conditional update and patch."""
        key = current_key(resource_type, resource_id)
        for _ in range(_MAX_ATTEMPTS):
            doc = await self.resources.find_one({"_id": key}, session=session)
            current = version_from_document(doc) if doc is not None else None
            if if_match is not None and (current is None or current.version_id != if_match):
                have = current.version_id if current else None
                raise VersionConflict(_stale(resource_type, resource_id, if_match, have))
            data = make(current)
            if current is None:
                if must_exist:
                    raise ResourceNotFound(f"{resource_type}/{resource_id} is not known")
                try:
                    return await self._insert_first(data, session)
                except DuplicateKeyError:
                    continue  # someone created it meanwhile: go round again as an update
            if not current.deleted and _content(current.resource) == _content(data):
                return WriteResult(current, created=False, changed=False)
            result = await self._replace(current, data, "update", session)
            if result is not None:
                return result
            if if_match is not None:
                raise VersionConflict(_stale(resource_type, resource_id, if_match, None))
        raise TooManyRequests(f"{resource_type}/{resource_id} is being changed by others; try again")

    async def _check(self, data: dict[str, Any]) -> tuple[Issue, ...]:
        warnings: list[Issue] = []
        for check in self.write_checks:
            warnings += await check(data)
        return tuple(warnings)

    async def _observe(self, version: Version, session: AsyncClientSession | None) -> None:
        for observer in self.observers:
            await observer(version, session)

    async def _insert_first(self, data: dict[str, Any], session: AsyncClientSession | None) -> WriteResult:
        warnings = await self._check(data)
        doc = current_document(data["resourceType"], data["id"], 1, data, "create")
        await self.resources.insert_one(doc, session=session)
        version = version_from_document(doc)
        await self._observe(version, session)
        return WriteResult(version, created=True, warnings=warnings)

    async def _replace(self, current: Version, data: dict[str, Any] | None, op: Operation,
                       session: AsyncClientSession | None) -> WriteResult | None:
        """Archive the current version, then swap in the next one; None if another writer won."""
        rtype, rid, vid = current.resource_type, current.id, current.version_id
        warnings = await self._check(data) if data is not None else ()
        archived = {"_id": version_key(rtype, rid, vid), "type": rtype, "id": rid, "vid": vid,
                    "ts": current.last_updated, "oid": current.order, "op": current.operation,
                    "deleted": current.deleted, "res": current.resource}
        # Archived already, by a concurrent writer or an interrupted earlier attempt: fine.
        with contextlib.suppress(DuplicateKeyError):
            await self.history_versions.insert_one(archived, session=session)
        doc = current_document(rtype, rid, vid + 1, data, op)
        outcome = await self.resources.replace_one({"_id": current_key(rtype, rid), "vid": vid}, doc, session=session)
        if outcome.matched_count != 1:
            return None
        version = version_from_document(doc)
        await self._observe(version, session)
        return WriteResult(version, created=current.deleted and op != "delete", warnings=warnings)

    async def _conditional_create(self, data: dict[str, Any], criteria: Criteria,
                                  session: AsyncClientSession | None, resource_id: str | None) -> WriteResult:
        rtype = data["resourceType"]
        claim_id = f"{rtype}?{urlencode(criteria)}"
        for attempt in range(200):
            matches = await self.find(rtype, criteria, session=session)
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
                matches = await self.find(rtype, criteria, session=session)
                if matches:
                    return WriteResult(matches[0], created=False, changed=False)
                data["id"] = resource_id or new_id()
                return await self._insert_first(data, session)
            finally:
                await self.claims.delete_one({"_id": claim_id, "ts": moment}, session=session)
        raise TooManyRequests(f"A {rtype} with these criteria is being created by another request; try again")


def _check_type(resource_type: str) -> None:
    if model_class(resource_type) is None:
        raise UnknownResourceType(f"Unknown resource type '{resource_type}'")


def _stale(resource_type: str, resource_id: str, wanted: int, have: int | None) -> str:
    now = f"the current version is {have}" if have is not None else "it has changed meanwhile"
    return f"{resource_type}/{resource_id}: If-Match asked for version {wanted} but {now}"
