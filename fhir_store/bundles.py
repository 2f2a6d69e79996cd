"""Bundles the server builds: search results, history, batch and transaction responses.

FHIR semantics only; the caller passes the base URL used in `fullUrl` and the
path and parameters the request came with, from which `page_links` makes the
`self`, `next` and `previous` links of every paged Bundle.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from fhir_store.errors import operation_outcome
from fhir_store.instants import format_instant
from fhir_store.model import Version
from fhir_store.search.elements import select_elements, summarize
from fhir_store.search.engine import SearchResult

_HISTORY_REQUEST = {
    "create": ("POST", "201 Created"),
    "update": ("PUT", "200 OK"),
    "delete": ("DELETE", "204 No Content"),
}


def etag(version_id: int) -> str:
    return f'W/"{version_id}"'


def page_links(path: str, query: Sequence[tuple[str, str]], next_cursor: str | None,
               previous_cursor: str | None = None) -> dict[str, str]:
    """`self` (the request as sent, less its cursor), and `next` / `previous` carrying the page's cursors."""
    kept = [(k, v) for k, v in query if k != "_cursor"]
    links = {"self": f"{path}?{urlencode(kept)}" if kept else path}
    if next_cursor:
        links["next"] = f"{path}?{urlencode([*kept, ('_cursor', next_cursor)])}"
    if previous_cursor:
        links["previous"] = f"{path}?{urlencode([*kept, ('_cursor', previous_cursor)])}"
    return links


def searchset_bundle(base: str, result: SearchResult, links: dict[str, str]) -> dict[str, Any]:
    summary, elements = result.summary, result.elements

    def shape(resource: dict[str, Any]) -> dict[str, Any]:
        if elements:
            return select_elements(resource, elements)
        if summary and summary != "count":
            return summarize(resource, summary)
        return resource

    entries: list[dict[str, Any]] = []
    for mode, versions in (("match", result.matches), ("include", result.included)):
        for v in versions:
            if v.resource is not None:
                entries.append({"fullUrl": f"{base}/{v.resource_type}/{v.id}", "resource": shape(v.resource),
                                "search": {"mode": mode}})
    if result.issues:
        entries.append({"resource": operation_outcome(result.issues), "search": {"mode": "outcome"}})
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"lastUpdated": format_instant(datetime.now(UTC))},
        "type": "searchset",
    }
    if result.total is not None:
        bundle["total"] = result.total
    bundle["link"] = [{"relation": rel, "url": url} for rel, url in links.items()]
    if entries:
        bundle["entry"] = entries
    return bundle


def history_bundle(base: str, versions: Sequence[Version], links: dict[str, str],
                   last_updated: datetime | None = None) -> dict[str, Any]:
    """`last_updated`: the read's write horizon (type and system history), from which a poller resumes."""
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
        "meta": {"lastUpdated": format_instant(last_updated or datetime.now(UTC))},
        "type": "history",
        "link": [{"relation": rel, "url": url} for rel, url in links.items()],
        "entry": entries,
    }


def bundle_response_entry(base: str, version: Version | None, resource: dict[str, Any] | None,
                          response: dict[str, Any]) -> dict[str, Any]:
    """One entry of a batch-response or transaction-response."""
    entry: dict[str, Any] = {}
    if version is not None and not version.deleted:
        entry["fullUrl"] = f"{base}/{version.resource_type}/{version.id}"
    if resource is not None:
        entry["resource"] = resource
    entry["response"] = response
    return entry
