"""ValueSet.compose → the codes it contains.

A value set is evaluated include by include (a whole code system, listed
concepts, property filters, other value sets), minus its excludes, in the order
the definition gives. Code systems come in through `Resolver`, so this module
knows nothing of the database. A typed `filter` is applied while including, so a
type-ahead over all of ICD-10 never materialises the codes it does not show.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from fhir_store.errors import InvalidRequest, StoreError
from fhir_store.terminology.concepts import CodeSystemIndex, Concept, search_tokens


class CannotExpand(StoreError):
    """The value set needs something this server does not hold (an external code system, an unknown filter)."""

    issue_code = "not-supported"
    status = 422


@dataclass(frozen=True)
class Item:
    system: str
    version: str | None
    code: str
    display: str
    abstract: bool = False
    inactive: bool = False
    concept: Concept | None = None


ResolveSystem = Callable[[str], Awaitable[CodeSystemIndex | None]]
ResolveValueSet = Callable[[str], Awaitable[dict[str, Any] | None]]


def text_matches(tokens: list[str], texts: Iterable[str]) -> bool:
    """Every typed word starts some word of the texts (the same rule as `CodeSystemIndex.matching`)."""
    words = {w for t in texts for w in search_tokens(t)}
    return all(any(w.startswith(t) for w in words) for t in tokens)


class Expander:
    def __init__(self, code_system: ResolveSystem, value_set: ResolveValueSet) -> None:
        self.code_system = code_system
        self.value_set = value_set

    async def expand(self, vs: dict[str, Any], *, text: str | None = None,
                     depth: int = 0) -> dict[tuple[str, str], Item]:
        """The value set's codes, keyed by (system, code), in definition order."""
        if depth > 10:
            raise CannotExpand(f"ValueSet {vs.get('url')}: value sets include each other more than 10 deep")
        compose = vs.get("compose")
        if compose is None:
            listed = vs.get("expansion", {}).get("contains")
            if listed is None:
                raise CannotExpand(f"ValueSet {vs.get('url')} has neither a compose nor an expansion")
            return {(c["system"], c["code"]): Item(c["system"], c.get("version"), c["code"], c.get("display", ""))
                    for c in _flatten(listed) if c.get("code") and c.get("system")
                    and (not text or text_matches(search_tokens(text), [c.get("display", ""), c["code"]]))}
        out: dict[tuple[str, str], Item] = {}
        for include in compose.get("include", []):
            for item in await self._include(include, text, depth):
                out.setdefault((item.system, item.code), item)
        for exclude in compose.get("exclude", []):
            for item in await self._include(exclude, None, depth):
                out.pop((item.system, item.code), None)
        if compose.get("inactive") is False:
            out = {k: v for k, v in out.items() if not v.inactive}
        return out

    async def _include(self, include: dict[str, Any], text: str | None, depth: int) -> list[Item]:
        items: list[Item] | None = None
        system = include.get("system")
        if system:
            items = await self._from_system(system, include, text)
        for ref in include.get("valueSet", []):
            vs = await self.value_set(ref)
            if vs is None:
                raise CannotExpand(f"The value set {ref} is not loaded")
            inner = await self.expand(vs, text=text, depth=depth + 1)
            items = list(inner.values()) if items is None else [i for i in items if (i.system, i.code) in inner]
        return items or []

    async def _from_system(self, system: str, include: dict[str, Any], text: str | None) -> list[Item]:
        version = include.get("version")
        index = await self.code_system(f"{system}|{version}" if version else system)
        tokens = search_tokens(text) if text else []
        if include.get("concept"):
            items = []
            for listed in include["concept"]:
                concept = index.get(listed["code"]) if index else None
                display = listed.get("display") or (concept.display if concept else "")
                item = _item(index, concept) if concept and index else Item(system, version, listed["code"], display)
                if not tokens or text_matches(tokens, [display, listed["code"], *(index.texts(concept)
                                                                                    if index and concept else [])]):
                    items.append(item)
            return items
        if index is None:
            raise CannotExpand(f"The code system {system}{'|' + version if version else ''} is not loaded, "
                               "so its codes cannot be listed")
        if index.content not in ("complete", "fragment"):
            raise CannotExpand(f"The code system {system} is loaded without its concepts ({index.content})")
        concepts = index.matching(text) if text else list(index)
        for flt in include.get("filter", []):
            keep = _filter(index, flt)
            concepts = [c for c in concepts if keep(c)]
        return [_item(index, c) for c in concepts]


def _item(index: CodeSystemIndex, concept: Concept) -> Item:
    return Item(index.url, index.version, concept.code, concept.display, concept.abstract, concept.inactive, concept)


def _flatten(contains: list[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    for c in contains:
        yield c
        yield from _flatten(c.get("contains", []))


def _filter(index: CodeSystemIndex, flt: dict[str, Any]) -> Callable[[Concept], bool]:
    """One `compose.include.filter` as a predicate on concepts."""
    prop, op, value = flt.get("property", ""), flt.get("op", ""), str(flt.get("value", ""))
    if prop in ("concept", "code") or op in ("is-a", "descendent-of", "is-not-a", "generalizes"):
        if op == "is-a":
            below = {c.code for c in index.descendants(value)}
            return lambda c: c.code in below
        if op == "descendent-of":
            below = {c.code for c in index.descendants(value)} - {value}
            return lambda c: c.code in below
        if op == "is-not-a":
            below = {c.code for c in index.descendants(value)}
            return lambda c: c.code not in below
        if op == "generalizes":
            above = {c.code for c in index.ancestors(value)}
            return lambda c: c.code in above
        if op == "=":
            return lambda c: c.code == value
        if op in ("in", "not-in"):
            codes = set(value.split(","))
            return (lambda c: c.code in codes) if op == "in" else (lambda c: c.code not in codes)
        if op == "regex":
            pattern = _regex(value)
            return lambda c: bool(pattern.fullmatch(c.code))
    else:
        if op == "=":
            return lambda c: value in c.property_strings(prop)
        if op in ("in", "not-in"):
            values = set(value.split(","))
            if op == "in":
                return lambda c: bool(values & set(c.property_strings(prop)))
            return lambda c: not values & set(c.property_strings(prop))
        if op == "regex":
            pattern = _regex(value)
            return lambda c: any(pattern.fullmatch(v) for v in c.property_strings(prop))
        if op == "exists":
            wanted = value.lower() == "true"
            return lambda c: (prop in c.properties) == wanted
    raise CannotExpand(f"The value set filter '{prop} {op} {value}' is not supported")


def _regex(value: str) -> re.Pattern[str]:
    try:
        return re.compile(value)
    except re.error as exc:
        raise InvalidRequest(f"The value set filter regex '{value}' is invalid: {exc}") from None
