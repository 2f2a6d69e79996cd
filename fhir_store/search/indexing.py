"""What a current version's document carries for search: index values, sort keys, compartments.

The store hands this `Indexer` to the document codec, so the codec knows the
document's shape and search knows what goes in it, and neither imports the other.
"""

from __future__ import annotations

from typing import Any

from fhir_store.compartments import compartment_params, memberships
from fhir_store.documents import Indexer, IndexValues
from fhir_store.search.extract import extract, normalise_reference
from fhir_store.search.registry import Registry


def indexer(registry: Registry) -> Indexer:
    def index(resource: dict[str, Any]) -> IndexValues:
        ix, sk = extract(registry, resource)
        return IndexValues(ix, sk, memberships(resource["resourceType"], resource["id"], ix))

    return index


def patient_references(registry: Registry, resource: dict[str, Any]) -> list[str]:
    """The patients whose compartment a resource is in ("Patient/1"), by the compartment's own parameters.

    The cheap part of `memberships`, for one compartment, without extracting every parameter (the audit trail
    asks this of every resource a request touches).
    """
    rtype = resource.get("resourceType")
    if rtype == "Patient":
        return [f"Patient/{resource['id']}"] if isinstance(resource.get("id"), str) else []
    if not isinstance(rtype, str):
        return []
    found: list[str] = []
    params = registry.params(rtype)
    for code in compartment_params("Patient", rtype) if params else []:
        param = params.get(code)
        for leaf in param.leaves if param is not None else ():
            for node in leaf.evaluate(resource):
                reference = node.get("reference") if isinstance(node, dict) else None
                if isinstance(reference, str) and (ref := normalise_reference(reference)).startswith("Patient/"):
                    found.append(ref)
    return list(dict.fromkeys(found))
