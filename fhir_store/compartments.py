"""Compartments (Patient, Encounter, Practitioner, ...) from the spec's CompartmentDefinitions.

A resource is in Patient/123's compartment when one of the parameters the
definition lists for its type references Patient/123. Used by compartment
search (`GET /Patient/123/Observation`) and, later, `$everything`.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from fhir_store.errors import InvalidSearch

_FILE = Path(__file__).resolve().parent / "spec" / "compartments.json"


@cache
def compartments() -> dict[str, dict[str, list[str]]]:
    table: dict[str, dict[str, list[str]]] = json.loads(_FILE.read_text(encoding="utf-8"))["compartments"]
    return table


def compartment_params(compartment: str, resource_type: str) -> list[str]:
    definition = compartments().get(compartment)
    if definition is None:
        raise InvalidSearch(f"There is no {compartment} compartment (known: {', '.join(compartments())})")
    return [p for p in definition.get(resource_type, []) if p != "{def}"]


def compartment_filter(types: list[str], compartment: str, owner_id: str) -> dict[str, Any]:
    """Resources of `types` in the compartment of `compartment`/`owner_id`."""
    owner = f"{compartment}/{owner_id}"
    per_type: list[dict[str, Any]] = []
    for rtype in types:
        params = compartment_params(compartment, rtype)
        clauses: list[dict[str, Any]] = [{f"ix.{p}": owner} for p in params]
        if rtype == compartment:
            clauses.append({"_id": owner})
        if clauses:
            per_type.append({"type": rtype, "$or": clauses})
    if not per_type:
        return {"_id": {"$in": []}}
    return per_type[0] if len(per_type) == 1 else {"$or": per_type}
