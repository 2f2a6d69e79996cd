"""Resource ids and the document keys built from them."""

from __future__ import annotations

import re
import uuid

from fhir_store.errors import InvalidRequest

_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def new_id() -> str:
    return str(uuid.uuid4())


def check_id(value: str) -> str:
    if not _ID.fullmatch(value):
        raise InvalidRequest(f"'{value}' is not a valid FHIR id (1-64 of A-Z a-z 0-9 - .)")
    return value


def current_key(resource_type: str, resource_id: str) -> str:
    return f"{resource_type}/{resource_id}"


def version_key(resource_type: str, resource_id: str, version_id: int) -> str:
    return f"{resource_type}/{resource_id}/{version_id}"
