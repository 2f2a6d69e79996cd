"""The MongoDB document that holds one version of one resource, and its conversion to `Version`.

Fields: `_id` ("Type/id" when current, "Type/id/vid" in history), `type`, `id`,
`vid`, `ts` (lastUpdated), `oid` (tie-breaker), `op`, `deleted`, `res` (the
resource JSON) and, on current versions only, the search index `ix`, sort
keys `sk` (see `search/extract.py`) and compartment memberships `cp`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from bson import ObjectId

from fhir_store.compartments import memberships
from fhir_store.ids import current_key
from fhir_store.model import Operation, Version
from fhir_store.search.extract import extract
from fhir_store.search.registry import registry

Document = dict[str, Any]


def now() -> datetime:
    """Now, truncated to the millisecond BSON dates keep, so what we return is what we stored."""
    moment = datetime.now(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def format_instant(ts: datetime) -> str:
    ts = ts.astimezone(UTC) if ts.tzinfo else ts.replace(tzinfo=UTC)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def current_document(rtype: str, rid: str, vid: int, data: dict[str, Any] | None, op: Operation) -> Document:
    """The `resources` document of a new current version (data None: a deletion)."""
    ts = now()
    res = None
    if data is not None:
        meta = {**(data.get("meta") or {}), "versionId": str(vid), "lastUpdated": format_instant(ts)}
        res = {"resourceType": rtype, "id": rid, "meta": meta}
        res.update((k, v) for k, v in data.items() if k not in res)
    doc: Document = {"_id": current_key(rtype, rid), "type": rtype, "id": rid, "vid": vid, "ts": ts,
                     "oid": ObjectId(), "op": op, "deleted": res is None, "res": res}
    if res is not None:
        doc["ix"], doc["sk"] = extract(registry(), res)
        doc["cp"] = memberships(rtype, rid, doc["ix"])
    return doc


def version_from_document(doc: Document) -> Version:
    ts = doc["ts"]
    return Version(
        resource_type=doc["type"],
        id=doc["id"],
        version_id=doc["vid"],
        last_updated=ts.astimezone(UTC) if ts.tzinfo else ts.replace(tzinfo=UTC),
        operation=doc["op"],
        resource=doc.get("res"),
        order=doc["oid"],
    )
