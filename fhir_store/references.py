"""References inside a Bundle's resources: fullUrl rewriting and conditional references.

One owner for what a transaction and a file import both do to a Bundle's
resources before writing them: every reference to an entry's `fullUrl`
(`urn:uuid:…`) becomes the `Type/id` that entry is stored under, and every
conditional reference (`Patient?identifier=…`) becomes the one resource its
criteria match — none or several refuse the resource.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from fhir_store.errors import MultipleMatches, ResourceNotFound
from fhir_store.model import Version
from fhir_store.resource_types import model_class

#: Finds the resources a conditional reference's criteria match: (type, query string) -> at most two.
Find = Callable[[str, str], Awaitable[list[Version]]]


def holders(value: Any) -> Iterator[dict[str, Any]]:
    """Every object (a Reference) in `value` whose `reference` is a string, outermost first."""
    if isinstance(value, dict):
        if isinstance(value.get("reference"), str):
            yield value
        for child in value.values():
            if isinstance(child, dict | list):
                yield from holders(child)
    elif isinstance(value, list):
        for child in value:
            if isinstance(child, dict | list):
                yield from holders(child)


def localise(resource: dict[str, Any], base: str | None) -> dict[str, Any]:
    """References to this server's own base (`{base}/Patient/1`) become relative (`Patient/1`), in place.

    Stored relative, they are found by search, `_include` and compartments like any other; a
    reference to another server stays absolute, as written.
    """
    if base:
        prefix = base.rstrip("/") + "/"
        for holder in holders(resource):
            if holder["reference"].startswith(prefix):
                holder["reference"] = holder["reference"][len(prefix):]
    return resource


def is_conditional(reference: str) -> bool:
    """`Type?criteria` with a type this server knows."""
    rtype, sep, query = reference.partition("?")
    return bool(sep and query) and model_class(rtype) is not None


def is_local_placeholder(reference: str) -> bool:
    """A `urn:uuid:` / `urn:oid:` reference, which only means something inside its Bundle."""
    return reference.startswith(("urn:uuid:", "urn:oid:"))


class ConditionalReferences:
    """Resolves conditional references, remembering each answer (a Synthea record names the same
    practitioner in hundreds of entries); `limit` bounds what one run remembers."""

    def __init__(self, find: Find, *, limit: int = 100_000) -> None:
        self._find = find
        self._known: dict[str, str] = {}
        self._limit = limit

    async def resolve(self, reference: str) -> str:
        known = self._known.get(reference)
        if known is not None:
            return known
        rtype, _, query = reference.partition("?")
        matches = await self._find(rtype, query)
        if len(matches) != 1:
            if matches:
                raise MultipleMatches(f"The conditional reference '{reference}' matches more than one resource; "
                                      "it must match exactly one")
            raise ResourceNotFound(f"The conditional reference '{reference}' matches no resource; "
                                   "it must match exactly one")
        if len(self._known) >= self._limit:
            self._known.clear()
        target = self._known[reference] = f"{rtype}/{matches[0].id}"
        return target

    async def resolve_all(self, resource: dict[str, Any]) -> None:
        """Replace, in place, every conditional reference of `resource` by the `Type/id` it matches."""
        for holder in holders(resource):
            if is_conditional(holder["reference"]):
                holder["reference"] = await self.resolve(holder["reference"])
