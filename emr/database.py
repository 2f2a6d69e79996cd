"""Opening the MongoDB database: the configured URI, or the embedded server, with durable acknowledgements.

A write is answered (201, 200) only once the database would keep it through a
crash of its own process: the client asks for the journal (`j: true`) and, by
default, a majority of a replica set (`w: "majority"`; on a single server, its
journal). `EMR_WRITE_CONCERN` chooses; see `Settings.write_concern`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from emr.settings import Settings

#: Client options for each `EMR_WRITE_CONCERN`: set on the client, so they cover every write and every
#: transaction commit (a transaction's write concern is its client's unless it names one).
WRITE_CONCERNS: dict[str, dict[str, Any]] = {
    "majority": {"w": "majority", "journal": True},
    "journaled": {"w": 1, "journal": True},
    "fast": {"w": 1, "journal": False},
}
log = logging.getLogger("emr.database")


@asynccontextmanager
async def open_database(settings: Settings) -> AsyncIterator[AsyncDatabase[dict[str, Any]]]:
    embedded = None
    uri = settings.mongodb_uri
    if uri is None:
        from emr.embedded_db import ensure_embedded

        embedded = await asyncio.to_thread(ensure_embedded, settings.data_dir)
        embedded.supervise()
        uri = embedded.uri
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        uri, tz_aware=True, serverSelectionTimeoutMS=int(settings.database_timeout * 1000),
        **WRITE_CONCERNS[settings.write_concern])
    try:
        await client.admin.command("ping")
        if settings.write_concern == "fast":
            log.warning("EMR_WRITE_CONCERN=fast: writes are answered before they are in the database's journal; "
                        "an answered write can be lost if the database process dies. Never for patient records.")
        yield client[settings.database]
    finally:
        await client.close()
        if embedded is not None:
            await asyncio.to_thread(embedded.close)
