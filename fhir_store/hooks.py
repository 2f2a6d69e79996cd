"""Store hooks: what other services plug into every write, and the context they run in.

The store stays ignorant of terminology and whatever comes next (referral
bookkeeping, audit of writes): they are handed to `FhirStore` as write checks
and observers. Each gets a `WriteContext` carrying the MongoDB session, so a
check inside a transaction reads through the transaction (and sees what earlier
entries wrote), and the caller, so a hook can tell who is writing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pymongo.asynchronous.client_session import AsyncClientSession

from fhir_store.errors import Issue
from fhir_store.model import Version
from fhir_store.pipeline import Caller
from fhir_store.reads import VersionReader


@dataclass(frozen=True)
class WriteContext:
    session: AsyncClientSession | None = None
    caller: Caller | None = None
    reader: VersionReader | None = None

    async def read(self, resource_type: str, resource_id: str) -> Version | None:
        """The current version of a resource as this write sees it (inside its transaction), or None.

        Plain POST entries of a transaction are checked together before their one insert, so
        they do not see each other here; every other earlier entry's write is visible.
        """
        if self.reader is None:
            return None
        version = await self.reader.current(resource_type, resource_id, session=self.session)
        return version if version is not None and not version.deleted else None


#: Runs before a validated resource is written: raises a StoreError to refuse it, returns warnings to keep it.
WriteCheck = Callable[[dict[str, Any], WriteContext], Awaitable[list[Issue]]]
#: Runs after a version is written, inside the same session (derived data such as the terminology catalog).
WriteObserver = Callable[[Version, WriteContext], Awaitable[None]]
