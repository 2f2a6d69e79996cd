"""Bundles the API returns (history now; search and transaction responses later)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from fhir_store.model import Version
from fhir_store.store import format_instant

_HISTORY_REQUEST = {
    "create": ("POST", "201 Created"),
    "update": ("PUT", "200 OK"),
    "delete": ("DELETE", "204 No Content"),
}


def etag(version_id: int) -> str:
    return f'W/"{version_id}"'


def history_bundle(base: str, versions: Sequence[Version], links: dict[str, str]) -> dict[str, Any]:
    entries = []
    for v in versions:
        method, status = _HISTORY_REQUEST[v.operation]
        entry: dict[str, Any] = {"fullUrl": f"{base}/{v.resource_type}/{v.id}"}
        if v.resource is not None:
            entry["resource"] = v.resource
        entry["request"] = {"method": method,
                            "url": v.resource_type if method == "POST" else f"{v.resource_type}/{v.id}"}
        entry["response"] = {"status": status, "etag": etag(v.version_id),
                             "lastModified": format_instant(v.last_updated)}
        entries.append(entry)
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"lastUpdated": format_instant(datetime.now(UTC))},
        "type": "history",
        "link": [{"relation": rel, "url": url} for rel, url in links.items()],
        "entry": entries,
    }
