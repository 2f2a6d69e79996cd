"""The resource types this server accepts: exactly those `fhir.resources.R4B` models.

Derived from the installed model package rather than a hand-kept list, so the
store, the API and the CapabilityStatement can never disagree about them.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

import fhir.resources.R4B as r4b
from fhir.resources.R4B.resource import Resource

FHIR_VERSION = "4.3.0"

_ABSTRACT = {"Resource", "DomainResource"}


@cache
def resource_types() -> dict[str, type[Resource]]:
    """Map of resource type name to its model class, sorted by name."""
    found: dict[str, type[Resource]] = {}
    for info in pkgutil.iter_modules(r4b.__path__):
        if info.name.startswith("_") or info.name in {"fhirtypes", "fhirtypesvalidators"}:
            continue
        module = importlib.import_module(f"{r4b.__name__}.{info.name}")
        for obj in vars(module).values():
            if (
                isinstance(obj, type)
                and issubclass(obj, Resource)
                and obj.__module__ == module.__name__
                and obj.__name__ == obj.get_resource_type()
                and obj.__name__ not in _ABSTRACT
            ):
                found[obj.__name__] = obj
    return dict(sorted(found.items()))


def model_class(resource_type: str) -> type[Resource] | None:
    return resource_types().get(resource_type)
