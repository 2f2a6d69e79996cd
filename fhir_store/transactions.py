"""Batch and transaction Bundles (FHIR R4 http.html#transaction).

A transaction runs every entry inside one MongoDB multi-document transaction
(which needs a replica set; the embedded server is one): if any entry fails,
nothing of the Bundle is kept and the answer names the failing entry. Entries
run in the spec's order — DELETE, POST, PUT/PATCH, then GET/HEAD — after every
`urn:uuid:`/`urn:oid:` fullUrl has been given its `Type/id`, and every
reference to it, anywhere in the Bundle's resources, rewritten. Conditional
references (`Patient?identifier=...`) are resolved by search and must match
exactly one resource.

A batch runs each entry on its own; one entry's failure is reported in its
`response.outcome` and does not stop the others.

Conditional creates (`ifNoneExist`) run first among the POSTs, so the id they
resolve to (existing or new) is known before anything that references them is
written. Inside a transaction the store's claim document for the criteria is
written in the transaction too, so two concurrent transactions creating the same
resource conflict on it; MongoDB aborts one, `with_transaction` retries it, and
the retry finds the resource the other created: exactly one is created.
"""

from __future__ import annotations

import asyncio
import base64
import copy
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import orjson
from pymongo.asynchronous.client_session import AsyncClientSession

from fhir_store.bundles import bundle_response_entry, etag, history_bundle, searchset_bundle
from fhir_store.documents import format_instant
from fhir_store.errors import (
    EntryFailed,
    InvalidRequest,
    Issue,
    MultipleMatches,
    PayloadTooLarge,
    ResourceNotFound,
    StoreError,
    operation_outcome,
)
from fhir_store.ids import check_id, new_id
from fhir_store.model import Version, WriteResult
from fhir_store.resource_types import model_class
from fhir_store.search.engine import parse_request
from fhir_store.store import FhirStore, parse_criteria

_BATCH_CONCURRENCY = 8
_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
_REASON = {200: "OK", 201: "Created", 204: "No Content", 304: "Not Modified", 400: "Bad Request",
           404: "Not Found", 410: "Gone", 412: "Precondition Failed", 413: "Payload Too Large",
           429: "Too Many Requests"}


@dataclass
class Entry:
    index: int
    method: str
    url: str
    full_url: str | None
    resource: dict[str, Any] | None
    if_none_exist: str | None
    if_match: int | None
    if_none_match: str | None = None
    if_modified_since: str | None = None

    @property
    def path(self) -> list[str]:
        return [p for p in self.url.split("?", 1)[0].split("/") if p]

    @property
    def query(self) -> str:
        return self.url.split("?", 1)[1] if "?" in self.url else ""

    @property
    def what(self) -> str:
        return f"{self.method} {self.url}"


@dataclass
class Outcome:
    """What one entry did, ready to become `entry.response` (and `entry.resource`)."""

    status: int
    resource: dict[str, Any] | None = None
    version: Version | None = None
    location: bool = False
    issues: list[Issue] | None = None


class BundleProcessor:
    def __init__(self, store: FhirStore, *, max_entries: int, page_size: int, max_page_size: int) -> None:
        self.store = store
        self.max_entries = max_entries
        self.page_size = page_size
        self.max_page_size = max_page_size

    async def process(self, bundle: Any, *, base: str, return_resources: bool = False) -> dict[str, Any]:
        """Run a batch or transaction Bundle and build its response Bundle."""
        kind, entries = self._parse(bundle, base)
        if kind == "batch":
            outcomes = await self._batch(entries, base)
        else:
            outcomes = await self._transaction(entries, base)
        response_type = f"{kind}-response"
        return {
            "resourceType": "Bundle",
            "type": response_type,
            "entry": [self._response_entry(entries[i], outcomes[i], base, return_resources)
                      for i in range(len(entries))],
        }

    # ---- parsing ---------------------------------------------------------------------------

    def _parse(self, bundle: Any, base: str) -> tuple[str, list[Entry]]:
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise InvalidRequest("POST to the base takes a Bundle of type batch or transaction")
        kind = bundle.get("type")
        if kind not in ("batch", "transaction"):
            raise InvalidRequest(f"Bundle.type must be batch or transaction, not '{kind}'")
        raw_entries = bundle.get("entry") or []
        if not isinstance(raw_entries, list):
            raise InvalidRequest("Bundle.entry must be a list")
        if len(raw_entries) > self.max_entries:
            raise PayloadTooLarge(f"The Bundle has {len(raw_entries)} entries; this server takes at most "
                                  f"{self.max_entries} per Bundle (EMR_MAX_BUNDLE_ENTRIES)")
        entries = [self._entry(i, raw, base) for i, raw in enumerate(raw_entries)]
        if kind == "transaction":
            full_urls = [e.full_url for e in entries if e.full_url]
            if len(full_urls) != len(set(full_urls)):
                raise InvalidRequest("Two entries of the transaction have the same fullUrl")
            targets = [e.url for e in entries if e.method in ("PUT", "PATCH", "DELETE") and "?" not in e.url]
            if len(targets) != len(set(targets)):
                raise InvalidRequest("Two entries of the transaction change the same resource")
        return kind, entries

    @staticmethod
    def _entry(index: int, raw: Any, base: str) -> Entry:
        where = f"Bundle.entry[{index}]"
        if not isinstance(raw, dict) or not isinstance(raw.get("request"), dict):
            raise InvalidRequest(f"{where} has no request")
        request = raw["request"]
        method = str(request.get("method", "")).upper()
        url = request.get("url")
        if method not in _ORDER or not isinstance(url, str) or not url:
            raise InvalidRequest(f"{where}.request needs a method (GET, HEAD, POST, PUT, PATCH, DELETE) and a url")
        if url.startswith(base.rstrip("/") + "/"):
            url = url[len(base.rstrip("/")) + 1:]
        resource = raw.get("resource")
        if method in ("POST", "PUT", "PATCH") and not isinstance(resource, dict):
            raise InvalidRequest(f"{where} ({method} {url}) has no resource")
        if_match = request.get("ifMatch")
        version = None
        if if_match is not None:
            digits = str(if_match).removeprefix("W/").strip('"')
            if not digits.isdigit():
                raise InvalidRequest(f"{where}.request.ifMatch must name a version, like W/\"3\"")
            version = int(digits)
        return Entry(index, method, url.lstrip("/"), raw.get("fullUrl"), copy.deepcopy(resource),
                     request.get("ifNoneExist"), version, request.get("ifNoneMatch"), request.get("ifModifiedSince"))

    # ---- batch -----------------------------------------------------------------------------

    async def _batch(self, entries: list[Entry], base: str) -> dict[int, Outcome]:
        """Batch entries are independent (the spec forbids them to depend on each other), so several run
        at once: a 2,000-entry facility list with a conditional create per entry loads in seconds."""
        gate = asyncio.Semaphore(_BATCH_CONCURRENCY)

        async def one(entry: Entry) -> tuple[int, Outcome]:
            async with gate:
                return entry.index, await self._batch_entry(entry, base)

        return dict(await asyncio.gather(*(one(e) for e in entries)))

    async def _batch_entry(self, entry: Entry, base: str) -> Outcome:
        try:
            if entry.resource is not None:
                entry.resource = await self._resolve_conditional_references(entry.resource, None, {})
            return await self._execute(entry, base, None, {})
        except StoreError as exc:
            return Outcome(exc.status, issues=exc.issues)

    # ---- transaction -----------------------------------------------------------------------

    async def _transaction(self, entries: list[Entry], base: str) -> dict[int, Outcome]:
        ordered = sorted(entries, key=lambda e: (_ORDER[e.method], e.method != "POST" or e.if_none_exist is None,
                                                 e.index))

        async def run(session: AsyncClientSession) -> dict[int, Outcome]:
            keys = await self._assign_ids(entries, session)
            conditional_refs: dict[str, str] = {}
            outcomes: dict[int, Outcome] = {}
            plain_posts: list[tuple[Entry, dict[str, Any]]] = []  # written together, in one round trip

            async def flush() -> None:
                results = await self.store.create_prepared([data for _, data in plain_posts], session)
                for (entry, _), result in zip(plain_posts, results, strict=True):
                    outcomes[entry.index] = _written(result)
                plain_posts.clear()

            for entry in ordered:
                try:
                    rewritten = None
                    if entry.resource is not None:
                        rewritten = await self._resolve_conditional_references(_rewrite(entry.resource, keys),
                                                                               session, conditional_refs)
                    if entry.method == "POST" and entry.if_none_exist is None and entry.full_url in keys:
                        wanted = keys[str(entry.full_url)]
                        rtype, _, rid = wanted.partition("/")
                        plain_posts.append((entry, self.store.prepare_create(rewritten, resource_type=rtype,
                                                                             resource_id=rid)))
                        continue
                    if plain_posts:
                        await flush()
                    outcome = await self._execute(Entry(entry.index, entry.method, entry.url, entry.full_url,
                                                        rewritten, entry.if_none_exist, entry.if_match),
                                                  base, session, keys)
                except StoreError as exc:
                    raise EntryFailed(entry.index, entry.what, exc) from None
                if entry.full_url and outcome.version is not None:
                    keys[entry.full_url] = f"{outcome.version.resource_type}/{outcome.version.id}"
                outcomes[entry.index] = outcome
            if plain_posts:
                await flush()
            return outcomes

        async with self.store.db.client.start_session() as session:
            result: dict[int, Outcome] = await session.with_transaction(run)
        return result

    async def _assign_ids(self, entries: list[Entry], session: AsyncClientSession) -> dict[str, str]:
        """`Type/id` for each fullUrl whose target is known before anything is written."""
        keys: dict[str, str] = {}
        for entry in entries:
            if not entry.full_url:
                continue
            path = entry.path
            if entry.method == "POST" and entry.if_none_exist is None and len(path) == 1:
                keys[entry.full_url] = f"{path[0]}/{new_id()}"
            elif entry.method in ("PUT", "PATCH", "DELETE") and len(path) == 2:
                keys[entry.full_url] = f"{path[0]}/{path[1]}"
            elif entry.method == "PUT" and len(path) == 1 and entry.query:
                matches = await self.store.find(path[0], parse_criteria(entry.query), session=session)
                if len(matches) == 1:
                    keys[entry.full_url] = f"{path[0]}/{matches[0].id}"
                elif not matches:
                    body_id = (entry.resource or {}).get("id")
                    keys[entry.full_url] = f"{path[0]}/{body_id or new_id()}"
        return keys

    async def _resolve_conditional_references(self, resource: dict[str, Any], session: AsyncClientSession | None,
                                              found: dict[str, str]) -> dict[str, Any]:
        """Replace `Type?criteria` references by `Type/id`; `found` caches answers for the whole Bundle
        (a Synthea record names the same practitioner in hundreds of entries)."""
        if not _has_conditional_reference(resource):
            return resource

        async def resolve(ref: str) -> str:
            if ref not in found:
                rtype, _, query = ref.partition("?")
                matches = await self.store.find(rtype, parse_criteria(query), session=session)
                if len(matches) != 1:
                    error = MultipleMatches if matches else ResourceNotFound
                    raise error(f"The conditional reference '{ref}' matches {len(matches) or 'no'} resources; "
                                "it must match exactly one")
                found[ref] = f"{rtype}/{matches[0].id}"
            return found[ref]

        async def walk(value: Any) -> Any:
            if isinstance(value, dict):
                out = {}
                for k, v in value.items():
                    if k == "reference" and isinstance(v, str) and "?" in v and model_class(v.split("?")[0]):
                        out[k] = await resolve(v)
                    else:
                        out[k] = await walk(v)
                return out
            if isinstance(value, list):
                return [await walk(v) for v in value]
            return value

        result: dict[str, Any] = await walk(resource)
        return result

    # ---- one entry -------------------------------------------------------------------------

    async def _execute(self, entry: Entry, base: str, session: AsyncClientSession | None,
                       keys: dict[str, str]) -> Outcome:
        path, query, method = entry.path, entry.query, entry.method
        if not path or model_class(path[0]) is None:
            raise InvalidRequest(f"'{entry.url}' does not name a resource type this server knows")
        rtype = path[0]
        store = self.store
        if method == "POST" and len(path) == 1:
            wanted = keys.get(entry.full_url or "", "").partition("/")[2] or None
            result = await store.create(entry.resource, resource_type=rtype, if_none_exist=entry.if_none_exist,
                                        resource_id=wanted, session=session)
            return _written(result)
        if method == "PUT" and len(path) == 2:
            result = await store.update(entry.resource, resource_type=rtype, resource_id=path[1],
                                        if_match=entry.if_match, session=session)
            return _written(result)
        if method == "PUT" and len(path) == 1 and query:
            resource = dict(entry.resource or {})
            known = keys.get(entry.full_url or "")
            if known and "id" not in resource:
                resource["id"] = known.partition("/")[2]
            result = await store.conditional_update(resource, resource_type=rtype, criteria=query,
                                                    if_match=entry.if_match, session=session)
            return _written(result)
        if method == "PATCH" and len(path) == 2:
            result = await store.patch(rtype, path[1], _patch_document(entry.resource), if_match=entry.if_match,
                                       session=session)
            return _written(result)
        if method == "DELETE" and len(path) == 2:
            deleted = await store.delete(rtype, path[1], if_match=entry.if_match, session=session)
            return Outcome(200 if deleted else 204, version=deleted.version if deleted else None)
        if method == "DELETE" and len(path) == 1 and query:
            deleted = await store.conditional_delete(rtype, query, session=session)
            return Outcome(200 if deleted else 204, version=deleted.version if deleted else None)
        if method in ("GET", "HEAD"):
            return await self._read(entry, base, session)
        raise InvalidRequest(f"{method} {entry.url} is not an interaction a Bundle entry can carry")

    async def _read(self, entry: Entry, base: str, session: AsyncClientSession | None) -> Outcome:
        path, store = entry.path, self.store
        if len(path) == 2:
            version = await store.read(path[0], check_id(path[1]), session=session)
            if _not_modified(entry, version):
                return Outcome(304, version=version)
            return Outcome(200, version.resource, version)
        if len(path) == 4 and path[2] == "_history" and path[3].isdigit():
            version = await store.vread(path[0], path[1], int(path[3]), session=session)
            return Outcome(200, version.resource, version)
        if len(path) == 3 and path[2] == "_history":
            page = await store.history(resource_type=path[0], resource_id=path[1], session=session)
            return Outcome(200, history_bundle(base, page.versions, {"self": f"{base}/{entry.url}"}))
        if len(path) == 1:
            request = parse_request(store.registry, [path[0]], parse_qsl(entry.query, keep_blank_values=True),
                                    strict=False, default_count=self.page_size, max_count=self.max_page_size)
            request.local_base = base
            result = await store.search(request, session=session)
            bundle = searchset_bundle(base, result, {"self": f"{base}/{entry.url}"}, summary=request.summary,
                                      elements=request.elements)
            return Outcome(200, bundle)
        raise InvalidRequest(f"GET {entry.url} is not a read, vread, history or search this server answers")

    @staticmethod
    def _response_entry(entry: Entry, outcome: Outcome, base: str, return_resources: bool) -> dict[str, Any]:
        response: dict[str, Any] = {"status": f"{outcome.status} {_REASON.get(outcome.status, '')}".strip()}
        version = outcome.version
        if version is not None:
            if outcome.location:
                response["location"] = f"{version.resource_type}/{version.id}/_history/{version.version_id}"
            response["etag"] = etag(version.version_id)
            response["lastModified"] = format_instant(version.last_updated)
        if outcome.issues:
            response["outcome"] = operation_outcome(outcome.issues)
        resource = outcome.resource
        if entry.method in ("POST", "PUT", "PATCH") and not return_resources:
            resource = None
        return bundle_response_entry(base, version, resource, response)


def _not_modified(entry: Entry, version: Version) -> bool:
    """A read entry's ifNoneMatch / ifModifiedSince, as the same headers on a plain read."""
    if entry.if_none_match:
        tags = {t.strip() for t in entry.if_none_match.split(",")}
        return bool(tags & {etag(version.version_id), f'"{version.version_id}"', "*"})
    if entry.if_modified_since:
        try:
            since = datetime.fromisoformat(entry.if_modified_since.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidRequest(f"ifModifiedSince must be an instant, not '{entry.if_modified_since}'") from None
        since = since if since.tzinfo else since.replace(tzinfo=UTC)
        return version.last_updated <= since
    return False


def _written(result: WriteResult) -> Outcome:
    return Outcome(201 if result.created else 200, result.version.resource, result.version, location=True,
                   issues=list(result.warnings) or None)


def _rewrite(value: Any, keys: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: (keys.get(v, v) if k == "reference" and isinstance(v, str) else _rewrite(v, keys))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite(v, keys) for v in value]
    return value


def _has_conditional_reference(value: Any) -> bool:
    if isinstance(value, dict):
        ref = value.get("reference")
        if isinstance(ref, str) and "?" in ref:
            return True
        return any(_has_conditional_reference(v) for v in value.values() if isinstance(v, dict | list))
    if isinstance(value, list):
        return any(_has_conditional_reference(v) for v in value)
    return False


def _patch_document(resource: dict[str, Any] | None) -> Any:
    """A PATCH entry carries its JSON Patch as a Binary resource (contentType application/json-patch+json)."""
    if not resource or resource.get("resourceType") != "Binary" or \
            resource.get("contentType") != "application/json-patch+json":
        raise InvalidRequest("A PATCH entry's resource must be a Binary with contentType application/json-patch+json")
    try:
        return orjson.loads(base64.b64decode(resource.get("data", "")))
    except (ValueError, orjson.JSONDecodeError):
        raise InvalidRequest("The PATCH entry's Binary.data is not base64-encoded JSON") from None
