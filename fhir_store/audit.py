"""The audit trail: AuditEvents in a collection of their own, written once and never changed.

Nothing in the store updates or deletes a document here (the store refuses
update, patch and delete of AuditEvent with 405), and the records are searched
with the same engine and index values as every other resource, so an auditor
asks `AuditEvent?patient=Patient/1&date=ge2026-01-01` as any FHIR client would.

Every request is recorded before it is answered, so recording must be cheap and
must not be lost. With a journal folder (the server's), an event is first
appended to this process's journal file and flushed to disk (`fdatasync`,
shared by the requests that arrive together: group commit), which costs a
fraction of a database insert; a background task then ships the journal to
MongoDB in batches. Events carry their id from the start, so shipping twice
(after a crash between insert and bookkeeping) stores nothing twice. A process
that starts ships what a dead one left in the folder (each live journal is
locked by its owner). If the journal cannot be written, the request fails
(`AuditUnavailable`, 503): nothing is answered that was not recorded. Without
a journal folder (commands, tests of the store alone) events are inserted
directly, also in shared batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, ConnectionFailure, PyMongoError

from fhir_store.documents import Document, Indexer, current_document
from fhir_store.errors import StoreError
from fhir_store.fhir_json import dumps
from fhir_store.ids import new_id

AUDIT_EVENT = "AuditEvent"
SHIP_EVERY = 0.25  # seconds between shipments to MongoDB
SHIP_BATCH = 1000  # events per insert
ROTATE_BYTES = 8 * 1024 * 1024  # a fully shipped journal this big is replaced by a fresh one

log = logging.getLogger("emr.audit")


class AuditUnavailable(StoreError):
    """The audit record of a request could not be written, so the request is not answered as done."""

    issue_code = "transient"
    status = 503


class AuditTrail:
    def __init__(self, collection: AsyncCollection[Document], indexer: Callable[[], Indexer], *,
                 journal: Path | None = None, ship_every: float = SHIP_EVERY,
                 rotate_bytes: int = ROTATE_BYTES) -> None:
        self.collection = collection
        self._indexer = indexer
        self._folder = journal
        self._ship_every = ship_every
        self._rotate_bytes = rotate_bytes
        self._file: _Journal | None = None
        self._retired: list[_Journal] = []  # replaced by a fresh file; closed once shipped and idle
        self._pending: list[tuple[Document, asyncio.Future[None]]] = []  # direct mode
        self._flushing: asyncio.Task[None] | None = None
        self._shipper: asyncio.Task[None] | None = None
        self._ship_lock = asyncio.Lock()
        self._stopping = asyncio.Event()

    async def ensure_indexes(self) -> None:
        # What auditors ask most: a patient's accesses, a user's, and everything by time. Few indexes,
        # since every request writes here; other searches (entity=, action=) filter a time range.
        await self.collection.create_index([("ix.patient", 1), ("sk.date", 1)])
        await self.collection.create_index([("ix.altid", 1), ("sk.date", 1)])
        await self.collection.create_index([("sk.date", 1)])

    def document(self, event: dict[str, Any]) -> Document:
        """The stored form of an event (its id given here if it has none)."""
        data = {**event, "id": event.get("id") or new_id()}
        return current_document(AUDIT_EVENT, data["id"], 1, data, "create", self._indexer())

    async def record(self, events: list[dict[str, Any]]) -> None:
        """Record events (already valid AuditEvents); returns once they would survive a crash."""
        if not events:
            return
        stamped = [{**e, "id": e.get("id") or new_id()} for e in events]
        if self._folder is None:
            await self._insert_directly([self.document(e) for e in stamped])
            return
        try:
            journal = self._journal()
            await journal.append(b"".join(dumps(e, newline=True) for e in stamped))
        except OSError as exc:
            raise AuditUnavailable(f"The audit journal could not be written ({exc.strerror or exc}); "
                                   "the request is not answered as done") from None
        self._ensure_shipper()

    async def flush(self) -> None:
        """Ship everything journalled so far (before this process searches the trail, and at close)."""
        if self._folder is not None:
            await self._ship_all()

    async def close(self) -> None:
        if self._shipper is not None:
            # Asked to stop, not cancelled: a shipment cancelled inside the driver's insert can leave the
            # connection pool waiting for a connection that never comes back, and close would hang.
            self._stopping.set()
            with contextlib.suppress(PyMongoError, OSError):
                await self._shipper
            self._shipper = None
        with contextlib.suppress(PyMongoError, OSError):
            await self.flush()
        for journal in [*self._retired, *([self._file] if self._file is not None else [])]:
            journal.close(remove=journal.shipped >= journal.size)
        self._retired, self._file = [], None

    # ---- direct mode: group commit into MongoDB -----------------------------------------------

    async def _insert_directly(self, docs: list[Document]) -> None:
        loop = asyncio.get_running_loop()
        waits = []
        for doc in docs:
            done: asyncio.Future[None] = loop.create_future()
            self._pending.append((doc, done))
            waits.append(done)
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush_pending())
        await asyncio.gather(*waits)

    async def _flush_pending(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            problem: Exception | None = None
            try:
                await self.collection.insert_many([doc for doc, _ in batch], ordered=False)
            except PyMongoError as exc:
                problem = AuditUnavailable(f"The audit trail could not be written ({type(exc).__name__}); "
                                           "the request is not answered as done")
            for _, done in batch:
                if not done.done():
                    done.set_exception(problem) if problem else done.set_result(None)

    # ---- journal mode ---------------------------------------------------------------------------

    def _journal(self) -> _Journal:
        if self._file is None:
            assert self._folder is not None
            self._file = _Journal.create(self._folder)
        return self._file

    def _ensure_shipper(self) -> None:
        if (self._shipper is None or self._shipper.done()) and not self._stopping.is_set():
            self._shipper = asyncio.create_task(self._ship_forever())

    async def _ship_forever(self) -> None:
        failing = False
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._ship_every)
            try:
                await self._ship_all()
            except (PyMongoError, OSError) as exc:  # MongoDB away: the journal keeps the events meanwhile
                if not failing:  # said once an outage, not four times a second
                    log.warning("audit events wait in the journal: shipping to MongoDB failed (%s)",
                                type(exc).__name__ if isinstance(exc, ConnectionFailure) else exc)
                failing = True
            else:
                if failing:
                    log.info("audit events are shipped to MongoDB again")
                failing = False

    async def _ship_all(self) -> None:
        async with self._ship_lock:
            assert self._folder is not None
            ours = {j.path for j in self._retired} | ({self._file.path} if self._file is not None else set())
            if self._file is not None:
                await self._ship(self._file)
                if self._file.size >= self._rotate_bytes:  # new appends go to a fresh file from now on
                    self._retired.append(self._file)
                    self._file = None
            for journal in list(self._retired):
                await self._ship(journal)
                if journal.writers == 0 and journal.shipped >= journal.size:  # no append still in flight
                    journal.close(remove=True)
                    self._retired.remove(journal)
            for path in sorted(self._folder.glob("*.ndjson")):
                if path in ours:
                    continue
                orphan = _Journal.adopt(path)  # left by a process that stopped: ours to ship, if unlocked
                if orphan is not None:
                    await self._ship(orphan)
                    orphan.close(remove=True)

    async def _ship(self, journal: _Journal) -> None:
        while True:
            lines, end = journal.unshipped(SHIP_BATCH)
            if not lines:
                return
            # Indexing an event costs ~0.25 ms: a batch is built in a worker thread, not on the event loop.
            docs = await asyncio.to_thread(self._documents, lines)
            try:
                await self.collection.insert_many(docs, ordered=False)
            except BulkWriteError as exc:  # shipped before, by us or a process that died after inserting
                if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
                    raise
            journal.shipped = end


    def _documents(self, lines: list[bytes]) -> list[Document]:
        # Our own lines, written by `dumps` from events that hold no JSON numbers: orjson alone reads
        # them back exactly, without the checks client JSON needs.
        return [self.document(orjson.loads(line)) for line in lines]


class _Journal:
    """One process's journal file: appended to, synced in groups, and read back for shipping."""

    def __init__(self, path: Path, fd: int, size: int) -> None:
        self.path = path
        self.fd = fd
        self.size = size  # bytes written (and synced, once `append` returns)
        self.shipped = 0  # bytes already in MongoDB
        self._syncing: asyncio.Task[None] | None = None
        self._synced = size
        self.writers = 0  # appends in flight: the file is not closed under them

    @classmethod
    def create(cls, folder: Path) -> _Journal:
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        making = folder / f"{name}.new"
        fd = os.open(making, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours while we live
        path = making.rename(folder / f"{name}.ndjson")  # visible to others only once locked
        return cls(path, fd, 0)

    @classmethod
    def adopt(cls, path: Path) -> _Journal | None:
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a live process's journal
            os.close(fd)
            return None
        return cls(path, fd, os.fstat(fd).st_size)

    async def append(self, data: bytes) -> None:
        self.writers += 1
        try:
            os.write(self.fd, data)
            self.size += len(data)
            target = self.size
            while self._synced < target:  # one fdatasync covers every append before it began
                if self._syncing is None or self._syncing.done():
                    self._syncing = asyncio.create_task(self._sync())
                await asyncio.shield(self._syncing)
        finally:
            self.writers -= 1

    async def _sync(self) -> None:
        upto = self.size
        # In a worker thread, always: a sync that usually takes 0.1 ms can take 300 ms when the file system
        # is flushing other writes, and on the event loop that would stall every request of the process.
        await asyncio.to_thread(os.fdatasync, self.fd)
        self._synced = max(self._synced, upto)

    def unshipped(self, most: int) -> tuple[list[bytes], int]:
        """Up to `most` whole lines after what is shipped, and the offset after them."""
        if self.shipped >= self.size:
            return [], self.shipped
        data = os.pread(self.fd, self.size - self.shipped, self.shipped)
        cut = data.rfind(b"\n") + 1  # a line being written is not whole yet
        lines = data[:cut].splitlines(keepends=True)[:most]
        return [line for line in lines if line.strip()], self.shipped + sum(len(line) for line in lines)

    def close(self, *, remove: bool) -> None:
        if remove:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        os.close(self.fd)

