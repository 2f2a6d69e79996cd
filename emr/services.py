"""The composition root: the store and the services wired into it, built one way for the server and every command.

Everything is passed to constructors here and nowhere else: the terminology
service (built first, then handed to the store as its write check, observer and
search terminology), and whatever a caller adds (tests plug extra write checks
in). The store loads the search registry when it first needs it, so a command
that only reads the catalog starts at once. A command that wrote through a bare
`FhirStore` would leave the terminology catalog behind, so all open it here. Security (accounts,
tokens, and the interceptors that authenticate, authorise and audit) is built here too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pymongo

from emr.database import open_database
from emr.settings import Settings
from fhir_store import FhirStore, TerminologyService, WriteCheck, WriteObserver
from security import Security, partner_writes, server_secret


@dataclass(frozen=True)
class Services:
    store: FhirStore
    terminology: TerminologyService
    security: Security


@asynccontextmanager
async def open_services(settings: Settings, *, write_checks: Sequence[WriteCheck] = (),
                        observers: Sequence[WriteObserver] = ()) -> AsyncIterator[Services]:
    """The database (configured or embedded) and the services on it, until the block ends."""
    async with open_database(settings) as db:
        terminology = TerminologyService(db, validation=settings.terminology_validation)
        store = FhirStore(db, write_checks=[terminology.check_codings, partner_writes, *write_checks],
                          observers=[terminology.observe, *observers], terminology=terminology,
                          page_size=settings.default_page_size, max_page_size=settings.max_page_size,
                          audit_journal=settings.data_dir / "audit-journal",
                          max_string_chars=settings.max_string_chars,
                          max_short_string_chars=settings.max_short_string_chars,
                          search_time_limit=settings.search_time_limit)
        security = Security.build(
            db, store, secret=lambda: server_secret(settings.secret_key, settings.data_dir),
            issuer=f"urn:angiang-emr:{settings.database}", site=settings.facility_code or "An Giang EMR",
            access_ttl=settings.access_token_lifetime, refresh_ttl=settings.refresh_token_lifetime)
        await store.ensure_indexes()
        await terminology.ensure_indexes()
        await security.ensure_indexes()
        try:
            yield Services(store, terminology, security)
        finally:
            # Bounded, so a server whose database is gone still stops in seconds; what could not be shipped
            # stays in the audit journal for the next start.
            with pymongo.timeout(settings.database_timeout):
                await store.close()
