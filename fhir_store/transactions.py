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

Every entry runs through the pipeline as the interaction it is (`entries.py`),
inside the Bundle's own interaction, so an interceptor that refuses a `DELETE`
refuses it in a batch too (that entry answers 403) and in a transaction (the
whole transaction is refused). Inside a transaction an entry's result is what it
will answer if the transaction commits; `with_transaction` may run the entries
again after a transient conflict, and the Bundle's interaction sees the end.

Conditional creates (`ifNoneExist`) run first among the POSTs, so the id they
resolve to (existing or new) is known before anything that references them is
written. Inside a transaction the store's claim document for the criteria is
written in the transaction too, so two concurrent transactions creating the same
resource conflict on it; MongoDB aborts one, `with_transaction` retries it, and
the retry finds the resource the other created: exactly one is created.
"""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from pymongo.asynchronous.client_session import AsyncClientSession

from fhir_store.bundles import bundle_response_entry, etag, history_bundle, page_links, searchset_bundle
from fhir_store.entries import Entry, parse_entry, patch_document
from fhir_store.errors import EntryFailed, InvalidRequest, Issue, PayloadTooLarge, StoreError, operation_outcome
from fhir_store.ids import check_id, new_id
from fhir_store.instants import format_instant
from fhir_store.model import Version, WriteResult
from fhir_store.pipeline import Interaction, Pipeline
from fhir_store.references import ConditionalReferences, holders
from fhir_store.resource_types import model_class
from fhir_store.store import FhirStore

_BATCH_CONCURRENCY = 8
_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
_REASON = {200: "OK", 201: "Created", 204: "No Content", 304: "Not Modified", 400: "Bad Request",
           403: "Forbidden", 404: "Not Found", 410: "Gone", 412: "Precondition Failed", 413: "Payload Too Large",
           429: "Too Many Requests"}


@dataclass
class Outcome:
    """What one entry did, ready to become `entry.response` (and `entry.resource`)."""

    status: int
    resource: dict[str, Any] | None = None
    version: Version | None = None
    location: bool = False
    issues: list[Issue] | None = None

    @property
    def status_code(self) -> int:
        return self.status


class BundleProcessor:
    def __init__(self, store: FhirStore, pipeline: Pipeline, *, max_entries: int) -> None:
        self.store = store
        self.pipeline = pipeline
        self.max_entries = max_entries

    async def process(self, bundle: Any, interaction: Interaction, *, base: str,
                      return_resources: bool = False) -> dict[str, Any]:
        """Run a batch or transaction Bundle (whose own interaction is `interaction`) and build its response."""
        kind, entries = self._parse(bundle, base)
        if kind == "batch":
            outcomes = await self._batch(entries, interaction, base)
        else:
            outcomes = await self._transaction(entries, interaction, base)
        return {
            "resourceType": "Bundle",
            "type": f"{kind}-response",
            "entry": [self._response_entry(entries[i], outcomes[i], base, return_resources)
                      for i in range(len(entries))],
        }

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
        entries = [parse_entry(i, raw, base) for i, raw in enumerate(raw_entries)]
        if kind == "transaction":
            full_urls = [e.full_url for e in entries if e.full_url]
            if len(full_urls) != len(set(full_urls)):
                raise InvalidRequest("Two entries of the transaction have the same fullUrl")
            targets = [e.url for e in entries if e.method in ("PUT", "PATCH", "DELETE") and "?" not in e.url]
            if len(targets) != len(set(targets)):
                raise InvalidRequest("Two entries of the transaction change the same resource")
        return kind, entries

    # ---- batch -----------------------------------------------------------------------------

    async def _batch(self, entries: list[Entry], bundle: Interaction, base: str) -> dict[int, Outcome]:
        """Batch entries are independent (the spec forbids them to depend on each other), so several run
        at once: a 2,000-entry facility list with a conditional create per entry loads in seconds."""
        gate = asyncio.Semaphore(_BATCH_CONCURRENCY)

        async def one(entry: Entry) -> tuple[int, Outcome]:
            async with gate:
                try:
                    if entry.resource is not None:  # each entry on its own: it sees what others wrote
                        await self._references(None).resolve_all(entry.resource)
                    run = partial(self._execute, entry, base=base, session=None, keys={})
                    return entry.index, await self.pipeline.run(entry.interaction(bundle), run)
                except StoreError as exc:
                    return entry.index, Outcome(exc.status, issues=exc.issues)

        return dict(await asyncio.gather(*(one(e) for e in entries)))

    # ---- transaction -----------------------------------------------------------------------

    async def _transaction(self, entries: list[Entry], bundle: Interaction, base: str) -> dict[int, Outcome]:
        ordered = sorted(entries, key=lambda e: (_ORDER[e.method], e.method != "POST" or e.if_none_exist is None,
                                                 e.index))

        async def run(session: AsyncClientSession) -> dict[int, Outcome]:
            keys = await self._assign_ids(entries, session)
            references = self._references(session)
            outcomes: dict[int, Outcome] = {}
            plain_posts: list[tuple[Entry, dict[str, Any]]] = []  # written together, in one round trip

            async def flush() -> None:
                results = await self.store.create_prepared([data for _, data in plain_posts], session=session,
                                                           caller=bundle.caller)
                for (entry, _), result in zip(plain_posts, results, strict=True):
                    outcomes[entry.index] = _written(result)
                plain_posts.clear()

            async def prepare(entry: Entry, it: Interaction) -> Outcome:
                rtype, _, rid = keys[str(entry.full_url)].partition("/")
                plain_posts.append((entry, await self.store.prepare_create(entry.resource, resource_type=rtype,
                                                                           resource_id=rid, base=base)))
                return Outcome(201)  # what it answers once the batched insert and the transaction succeed

            for entry in ordered:
                try:
                    resource = None
                    if entry.resource is not None:
                        resource = _rewrite(copy.deepcopy(entry.resource), keys)
                        await references.resolve_all(resource)
                    current = replace(entry, resource=resource)
                    if entry.method == "POST" and entry.if_none_exist is None and entry.full_url in keys:
                        await self.pipeline.run(current.interaction(bundle), partial(prepare, current))
                        continue
                    if plain_posts:
                        await flush()
                    execute = partial(self._execute, current, base=base, session=session, keys=keys)
                    outcome = await self.pipeline.run(current.interaction(bundle), execute)
                except StoreError as exc:
                    raise EntryFailed(entry.index, entry.what, exc) from None
                if entry.full_url and outcome.version is not None:
                    keys[entry.full_url] = f"{outcome.version.resource_type}/{outcome.version.id}"
                outcomes[entry.index] = outcome
            if plain_posts:
                await flush()
            return outcomes

        # Held open until the commit: the change feed's horizon stays before everything this stamps.
        async with self.store.writing(), self.store.db.client.start_session() as session:
            result: dict[int, Outcome] = await session.with_transaction(run)
        return result

    def _references(self, session: AsyncClientSession | None) -> ConditionalReferences:
        return ConditionalReferences(partial(self.store.find, session=session))

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
                matches = await self.store.find(path[0], entry.query, session=session)
                if len(matches) == 1:
                    keys[entry.full_url] = f"{path[0]}/{matches[0].id}"
                elif not matches:
                    body_id = (entry.resource or {}).get("id")
                    keys[entry.full_url] = f"{path[0]}/{body_id or new_id()}"
        return keys

    # ---- one entry -------------------------------------------------------------------------

    async def _execute(self, entry: Entry, it: Interaction, *, base: str, session: AsyncClientSession | None,
                       keys: dict[str, str]) -> Outcome:
        path, query, method = entry.path, entry.query, entry.method
        if not path or model_class(path[0]) is None:
            raise InvalidRequest(f"'{entry.url}' does not name a resource type this server knows")
        rtype = path[0]
        store, caller = self.store, it.caller
        if method == "POST" and len(path) == 1:
            wanted = keys.get(entry.full_url or "", "").partition("/")[2] or None
            result = await store.create(entry.resource, resource_type=rtype, if_none_exist=entry.if_none_exist,
                                        resource_id=wanted, session=session, caller=caller, base=base)
            return _written(result)
        if method == "PUT" and len(path) == 2:
            result = await store.update(entry.resource, resource_type=rtype, resource_id=path[1],
                                        if_match=entry.if_match, session=session, caller=caller, base=base)
            return _written(result)
        if method == "PUT" and len(path) == 1 and query:
            resource = dict(entry.resource or {})
            known = keys.get(entry.full_url or "")
            if known and "id" not in resource:
                resource["id"] = known.partition("/")[2]
            result = await store.conditional_update(resource, resource_type=rtype, criteria=query,
                                                    if_match=entry.if_match, session=session, caller=caller,
                                                    base=base)
            return _written(result)
        if method == "PATCH" and len(path) == 2:
            result = await store.patch(rtype, path[1], patch_document(entry.resource), if_match=entry.if_match,
                                       session=session, caller=caller, base=base)
            return _written(result)
        if method == "DELETE" and len(path) == 2:
            deleted = await store.delete(rtype, path[1], if_match=entry.if_match, session=session, caller=caller)
            return Outcome(200 if deleted else 204, version=deleted.version if deleted else None)
        if method == "DELETE" and len(path) == 1 and query:
            deleted = await store.conditional_delete(rtype, query, session=session, caller=caller)
            return Outcome(200 if deleted else 204, version=deleted.version if deleted else None)
        if method in ("GET", "HEAD"):
            return await self._read(entry, it, base, session)
        raise InvalidRequest(f"{method} {entry.url} is not an interaction a Bundle entry can carry")

    async def _read(self, entry: Entry, it: Interaction, base: str, session: AsyncClientSession | None) -> Outcome:
        path, store = entry.path, self.store
        if it.kind == "read":
            version = await store.read(path[0], check_id(path[1]), session=session)
            if entry.not_modified(version):
                return Outcome(304, version=version)
            return Outcome(200, version.resource, version)
        if it.kind == "vread":
            version = await store.vread(path[0], path[1], path[3], session=session)
            return Outcome(200, version.resource, version)
        if it.kind == "history-instance":
            page = await store.history(path[0], path[1], session=session)
            return Outcome(200, history_bundle(base, page.versions, {"self": f"{base}/{entry.url}"}))
        if it.kind == "search-type":
            result = await store.search(path[0], it.query, base=base, within=it.within, session=session)
            links = page_links(f"{base}/{path[0]}", it.query, result.next_cursor, result.previous_cursor)
            return Outcome(200, searchset_bundle(base, result, links))
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


def _written(result: WriteResult) -> Outcome:
    return Outcome(201 if result.created else 200, result.version.resource, result.version, location=True,
                   issues=list(result.warnings) or None)


def _rewrite(resource: dict[str, Any], keys: dict[str, str]) -> dict[str, Any]:
    """References to the Bundle's fullUrls become the `Type/id` their entries are stored under (in place)."""
    for holder in holders(resource):
        holder["reference"] = keys.get(holder["reference"], holder["reference"])
    return resource
