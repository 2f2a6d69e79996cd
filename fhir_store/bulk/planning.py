"""How each Bundle entry is written, decided from the entry alone.

Apart from the reading and the writing because every pass over a Bundle
(the scan, the conditional entries, the others) must reach the same decision
for the same entry, and the ids must depend on the file's content only (see
"Idempotency" in the importer's docstring): pure functions of the entry.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from fhir_store import fhir_json
from fhir_store.bulk.files import CorruptFile
from fhir_store.errors import StoreError
from fhir_store.ids import check_id
from fhir_store.references import holders, is_local_placeholder
from fhir_store.resource_types import model_class

_CONTENT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:angiang-emr:bulk-import:content")


class Mode(Enum):
    UPDATE = "update"  # store.update under a known id
    CREATE_ONCE = "create-once"  # store.create under a derived id; an existing id is left alone
    CONDITIONAL_CREATE = "conditional-create"  # store.create(if_none_exist=...)
    CONDITIONAL_UPDATE = "conditional-update"  # store.conditional_update(criteria)


@dataclass
class Plan:
    """How one Bundle entry is written: decided from the entry alone, so every pass agrees."""

    mode: Mode
    resource_type: str
    resource_id: str | None
    criteria: str | None = None

    @property
    def conditional(self) -> bool:
        return self.mode in (Mode.CONDITIONAL_CREATE, Mode.CONDITIONAL_UPDATE)


class Rejected(Exception):
    """A resource refused by the importer itself (not by the store)."""


class Unresolved(Rejected):
    """A urn: reference to no entry of the Bundle (which a truncated file explains)."""


@dataclass
class Scan:
    """Pass 1 over a Bundle."""

    urls: dict[str, str | None] = field(default_factory=dict)
    duplicates: set[int] = field(default_factory=set)
    conditional: int = 0
    others: int = 0
    complete: int = 0  # entries read whole before the end of the file (or a break)
    corrupt: CorruptFile | None = None


def valid_id(value: Any) -> bool:
    try:
        check_id(value)
    except (StoreError, TypeError):
        return False
    return isinstance(value, str)


def id_from_full_url(full_url: str, resource_type: str) -> str:
    """The id an entry gets from its fullUrl: X of urn:uuid:X / urn:oid:X, the id of `.../Type/id`, else a uuid5."""
    for prefix in ("urn:uuid:", "urn:oid:"):
        if full_url.startswith(prefix):
            candidate = full_url[len(prefix):]
            return candidate if valid_id(candidate) else str(uuid.uuid5(uuid.NAMESPACE_URL, full_url))
    parts = full_url.split("?", 1)[0].rstrip("/").split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) >= 2 and parts[-2] == resource_type and valid_id(parts[-1]):
        return parts[-1]
    return str(uuid.uuid5(uuid.NAMESPACE_URL, full_url))


def content_id(resource: dict[str, Any]) -> str:
    """A stable id for a resource that has none: the same content gets the same id on every run."""
    return str(uuid.uuid5(_CONTENT_NAMESPACE, fhir_json.dumps(resource, sort_keys=True).decode()))


def rewrite_full_urls(value: Any, urls: dict[str, str | None] | None) -> None:
    """Rewrite references to the Bundle's fullUrls in place; refuse those that would point nowhere."""
    if urls is None:
        return
    for holder in holders(value):
        ref = holder["reference"]
        if ref in urls:
            target = urls[ref]
            if target is None:
                raise Rejected(f"it refers to '{ref}', an entry of the same Bundle that was not imported")
            holder["reference"] = target
        elif is_local_placeholder(ref):
            # Stored as it is, it would point nowhere, and a re-run would not fix a created-once resource.
            raise Unresolved(f"it refers to '{ref}', which is the fullUrl of no entry of the Bundle")


def plan_entry(entry: Any) -> Plan:
    """How a Bundle entry is imported; raises Rejected for an entry the import cannot write."""
    if not isinstance(entry, dict):
        raise Rejected("the entry is not a JSON object")
    resource = entry.get("resource")
    request = entry.get("request") if isinstance(entry.get("request"), dict) else None
    method = str(request.get("method", "")).upper() if request else ""
    url = str(request.get("url", "")) if request else ""
    if not isinstance(resource, dict):
        what = f"a {method} {url} request" if request else "an entry"
        raise Rejected(f"{what} without a resource: the import writes resources only "
                       "(send other requests to the API as a batch or transaction)")
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        raise Rejected("the resource has no resourceType")
    full_url = entry.get("fullUrl") if isinstance(entry.get("fullUrl"), str) else None
    path, _, query = url.partition("?")
    segments = [s for s in path.split("/") if s]
    # An absolute request URL ends in Type or Type/id like a relative one.
    if len(segments) >= 2 and model_class(segments[-2]) is not None:
        url_type, url_id = segments[-2], segments[-1]
    else:
        url_type, url_id = (segments[-1] if segments else rtype), None
    derived = id_from_full_url(full_url, rtype) if full_url else None
    body_id = resource.get("id") if valid_id(resource.get("id")) else None
    if method == "PUT":
        if query:
            return Plan(Mode.CONDITIONAL_UPDATE, url_type, body_id, query)
        if url_id is None:
            raise Rejected(f"PUT {url}: the URL names no resource id")
        return Plan(Mode.UPDATE, url_type, url_id)
    if method == "POST":
        if_none_exist = request.get("ifNoneExist") if request else None
        if isinstance(if_none_exist, str) and if_none_exist.strip():
            return Plan(Mode.CONDITIONAL_CREATE, url_type, derived or body_id, if_none_exist)
        return Plan(Mode.CREATE_ONCE, url_type, derived or body_id)
    if method:
        raise Rejected(f"a {method} {url} request: the import writes resources only "
                       "(send other requests to the API as a batch or transaction)")
    return Plan(Mode.UPDATE, rtype, derived or body_id)
