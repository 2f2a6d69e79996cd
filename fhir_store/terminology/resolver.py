"""Canonical URL → the stored CodeSystem, ValueSet or ConceptMap, with every cache the terminology keeps.

Kept in one place because all the caches share one rule: they hold while the catalog's
generation is unchanged, so `sync()` can drop them together when any process writes
terminology. Nothing here syncs by itself: each request calls `sync()` once, first, and
then sees one generation throughout.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from fhir_store.documents import Document
from fhir_store.errors import InvalidRequest, ResourceNotFound
from fhir_store.hooks import WriteContext
from fhir_store.model import Version
from fhir_store.reads import VersionReader
from fhir_store.terminology.catalog import GENERATION, KINDS, Catalog, Entry
from fhir_store.terminology.concepts import CodeSystemIndex
from fhir_store.terminology.expansion import Expander, Item

#: Indexes larger than this are built in a worker thread, so the event loop keeps serving.
_BUILD_IN_THREAD = 2_000


class TerminologyResolver:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.reader = VersionReader(db)  # not the store: the store is built with us plugged into it
        self.catalog = Catalog(db)
        self.expander = Expander(self.code_system, self.value_set)
        self._indexes: dict[str, CodeSystemIndex] = {}
        self._building: dict[str, asyncio.Lock] = {}
        self._resources: dict[str, tuple[int, dict[str, Any]]] = {}
        # Valid while the catalog's generation is `_generation`; `sync()` checks it.
        self._generation = -1
        self._synced_at = float("-inf")
        self._resolved: dict[tuple[str, str], Entry | None] = {}
        self._latest: dict[tuple[str, frozenset[str] | None], list[Entry]] = {}
        self._members: dict[str, dict[tuple[str, str], Item]] = {}

    # ---- the catalog --------------------------------------------------------------------------

    async def observe(self, version: Version, ctx: WriteContext) -> None:
        """A store observer: keep the catalog in step with every write, in the write's session."""
        await self.catalog.observe(version, ctx.session)
        if version.resource_type in KINDS:
            self._synced_at = float("-inf")  # our own write: the next call must look again

    async def rebuild_catalog(self) -> int:
        """Re-derive the catalog from the stored resources (after restoring a database without it)."""
        seen: list[str] = []
        for kind in KINDS:
            async for version in self.reader.iter_current(kind):
                await self.catalog.observe(version, None)
                seen.append(f"{kind}/{version.id}")
        await self.catalog.entries.delete_many({"_id": {"$nin": [*seen, GENERATION]}})  # resources no longer there
        return len(seen)

    async def sync(self, max_age: float = 0.0) -> None:
        """Drop what was cached if any process has written terminology since (one small read).

        `max_age` > 0 skips the read when the last one is that recent (write checks only).
        """
        now = time.monotonic()
        if max_age and now - self._synced_at < max_age:
            return
        self._synced_at = now
        generation = await self.catalog.generation()
        if generation != self._generation:
            self._generation = generation
            self._resolved.clear()
            self._latest.clear()
            self._members.clear()

    # ---- resolving ----------------------------------------------------------------------------

    async def resolve(self, kind: str, canonical: str) -> Entry | None:
        key = (kind, canonical)
        if key not in self._resolved:
            self._resolved[key] = await self.catalog.resolve(kind, canonical)
        return self._resolved[key]

    async def latest_entries(self, kind: str, urls: set[str] | None = None) -> list[Entry]:
        key = (kind, frozenset(urls) if urls is not None else None)
        if key not in self._latest:
            self._latest[key] = await self.catalog.all(kind, urls=urls, latest=True)
        return self._latest[key]

    async def code_system(self, canonical: str) -> CodeSystemIndex | None:
        """The CodeSystem a canonical (`url` or `url|version`) means, indexed; None if not loaded."""
        entry = await self.resolve("CodeSystem", canonical)
        return await self.index(entry) if entry else None

    async def index(self, entry: Entry) -> CodeSystemIndex:
        """The in-memory index of a CodeSystem version, built once per version and process."""
        cached = self._indexes.get(entry.key)
        if cached is not None and cached.vid == entry.vid:
            return cached
        lock = self._building.setdefault(entry.key, asyncio.Lock())
        async with lock:
            cached = self._indexes.get(entry.key)
            if cached is not None and cached.vid == entry.vid:
                return cached
            version = await self.reader.read("CodeSystem", entry.id)
            resource = version.resource or {}
            if entry.count > _BUILD_IN_THREAD:
                built = await asyncio.to_thread(CodeSystemIndex, resource, key=entry.key, vid=version.version_id)
            else:
                built = CodeSystemIndex(resource, key=entry.key, vid=version.version_id)
            self._indexes[entry.key] = built
            return built

    async def value_set(self, canonical: str) -> dict[str, Any] | None:
        entry = await self.resolve("ValueSet", canonical)
        return await self.resource(entry) if entry else None

    async def members_of(self, vs: dict[str, Any]) -> dict[tuple[str, str], Item]:
        """Every code of a value set; cached for stored value sets (by resource key and version)."""
        key = f"{vs.get('id')}/{(vs.get('meta') or {}).get('versionId')}" if vs.get("id") else None
        if key is not None and key in self._members:
            return self._members[key]
        members = await self.expander.expand(vs)
        if key is not None:
            self._members[key] = members
        return members

    async def resource(self, entry: Entry) -> dict[str, Any]:
        cached = self._resources.get(entry.key)
        if cached is not None and cached[0] == entry.vid:
            return cached[1]
        version = await self.reader.read(entry.kind, entry.id)
        resource = version.resource or {}
        self._resources[entry.key] = (version.version_id, resource)
        return resource

    async def target(self, kind: str, *, resource_id: str | None, url: str | None,
                     resource: dict[str, Any] | None = None) -> dict[str, Any]:
        """The ValueSet / ConceptMap an operation runs on: by id (instance level), url, or given inline."""
        if resource is not None:
            return resource
        if resource_id is not None:
            return (await self.reader.read(kind, resource_id)).resource or {}
        if not url:
            raise InvalidRequest(f"Name the {kind}: call it on /{kind}/[id], or give its url")
        entry = await self.resolve(kind, url)
        if entry is None:
            raise ResourceNotFound(f"No {kind} with url {url} is loaded")
        return await self.resource(entry)
