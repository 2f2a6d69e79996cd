"""The store and the services wired into it, assembled the same way for the server and every command.

The terminology service plugs into the store (catalog upkeep, code checks on
write, search modifiers); a command that wrote through a bare `FhirStore` would
leave the terminology catalog behind, so everything opens the store here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from emr.settings import Settings
from fhir_store import FhirStore
from fhir_store.terminology import TerminologyService


@dataclass(frozen=True)
class Services:
    store: FhirStore
    terminology: TerminologyService


async def open_services(db: AsyncDatabase[dict[str, Any]], settings: Settings) -> Services:
    store = FhirStore(db)
    terminology = TerminologyService(store, validation=settings.terminology_validation).attach()
    await store.ensure_indexes()
    await terminology.ensure_indexes()
    return Services(store, terminology)
