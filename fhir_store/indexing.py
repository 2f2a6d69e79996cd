"""Search-index values extracted from a resource at write time.

Each current version carries `ix`, a dict of parameter name to a list of
normalised values, so that a query is an equality or range match on an indexed
field instead of a walk through resource JSON. Tokens are stored as
`system|code` together with the bare `code` (or `|code` when there is no
system), so each of FHIR's three token forms is one index lookup.
"""

from __future__ import annotations

from typing import Any


def token_values(system: str | None, code: str | None) -> list[str]:
    if not code:
        return [f"{system}|"] if system else []
    return [f"{system}|{code}", code] if system else [f"|{code}", code]


def extract_index(resource: dict[str, Any]) -> dict[str, list[str]]:
    identifiers: list[str] = []
    for ident in resource.get("identifier") or []:
        if isinstance(ident, dict):
            identifiers += token_values(ident.get("system"), ident.get("value"))
    return {"identifier": identifiers} if identifiers else {}
