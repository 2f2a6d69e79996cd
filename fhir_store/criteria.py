"""Search criteria of conditional create, update and delete.

For now the store answers `identifier=[system]|value` and `_id`, ANDed;
anything else is refused with a clear message rather than silently ignored,
because a conditional write that ignores part of its criteria would update the
wrong record.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

from fhir_store.errors import InvalidRequest
from fhir_store.indexing import token_values

Criteria = tuple[tuple[str, str], ...]


def parse_criteria(query: str) -> Criteria:
    pairs = parse_qsl(query.lstrip("?"), keep_blank_values=True)
    if not pairs:
        raise InvalidRequest("Conditional criteria are empty")
    for name, value in pairs:
        if name not in ("identifier", "_id"):
            raise InvalidRequest(f"Conditional criteria support 'identifier' and '_id'; '{name}' is not supported yet")
        if not value:
            raise InvalidRequest(f"Conditional criterion '{name}' has no value")
    return tuple(sorted(pairs))


def to_filter(resource_type: str, criteria: Criteria) -> dict[str, object]:
    clauses: list[dict[str, object]] = [{"type": resource_type}, {"deleted": False}]
    for name, value in criteria:
        if name == "_id":
            clauses.append({"id": value})
            continue
        system, sep, code = value.rpartition("|")
        if not sep:
            clauses.append({"ix.identifier": value})
        elif code:
            clauses.append({"ix.identifier": token_values(system or None, code)[0]})
        else:
            clauses.append({"ix.identifier": {"$regex": "^" + re.escape(f"{system}|")}})
    return {"$and": clauses}


def canonical(resource_type: str, criteria: Criteria) -> str:
    return resource_type + "?" + "&".join(f"{k}={v}" for k, v in criteria)
