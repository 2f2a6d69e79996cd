"""The MongoDB documents that hold versions of resources: the only module that knows their shape.

Fields: `_id` ("Type/id" when current, "Type/id/vid" in history), `type`, `id`,
`vid`, `ts` (lastUpdated), `oid` (tie-breaker), `op`, `deleted`, `res` (the
resource JSON), `num` (the written text of decimals a float would change, see
`fhir_json.py`; absent when there are none) and, on current versions only, the search index `ix`, sort
keys `sk` (see `search/extract.py`) and compartment memberships `cp`. The
index values are computed by the caller's `Indexer`, so this codec needs no
search machinery (and search can read documents without a cycle).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bson import ObjectId

from fhir_store.fhir_json import exact_numbers, restore_exact_numbers
from fhir_store.ids import current_key, version_key
from fhir_store.instants import format_instant, now, utc
from fhir_store.model import Operation, Version

Document = dict[str, Any]

#: Everything `version_from_document` needs: what a read or search fetches (never the index).
VERSION_FIELDS: dict[str, bool] = {"type": True, "id": True, "vid": True, "ts": True, "oid": True, "op": True,
                                   "res": True, "num": True}
#: A version without its (large) search index, for history, exports and listings.
WITHOUT_INDEX: dict[str, bool] = {"ix": False}


#: What a scan of versions (the export's walk) needs to decide what to keep, without the resource.
STAMP_FIELDS: dict[str, bool] = {"type": True, "id": True, "vid": True, "ts": True, "deleted": True, "cp": True}
#: The same with the resource.
STAMP_AND_RESOURCE: dict[str, bool] = {**STAMP_FIELDS, "res": True, "num": True}


@dataclass(frozen=True)
class Stamp:
    """A version as a scan sees it: id, number, time, deletion and compartments (history has none), and
    the resource when it was fetched."""

    id: str
    vid: int
    ts: datetime
    deleted: bool
    cp: list[str]
    res: dict[str, Any] | None


def stamp(doc: Document) -> Stamp:
    return Stamp(doc["id"], doc["vid"], utc(doc["ts"]), bool(doc["deleted"]), doc.get("cp") or [], _resource(doc))


def _resource(doc: Document) -> dict[str, Any] | None:
    """The resource of a document, its decimals as written."""
    res: dict[str, Any] | None = doc.get("res")
    if res is not None and "num" in doc:
        restore_exact_numbers(res, doc["num"])
    return res


def _keep_numbers(doc: Document) -> Document:
    if doc["res"] is not None and (numbers := exact_numbers(doc["res"])):
        doc["num"] = numbers
    return doc


def type_range(rtype: str) -> Document:
    """Every document of a type, as a range of the (type, _id) index: "Observation/" <= _id < "Observation0"."""
    return {"type": rtype, "_id": {"$gte": f"{rtype}/", "$lt": f"{rtype}0"}}  # "0" follows "/" in ASCII


@dataclass(frozen=True)
class IndexValues:
    """What search needs of a current version: index values, sort keys, compartments."""

    ix: dict[str, list[Any]]
    sk: dict[str, Any]
    cp: list[str]


Indexer = Callable[[dict[str, Any]], IndexValues]


def current_document(rtype: str, rid: str, vid: int, data: dict[str, Any] | None, op: Operation,
                     indexer: Indexer) -> Document:
    """The `resources` document of a new current version (data None: a deletion, a tombstone)."""
    ts = now()
    res = None
    if data is not None:
        meta = {**(data.get("meta") or {}), "versionId": str(vid), "lastUpdated": format_instant(ts)}
        res = {"resourceType": rtype, "id": rid, "meta": meta}
        res.update((k, v) for k, v in data.items() if k not in res)
    doc: Document = {"_id": current_key(rtype, rid), "type": rtype, "id": rid, "vid": vid, "ts": ts,
                     "oid": ObjectId(), "op": op, "deleted": res is None, "res": res}
    if res is not None:
        values = indexer(res)
        doc["ix"], doc["sk"], doc["cp"] = values.ix, values.sk, values.cp
    return _keep_numbers(doc)


def history_document(version: Version) -> Document:
    """The `history` document of a version being superseded (no search index: history is never searched)."""
    return _keep_numbers({"_id": version_key(version.resource_type, version.id, version.version_id),
                          "type": version.resource_type, "id": version.id, "vid": version.version_id,
                          "ts": version.last_updated, "oid": version.order, "op": version.operation,
                          "deleted": version.deleted, "res": version.resource})


def version_from_document(doc: Document) -> Version:
    return Version(
        resource_type=doc["type"],
        id=doc["id"],
        version_id=doc["vid"],
        last_updated=utc(doc["ts"]),
        operation=doc["op"],
        resource=_resource(doc),
        order=doc["oid"],
    )
