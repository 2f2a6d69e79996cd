"""Opening the MongoDB database: the configured URI, or the embedded server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from emr.settings import Settings


@asynccontextmanager
async def open_database(settings: Settings) -> AsyncIterator[AsyncDatabase[dict[str, Any]]]:
    embedded = None
    uri = settings.mongodb_uri
    if uri is None:
        from emr.embedded_db import ensure_embedded

        embedded = await asyncio.to_thread(ensure_embedded, settings.data_dir)
        uri = embedded.uri
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, tz_aware=True)
    try:
        await client.admin.command("ping")
        yield client[settings.database]
    finally:
        await client.close()
        if embedded is not None:
            await asyncio.to_thread(embedded.close)
