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


def memberships(resource_type: str, resource_id: str, ix: dict[str, list[Any]]) -> list[str]:
    """Every compartment ("Patient/123", "Encounter/9", ...) a resource belongs to, from its index values.

    Stored on the document as `cp`, so a compartment search or `$everything` is one
    indexed equality instead of an OR over the compartment's parameters.
    """
    found: list[str] = []
    for compartment, definition in compartments().items():
        if resource_type == compartment:
            found.append(f"{compartment}/{resource_id}")
        prefix = f"{compartment}/"
        for param in definition.get(resource_type, []):
            found += [ref for ref in ix.get(param, []) if isinstance(ref, str) and ref.startswith(prefix)]
    return list(dict.fromkeys(found))
