"""Token search modifiers (`:in`, `:not-in`, `:below`, `:above`, `:text`) turned into lists of codes.

The search engine only knows `fhir_store.search.query.Terminology`; this answers it, and
caps the answer so one modifier cannot turn into a query too large to run.
"""

from __future__ import annotations

from fhir_store.errors import InvalidRequest, SearchTooCostly
from fhir_store.terminology.resolver import TerminologyResolver

#: Most codes a search modifier (`:in`, `:below`, `:text`) may turn into before it is refused as too costly.
MAX_SEARCH_CODES = 20_000


class SearchCodes:
    def __init__(self, resolver: TerminologyResolver) -> None:
        self._resolver = resolver

    async def codes_in(self, canonical: str) -> list[tuple[str, str]]:
        """(system, code) of every code in a value set, for `:in` / `:not-in`."""
        await self._resolver.sync()
        vs = await self._resolver.value_set(canonical)
        if vs is None:
            raise InvalidRequest(f"':in' names the value set {canonical}, which is not loaded here")
        return _capped([(i.system, i.code) for i in (await self._resolver.members_of(vs)).values()], canonical)

    async def codes_below(self, system: str | None, code: str, *, above: bool = False) -> list[tuple[str, str]]:
        """`code` and its descendants (or ancestors) in the code system named, or in every one that has it."""
        await self._resolver.sync()
        if system:
            index = await self._resolver.code_system(system)
            indexes = [index] if index else []
        else:
            indexes = [await self._resolver.index(e) for e in await self._resolver.latest_entries("CodeSystem")
                       if e.content == "complete"]
        found: list[tuple[str, str]] = []
        for index in indexes:
            concepts = index.ancestors(code) if above else index.descendants(code)
            found += [(index.url, c.code) for c in concepts]
        return _capped(found or [(system or "", code)], code)

    async def codes_matching(self, text: str) -> list[tuple[str, str]]:
        """Codes whose title (any language) matches `text`, across the code systems held, for `:text`."""
        await self._resolver.sync()
        found: list[tuple[str, str]] = []
        for entry in await self._resolver.latest_entries("CodeSystem"):
            if entry.content == "complete":
                index = await self._resolver.index(entry)
                found += [(index.url, c.code) for c in index.matching(text)]
        return _capped(found, text)


def _capped(codes: list[tuple[str, str]], what: str) -> list[tuple[str, str]]:
    if len(codes) > MAX_SEARCH_CODES:
        raise SearchTooCostly(f"'{what}' stands for {len(codes)} codes, more than a search may use "
                              f"({MAX_SEARCH_CODES}); narrow it")
    return codes
