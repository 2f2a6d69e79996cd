"""What a batch or transaction entry asks for: its request parsed, and the FHIR interaction it is.

`interaction_of` names an entry's interaction the way the REST API names the
same request sent alone (`create`, `read`, `search-type`, `delete`, …), so the
pipeline's interceptors see both alike. `not_modified` is the conditional read
of both too (`If-None-Match` / `If-Modified-Since` headers, or the entry's
`ifNoneMatch` / `ifModifiedSince`).
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

import orjson

from fhir_store import fhir_json
from fhir_store.bundles import etag
from fhir_store.errors import InvalidRequest
from fhir_store.instants import parse_instant
from fhir_store.model import Version
from fhir_store.params import whole_number
from fhir_store.pipeline import Interaction

METHODS = ("DELETE", "POST", "PUT", "PATCH", "GET", "HEAD")


def parse_if_match(name: str, value: Any) -> int | None:
    """A version named by `If-Match` / `ifMatch` (`W/"3"`), or None when there is none."""
    if value is None:
        return None
    return whole_number(name, str(value).strip().removeprefix("W/").strip('"'))


def not_modified(version: Version, if_none_match: str | None, modified_since: datetime | None) -> bool:
    """A conditional read's answer: True when the client's copy is still current (304)."""
    if if_none_match is not None:
        tags = {tag.strip() for tag in if_none_match.split(",")}
        return bool(tags & {etag(version.version_id), f'"{version.version_id}"', "*"})
    if modified_since is not None:
        return version.last_updated <= modified_since
    return False


@dataclass
class Entry:
    """One entry of a batch or transaction: its request, and a private copy of its resource."""

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

    def not_modified(self, version: Version) -> bool:
        since = parse_instant("ifModifiedSince", self.if_modified_since) if self.if_modified_since else None
        return not_modified(version, self.if_none_match, since)

    def interaction(self, bundle: Interaction) -> Interaction:
        """The interaction this entry is, as the same request sent alone would be, inside `bundle`."""
        path, method = self.path, self.method
        kind, rid, vid, conditional = "unknown", None, None, False
        if method == "POST" and len(path) == 1:
            kind, conditional = "create", self.if_none_exist is not None
        elif method in ("PUT", "PATCH", "DELETE"):
            kind = {"PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]
            rid = path[1] if len(path) == 2 else None
            conditional = len(path) == 1
        elif method in ("GET", "HEAD"):
            if len(path) == 1:
                kind = "search-type"
            elif len(path) == 2:
                kind, rid = "read", path[1]
            elif len(path) == 3 and path[2] == "_history":
                kind, rid = "history-instance", path[1]
            elif len(path) == 4 and path[2] == "_history":
                kind, rid, vid = "vread", path[1], path[3]
        return Interaction(kind, path[0] if path else None, rid, vid, conditional=conditional,
                           query=tuple(parse_qsl(self.query, keep_blank_values=True)), headers=bundle.headers,
                           caller=bundle.caller, address=bundle.address, bundle=bundle, entry=self.index)


def parse_entry(index: int, raw: Any, base: str) -> Entry:
    where = f"Bundle.entry[{index}]"
    if not isinstance(raw, dict) or not isinstance(raw.get("request"), dict):
        raise InvalidRequest(f"{where} has no request")
    request: Mapping[str, Any] = raw["request"]
    method = str(request.get("method", "")).upper()
    url = request.get("url")
    if method not in METHODS or not isinstance(url, str) or not url:
        raise InvalidRequest(f"{where}.request needs a method (GET, HEAD, POST, PUT, PATCH, DELETE) and a url")
    if url.startswith(base.rstrip("/") + "/"):
        url = url[len(base.rstrip("/")) + 1:]
    resource = raw.get("resource")
    if method in ("POST", "PUT", "PATCH") and not isinstance(resource, dict):
        raise InvalidRequest(f"{where} ({method} {url}) has no resource")
    return Entry(index, method, url.lstrip("/"), raw.get("fullUrl"), copy.deepcopy(resource),
                 request.get("ifNoneExist"), parse_if_match(f"{where}.request.ifMatch", request.get("ifMatch")),
                 request.get("ifNoneMatch"), request.get("ifModifiedSince"))


def patch_document(resource: dict[str, Any] | None) -> Any:
    """A PATCH entry carries its JSON Patch as a Binary resource (contentType application/json-patch+json)."""
    if not resource or resource.get("resourceType") != "Binary" or \
            resource.get("contentType") != "application/json-patch+json":
        raise InvalidRequest("A PATCH entry's resource must be a Binary with contentType application/json-patch+json")
    try:
        return fhir_json.loads(base64.b64decode(resource.get("data", "")))
    except (ValueError, orjson.JSONDecodeError):
        raise InvalidRequest("The PATCH entry's Binary.data is not base64-encoded JSON") from None
