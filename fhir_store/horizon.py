"""The write horizon: a moment before which every version that will ever exist is already visible.

A version's `lastUpdated` (`ts`) is stamped when its document is built, before
it is written, and a transaction's versions become visible only when it
commits, up to a minute later. A sync job that polls `_history?_since=T` and
resumes from the time of its last answer would miss a version stamped before
that time but committed after it. So type- and system-level history answer
only versions older than the horizon H, and say H as the Bundle's
`meta.lastUpdated`: polling again with `_since=H` sees every version exactly
once, however late its transaction commits.

H is the earliest of: this writer's open writes (each marks itself before it
stamps anything), every other writer's published low-water mark, and now.
Writers (each `FhirStore`: the server, an `emr import`, a second server) keep a
small record in the `writers` collection: "nothing I have open was stamped
before w". A writer publishes before its first write after being idle (one
round trip), then refreshes the record every 0.1 s from a background task
while it writes, and marks itself idle 0.1 s after its last write. A record
not refreshed for `LEASE` (its process died) no longer holds the horizon back.
This relies on the writers' clocks (NTP-synchronised, never stepped back).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

from pymongo.asynchronous.database import AsyncDatabase

from fhir_store.documents import Document
from fhir_store.instants import now, utc

#: How often a busy writer refreshes its record, and how long after its last write it says it is idle.
REFRESH_SECONDS = 0.1
#: A record older than this is a dead writer's (longer than MongoDB's 60 s transaction limit, so a
#: writer whose event loop is stalled by a long transaction or a huge resource still counts).
LEASE = timedelta(seconds=120)


class WriteHorizon:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._records = db["writers"]
        self._id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._open: Counter[datetime] = Counter()
        self._lock = asyncio.Lock()
        self._published_idle = True
        self._last_write = 0.0
        self._refresher: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def writing(self) -> AsyncIterator[None]:
        """Around one write (or a whole transaction): everything it stamps is at or after its start."""
        start = now()
        self._open[start] += 1
        try:
            async with self._lock:
                if self._published_idle:  # others must know before anything of ours can become visible
                    await self._publish(start)
                    self._published_idle = False
                if self._refresher is None or self._refresher.done():
                    self._refresher = asyncio.create_task(self._refresh())
            yield
        finally:
            self._open[start] -= 1
            if not self._open[start]:
                del self._open[start]
            self._last_write = time.monotonic()

    async def horizon(self) -> datetime:
        """Every version stamped before this moment is visible now (or never will be: its write failed)."""
        moment = now()
        own = min(self._open) if self._open else moment
        others = self._records.find({"_id": {"$ne": self._id}, "idle": False, "until": {"$gt": moment}},
                                    {"w": True})
        marks = [utc(doc["w"]) async for doc in others]
        return min([own, moment, *marks])

    async def passed(self, moment: datetime, *, timeout: float) -> bool:
        """Wait until the horizon is past `moment` (every write stamped before it is visible); False after
        `timeout` seconds (a writer that died mid-write holds it back until its record's lease ends)."""
        deadline = time.monotonic() + timeout
        while await self.horizon() < moment:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(REFRESH_SECONDS)
        return True

    async def close(self) -> None:
        """Say this writer is gone (a stopped server, a finished command), so it holds nobody back."""
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        async with self._lock:
            if not self._published_idle and not self._open:
                await self._records.delete_one({"_id": self._id})
                self._published_idle = True

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            async with self._lock:
                if not self._open and time.monotonic() - self._last_write >= REFRESH_SECONDS:
                    await self._records.update_one({"_id": self._id}, {"$set": {"idle": True}}, upsert=True)
                    self._published_idle = True
                    return
                await self._publish(min(self._open) if self._open else now())

    async def _publish(self, mark: datetime) -> None:
        moment = now()
        await self._records.update_one(
            {"_id": self._id}, {"$set": {"w": mark, "idle": False, "until": moment + LEASE}}, upsert=True)
