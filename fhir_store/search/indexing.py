"""What a current version's document carries for search: index values, sort keys, compartments.

The store hands this `Indexer` to the document codec, so the codec knows the
document's shape and search knows what goes in it, and neither imports the other.
"""

from __future__ import annotations

from typing import Any

from fhir_store.compartments import memberships
from fhir_store.documents import Indexer, IndexValues
from fhir_store.search.extract import extract
from fhir_store.search.registry import Registry


def indexer(registry: Registry) -> Indexer:
    def index(resource: dict[str, Any]) -> IndexValues:
        ix, sk = extract(registry, resource)
        return IndexValues(ix, sk, memberships(resource["resourceType"], resource["id"], ix))

    return index
