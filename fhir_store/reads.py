"""Reading stored versions: the current one, one by number, every current one of a type, and history.

Both the store and the terminology service read through this, so the
terminology service needs no store (which it plugs into) to read code systems.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

from pymongo import DESCENDING
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from fhir_store.documents import WITHOUT_INDEX, Document, version_from_document
from fhir_store.errors import ResourceGone, ResourceNotFound, UnknownResourceType
from fhir_store.ids import check_id, current_key, version_key
from fhir_store.model import HistoryCursor, HistoryPage, Version
from fhir_store.resource_types import model_class


class VersionReader:
    def __init__(self, db: AsyncDatabase[Document], *, current: str = "resources", past: str = "history") -> None:
        self.resources = db[current]
        self.past = db[past]

    async def read(self, resource_type: str, resource_id: str, *,
                   session: AsyncClientSession | None = None) -> Version:
        """The current version; ResourceGone if the latest version is a deletion."""
        check_type(resource_type)
        check_id(resource_id)
        doc = await self.resources.find_one({"_id": current_key(resource_type, resource_id)}, session=session)
        if doc is None:
            raise ResourceNotFound(f"{resource_type}/{resource_id} is not known")
        version = version_from_document(doc)
        if version.deleted:
            raise ResourceGone(f"{resource_type}/{resource_id} was deleted", version.version_id)
        return version

    async def current(self, resource_type: str, resource_id: str, *,
                      session: AsyncClientSession | None = None) -> Version | None:
        """The current version, a deletion included; None when the resource never existed."""
        doc = await self.resources.find_one({"_id": current_key(resource_type, resource_id)}, session=session)
        return version_from_document(doc) if doc is not None else None

    async def vread(self, resource_type: str, resource_id: str, version_id: int | str,
                    *, session: AsyncClientSession | None = None) -> Version:
        """One version; `version_id` as a client wrote it ("3") or as a number."""
        check_type(resource_type)
        check_id(resource_id)
        if isinstance(version_id, str):
            if not (version_id.isascii() and version_id.isdigit()) or len(version_id) > 18:  # no version is higher
                raise ResourceNotFound(f"Version '{version_id}' does not exist: version ids are whole numbers")
            version_id = int(version_id)
        doc = await self.resources.find_one(
            {"_id": current_key(resource_type, resource_id), "vid": version_id}, session=session)
        if doc is None:
            doc = await self.past.find_one(
                {"_id": version_key(resource_type, resource_id, version_id)}, session=session)
        if doc is None:
            raise ResourceNotFound(f"{resource_type}/{resource_id} has no version {version_id}")
        version = version_from_document(doc)
        if version.deleted:
            raise ResourceGone(f"Version {version_id} of {resource_type}/{resource_id} is a deletion", version_id)
        return version

    async def iter_current(self, resource_type: str | None = None) -> AsyncIterator[Version]:
        """Every current, non-deleted resource (of one type)."""
        query: Document = {"deleted": False}
        if resource_type:
            query["type"] = resource_type
        async for doc in self.resources.find(query, WITHOUT_INDEX):
            yield version_from_document(doc)


    async def history(self, resource_type: str | None, resource_id: str | None, *, since: datetime | None,
                      count: int, before: HistoryCursor | None, horizon: datetime | None = None,
                      session: AsyncClientSession | None = None) -> HistoryPage:
        """Versions newest first, `count` at a time, resumable from `before`; only those older than `horizon`.

        Merges the current and past-version collections by (lastUpdated, order),
        which is also the keyset, so paging never skips or repeats a version
        while new ones are being written.
        """
        query: Document = {}
        if horizon is not None:
            query["ts"] = {"$lt": horizon}
        if resource_type is not None:
            check_type(resource_type)
            query["type"] = resource_type
        if resource_id is not None:
            check_id(resource_id)
            query["id"] = resource_id
            if await self.resources.count_documents(
                    {"_id": current_key(str(resource_type), resource_id)}, limit=1, session=session) == 0:
                raise ResourceNotFound(f"{resource_type}/{resource_id} is not known")
        if since is not None:
            query["ts"] = {**query.get("ts", {}), "$gte": since}
        if before is not None:
            query["$or"] = [{"ts": {"$lt": before.last_updated}},
                            {"ts": before.last_updated, "oid": {"$lt": before.order}}]
        order = [("ts", DESCENDING), ("oid", DESCENDING)]
        current = self.resources.find(query, WITHOUT_INDEX, session=session).sort(order).limit(count + 1)
        past = self.past.find(query, WITHOUT_INDEX, session=session).sort(order).limit(count + 1)
        merged: dict[tuple[str, str, int], Version] = {}
        for doc in [d async for d in current] + [d async for d in past]:
            version = version_from_document(doc)
            merged.setdefault(version.key, version)
        versions = sorted(merged.values(), key=lambda v: (v.last_updated, v.order), reverse=True)
        page = versions[:count]
        more = len(versions) > count
        next_cursor = HistoryCursor(page[-1].last_updated, page[-1].order, horizon) if more and page else None
        return HistoryPage(page, next_cursor, horizon)


def check_type(resource_type: str) -> None:
    if model_class(resource_type) is None:
        raise UnknownResourceType(f"Unknown resource type '{resource_type}'")
