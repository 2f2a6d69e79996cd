"""Failed sign-ins, counted per user name and per network address, in MongoDB (so every API process sees them).

After `per_user` failures for one name, or `per_address` from one address,
within `window`, further attempts are refused (429) until the oldest failure
leaves the window, whether the password is right or not: guessing is slowed to
a few tries an hour. A success clears the name's count.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase

from fhir_store import now


class Throttle:
    def __init__(self, db: AsyncDatabase[dict[str, Any]], *, per_user: int = 5, per_address: int = 20,
                 window: timedelta = timedelta(minutes=15)) -> None:
        self.failures = db["signin_failures"]
        self.per_user = per_user
        self.per_address = per_address
        self.window = window

    async def ensure_indexes(self) -> None:
        await self.failures.create_index([("key", ASCENDING), ("at", ASCENDING)])
        await self.failures.create_index([("at", ASCENDING)], expireAfterSeconds=int(self.window.total_seconds()))

    def _keys(self, name: str, address: str | None) -> list[tuple[str, int]]:
        keys = [(f"name:{name.strip().lower()}", self.per_user)]
        if address:
            keys.append((f"address:{address}", self.per_address))
        return keys

    async def wait(self, name: str, address: str | None) -> int:
        """Seconds to wait before another attempt is heard; 0 when it may go ahead."""
        since = now() - self.window
        longest = 0
        for key, limit in self._keys(name, address):
            recent = [doc["at"] async for doc in self.failures.find({"key": key, "at": {"$gt": since}})
                      .sort("at", -1).limit(limit)]
            if len(recent) >= limit:
                longest = max(longest, int((recent[-1] - since).total_seconds()) + 1)
        return longest

    async def failed(self, name: str, address: str | None) -> None:
        moment = now()
        await self.failures.insert_many([{"key": key, "at": moment} for key, _ in self._keys(name, address)])

    async def succeeded(self, name: str) -> None:
        await self.failures.delete_many({"key": f"name:{name.strip().lower()}"})
