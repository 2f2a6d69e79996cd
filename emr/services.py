"""The composition root: the store and the services wired into it, built one way for the server and every command.

Everything is passed to constructors here and nowhere else: the terminology
service (built first, then handed to the store as its write check, observer and
search terminology), and whatever a caller adds (tests plug extra write checks
in). The store loads the search registry when it first needs it, so a command
that only reads the catalog starts at once. A command that wrote through a bare
`FhirStore` would leave the terminology catalog behind, so all open it here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from emr.database import open_database
from emr.settings import Settings
from fhir_store import FhirStore, TerminologyService, WriteCheck, WriteObserver


@dataclass(frozen=True)
class Services:
    store: FhirStore
    terminology: TerminologyService


@asynccontextmanager
async def open_services(settings: Settings, *, write_checks: Sequence[WriteCheck] = (),
                        observers: Sequence[WriteObserver] = ()) -> AsyncIterator[Services]:
    """The database (configured or embedded) and the services on it, until the block ends."""
    async with open_database(settings) as db:
        terminology = TerminologyService(db, validation=settings.terminology_validation)
        store = FhirStore(db, write_checks=[terminology.check_codings, *write_checks],
                          observers=[terminology.observe, *observers], terminology=terminology,
                          page_size=settings.default_page_size, max_page_size=settings.max_page_size)
        await store.ensure_indexes()
        await terminology.ensure_indexes()
        try:
            yield Services(store, terminology)
        finally:
            await store.close()
