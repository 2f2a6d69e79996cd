"""The terminology catalog: one small document per CodeSystem, ValueSet and ConceptMap version kept.

A Ministry ICD-10 CodeSystem is a multi-megabyte resource; reading it to learn
its url and version would cost tens of milliseconds on every `$lookup`. The
catalog (collection `terminology`) holds just what resolving a canonical URL
needs (url, version, date, the resource's key and version id), kept in step by
a store observer inside the same session as the write, so it is never staler
than the resources it describes. `emr terminology reindex` rebuilds it from
`resources` should it ever be lost (e.g. a restore without it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from fhir_store.model import Version

KINDS = ("CodeSystem", "ValueSet", "ConceptMap")
#: The catalog's change counter, bumped by every terminology write: processes compare it to know
#: whether what they cached (resolved urls, expansions) still holds.
GENERATION = "_generation"

INDEXES = [
    IndexModel([("kind", ASCENDING), ("url", ASCENDING), ("date", DESCENDING), ("ts", DESCENDING)], name="kind_url"),
]


@dataclass(frozen=True)
class Entry:
    """What the catalog knows of one terminology resource (its current version)."""

    kind: str
    id: str
    url: str
    version: str | None
    vid: int
    date: str
    status: str
    title: str
    content: str | None  # CodeSystem.content
    count: int  # concepts (CodeSystem), included codes listed (ValueSet), element maps (ConceptMap)
    ts: datetime

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.id}"

    @property
    def canonical(self) -> str:
        return f"{self.url}|{self.version}" if self.version else self.url


def split_canonical(canonical: str) -> tuple[str, str | None]:
    """`url|version` → (url, version); a bare url has no version."""
    url, bar, version = canonical.partition("|")
    return url, (version or None) if bar else None


def _count(resource: dict[str, Any]) -> int:
    kind = resource["resourceType"]
    if kind == "CodeSystem":
        def walk(concepts: list[dict[str, Any]]) -> int:
            return sum(1 + walk(c.get("concept", [])) for c in concepts)
        return int(resource.get("count") or walk(resource.get("concept", [])))
    if kind == "ValueSet":
        return sum(len(inc.get("concept", [])) for inc in resource.get("compose", {}).get("include", []))
    return sum(len(g.get("element", [])) for g in resource.get("group", []))


class Catalog:
    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        self.entries: AsyncCollection[dict[str, Any]] = db["terminology"]

    async def ensure_indexes(self) -> None:
        await self.entries.create_indexes(INDEXES)

    async def observe(self, version: Version, session: AsyncClientSession | None) -> None:
        """Store observer: record (or forget) a terminology resource as it is written."""
        if version.resource_type not in KINDS:
            return
        key = f"{version.resource_type}/{version.id}"
        resource = version.resource
        await self.entries.update_one({"_id": GENERATION}, {"$inc": {"n": 1}}, upsert=True, session=session)
        if resource is None or not resource.get("url"):
            await self.entries.delete_one({"_id": key}, session=session)
            return
        doc = {
            "_id": key, "kind": version.resource_type, "id": version.id, "url": resource["url"],
            "version": resource.get("version"), "vid": version.version_id, "date": str(resource.get("date", "")),
            "status": resource.get("status", "unknown"), "title": resource.get("title") or resource.get("name", ""),
            "content": resource.get("content"), "count": _count(resource), "ts": version.last_updated,
        }
        await self.entries.replace_one({"_id": key}, doc, upsert=True, session=session)

    async def generation(self) -> int:
        doc = await self.entries.find_one({"_id": GENERATION})
        return int(doc["n"]) if doc else 0

    async def resolve(self, kind: str, canonical: str) -> Entry | None:
        """The resource a canonical reference means: that version, or the latest (by date, then load time)."""
        url, version = split_canonical(canonical)
        query: dict[str, Any] = {"kind": kind, "url": url}
        if version is not None:
            query["version"] = version
        docs = await self.entries.find(query).sort([("date", DESCENDING), ("ts", DESCENDING)]).limit(1).to_list()
        return _entry(docs[0]) if docs else None

    async def versions(self, kind: str, url: str) -> list[Entry]:
        docs = await self.entries.find({"kind": kind, "url": url}).sort([("date", DESCENDING), ("ts", DESCENDING)])\
            .to_list()
        return [_entry(d) for d in docs]

    async def by_id(self, kind: str, resource_id: str) -> Entry | None:
        doc = await self.entries.find_one({"_id": f"{kind}/{resource_id}"})
        return _entry(doc) if doc else None

    async def all(self, kind: str | None = None, *, urls: set[str] | None = None,
                  latest: bool = False) -> list[Entry]:
        """Entries of one kind (or all), optionally only these urls, optionally only each url's latest."""
        query: dict[str, Any] = {"kind": kind} if kind else {"kind": {"$in": list(KINDS)}}
        if urls is not None:
            query["url"] = {"$in": sorted(urls)}
        order = [("kind", ASCENDING), ("url", ASCENDING), ("date", DESCENDING), ("ts", DESCENDING)]
        entries = [_entry(d) for d in await self.entries.find(query).sort(order).to_list()]
        if latest:
            firsts: dict[tuple[str, str], Entry] = {}
            for e in entries:
                firsts.setdefault((e.kind, e.url), e)
            entries = list(firsts.values())
        return entries


def _entry(doc: dict[str, Any]) -> Entry:
    return Entry(kind=doc["kind"], id=doc["id"], url=doc["url"], version=doc.get("version"), vid=doc["vid"],
                 date=doc.get("date", ""), status=doc.get("status", ""), title=doc.get("title", ""),
                 content=doc.get("content"), count=doc.get("count", 0), ts=doc["ts"])
