"""`TerminologyService`: one object for the store, the API and search to hold, over four parts that share caches.

The parts are `resolver.py` (canonical URL → resource, and every cache), `operations.py`
(`$lookup`, `$validate-code`, `$expand`, `$translate`, `display()`), `write_check.py` (the
store's write check) and `search_codes.py` (token search modifiers). They share one
`TerminologyResolver`, so a CodeSystem is indexed once per process whoever asks first.
"""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from fhir_store.documents import Document
from fhir_store.errors import Issue
from fhir_store.hooks import WriteContext
from fhir_store.model import Version
from fhir_store.terminology.catalog import Entry
from fhir_store.terminology.concepts import CodeSystemIndex
from fhir_store.terminology.operations import SAME_CODES, TerminologyOperations
from fhir_store.terminology.resolver import TerminologyResolver
from fhir_store.terminology.search_codes import SearchCodes
from fhir_store.terminology.write_check import WRITE_CHECK_STALENESS, ValidationMode, WriteCheck

__all__ = ["SAME_CODES", "WRITE_CHECK_STALENESS", "TerminologyService", "ValidationMode"]


class TerminologyService:
    """Built before the store and handed to it (`emr/services.py`): as its write check
    (`check_codings`), its observer (`observe`, which keeps the catalog) and the terminology
    its token search modifiers ask (`codes_in`, `codes_below`, `codes_matching`)."""

    def __init__(self, db: AsyncDatabase[Document], *, validation: ValidationMode = "warn") -> None:
        self._resolver = TerminologyResolver(db)
        self.catalog = self._resolver.catalog
        self._operations = TerminologyOperations(self._resolver)
        self._write_check = WriteCheck(self._resolver, validation)
        self._search = SearchCodes(self._resolver)

    @property
    def validation(self) -> ValidationMode:
        return self._write_check.validation

    async def observe(self, version: Version, ctx: WriteContext) -> None:
        """A store observer: keep the catalog in step with every write."""
        await self._resolver.observe(version, ctx)

    async def loaded(self) -> list[Entry]:
        """Every code system, value set and concept map held, newest edition first (`emr terminology list`)."""
        return await self.catalog.all()

    async def entry(self, kind: str, resource_id: str) -> Entry | None:
        """The catalog's record of the terminology resource `kind/resource_id`, if it has a url."""
        return await self.catalog.by_id(kind, resource_id)

    async def ensure_indexes(self) -> None:
        await self.catalog.ensure_indexes()

    async def rebuild_catalog(self) -> int:
        """Re-derive the catalog from the stored resources (after restoring a database without it)."""
        return await self._resolver.rebuild_catalog()

    # ---- resources ----------------------------------------------------------------------------

    async def code_system(self, canonical: str) -> CodeSystemIndex | None:
        """The CodeSystem a canonical (`url` or `url|version`) means, indexed; None if not loaded."""
        await self._resolver.sync()
        return await self._resolver.code_system(canonical)

    async def value_set(self, canonical: str) -> dict[str, Any] | None:
        await self._resolver.sync()
        return await self._resolver.value_set(canonical)

    async def index(self, entry: Entry) -> CodeSystemIndex:
        return await self._resolver.index(entry)

    # ---- operations (`operations.py`) ---------------------------------------------------------

    async def lookup(self, system: str | None, code: str | None, *, version: str | None = None,
                     display_language: str | None = None) -> dict[str, Any]:
        """CodeSystem/$lookup as a Parameters resource."""
        return await self._operations.lookup(system, code, version=version, display_language=display_language)

    async def validate_code(self, system: str | None, code: str | None, *, version: str | None = None,
                            display: str | None = None, value_set: dict[str, Any] | None = None,
                            display_language: str | None = None) -> dict[str, Any]:
        """CodeSystem/$validate-code (no `value_set`) or ValueSet/$validate-code, as Parameters."""
        return await self._operations.validate_code(system, code, version=version, display=display,
                                                    value_set=value_set, display_language=display_language)

    async def expand(self, *, resource_id: str | None = None, url: str | None = None,
                     value_set: dict[str, Any] | None = None, text: str | None = None, offset: int = 0,
                     count: int | None = None, active_only: bool = False, exclude_not_for_ui: bool = False,
                     display_language: str | None = None, include_designations: bool = False) -> dict[str, Any]:
        """ValueSet/$expand: the value set with its `expansion`, filtered and paged."""
        return await self._operations.expand(
            resource_id=resource_id, url=url, value_set=value_set, text=text, offset=offset, count=count,
            active_only=active_only, exclude_not_for_ui=exclude_not_for_ui, display_language=display_language,
            include_designations=include_designations)

    async def translate(self, *, resource_id: str | None = None, url: str | None = None, system: str | None,
                        code: str | None, target: str | None = None) -> dict[str, Any]:
        """ConceptMap/$translate: e.g. an old commune code to the commune that replaced it."""
        return await self._operations.translate(resource_id=resource_id, url=url, system=system, code=code,
                                                target=target)

    async def display(self, system: str, code: str, language: str = "vi", *, version: str | None = None) -> str | None:
        """The title of a code in `language` ("vi" or "en"), or None when the code is not known."""
        return await self._operations.display(system, code, language, version=version)

    # ---- the write check (`write_check.py`) -------------------------------------------------

    async def check_codings(self, resource: dict[str, Any], ctx: WriteContext) -> list[Issue]:
        """A store write check: codes of code systems held here must exist (and displays should match)."""
        return await self._write_check.check_codings(resource)

    # ---- search modifiers (`search_codes.py`) ---------------------------------------------------

    async def codes_in(self, canonical: str) -> list[tuple[str, str]]:
        return await self._search.codes_in(canonical)

    async def codes_below(self, system: str | None, code: str, *, above: bool = False) -> list[tuple[str, str]]:
        return await self._search.codes_below(system, code, above=above)

    async def codes_matching(self, text: str) -> list[tuple[str, str]]:
        return await self._search.codes_matching(text)
