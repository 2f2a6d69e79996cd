"""While the database is known to be away, requests that need it are answered 503 at once.

The first request to meet an unreachable database waits `EMR_DATABASE_TIMEOUT` and is answered
503 (`app.py`); it tells `DatabaseWatch`, which from then on pings the database twice a second.
Until a ping succeeds, `DatabaseGate` answers every request that would need the database with the
same 503 straight away, instead of each waiting its timeout; the CapabilityStatement, discovery
documents and the OpenAPI schema still answer. One log line when it goes, one when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import pymongo
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError
from starlette.types import ASGIApp, Receive, Scope, Send

from emr.api.responses import outcome_response
from fhir_store import Issue

log = logging.getLogger("emr.database")
PROBE_EVERY = 0.5  # seconds between pings while the database is away
#: Paths answered without the database (their ends, after the base).
WITHOUT_DATABASE = ("/metadata", "/.well-known/smart-configuration", "/$versions", "/openapi.json", "/docs")


def unreachable() -> Any:
    """The answer to a request the database could not serve."""
    return outcome_response(503, [Issue("transient", "The database is unreachable, so the request could not be "
                                                     "completed; try again in a few seconds")],
                            headers={"Retry-After": "5"})


class DatabaseWatch:
    def __init__(self) -> None:
        self._db: AsyncDatabase[Any] | None = None
        self._away_since: float | None = None
        self._probe: asyncio.Task[None] | None = None

    @property
    def away(self) -> bool:
        return self._away_since is not None

    def start(self, db: AsyncDatabase[Any]) -> None:
        """Watch `db` (the server's lifespan hands it over once the database is open)."""
        self._db = db

    def lost(self, error: Exception) -> None:
        """A request found the database unreachable: say so once, and ping until it is back."""
        if self._away_since is not None or self._db is None:
            return
        self._away_since = time.monotonic()
        log.error("the database is unreachable (%s: %s); requests are answered 503 until it is back",
                  type(error).__name__, str(error).split(",")[0][:200])
        self._probe = asyncio.get_running_loop().create_task(self._until_back(self._db))

    async def stop(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe

    async def _until_back(self, db: AsyncDatabase[Any]) -> None:
        while True:
            await asyncio.sleep(PROBE_EVERY)
            try:
                with pymongo.timeout(1):
                    await db.command("ping")
            except PyMongoError:
                continue
            took = time.monotonic() - (self._away_since or time.monotonic())
            self._away_since = None
            log.info("the database is reachable again, after %.1f s", took)
            return


class DatabaseGate:
    def __init__(self, app: ASGIApp, *, watch: DatabaseWatch) -> None:
        self.app = app
        self.watch = watch

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.watch.away and not scope.get("path", "").endswith(WITHOUT_DATABASE):
            scope.setdefault("state", {})["reason"] = "database unreachable"
            await unreachable()(scope, receive, send)
            return
        await self.app(scope, receive, send)
