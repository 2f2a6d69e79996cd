"""The `$export` job queue, kept in MongoDB, and the worker that runs its jobs.

Why a queue in the database
    An export runs for minutes, far longer than an HTTP request may wait, so
    kick-off only records a job and answers 202; a worker does the work. The
    job lives in the `jobs` collection rather than in the server's memory so
    that a restarted server, or another server process on the same database,
    still knows it: its status can be polled, and it is finished by whichever
    worker is alive.

Why leases
    A worker claims a job with one `find_one_and_update` (queued, or running
    with an expired lease → running, owned by it, leased for `lease`), so two
    workers never run the same job at once. While it works it renews the lease
    every few seconds (and records progress). A worker that dies (killed,
    machine lost) stops renewing; once the lease expires the job is claimed
    again and exported from scratch — with the same transaction time, so the
    files are the same. A job that has already killed `max_attempts` workers
    is marked failed instead of being tried forever. A worker that is shut
    down cleanly hands its job back (queued) at once.

Files
    Each attempt writes into a private staging folder inside the job's folder
    (`<exports>/<job id>/.partial-*`) and moves the finished files up only when
    the export is complete, so a slow worker that lost its lease and a new one
    never write the same file, and no half-written file is ever served.
    Cancelling deletes the job and its folder; a worker still busy with it
    notices at its next renewal (or at once, in the same process) and stops.
    A finished (complete or failed) job and its files are deleted `retention`
    after it finished, by whichever worker looks first: exports hold patient
    data and must not pile up on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pymongo import ASCENDING, IndexModel, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ConnectionFailure

from fhir_store.bulk.exporter import DEFAULT_SETTLE, Exporter, ExportRequest
from fhir_store.documents import Document
from fhir_store.errors import StoreError
from fhir_store.instants import now, utc
from fhir_store.store import FhirStore

log = logging.getLogger("emr.export")

JobStatus = Literal["queued", "running", "complete", "failed"]

DEFAULT_LEASE = timedelta(seconds=60)
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_RETENTION = timedelta(days=1)
#: How often a worker looks for finished jobs past their retention (at most).
_PURGE_EVERY_SECONDS = 60.0


@dataclass(frozen=True)
class Job:
    """One `$export` request and how far it has got."""

    id: str
    status: JobStatus
    request: ExportRequest
    request_url: str
    transaction_time: datetime
    created: datetime
    attempts: int = 0
    owner: str | None = None
    lease_until: datetime | None = None
    progress: dict[str, int] = field(default_factory=dict)
    output: list[dict[str, Any]] = field(default_factory=list)  # {type, file (name), count}
    error: str | None = None
    completed: datetime | None = None  # when it finished (complete or failed)
    requested_by: str | None = None  # the caller who kicked it off: only they see its status and files

    @classmethod
    def from_document(cls, doc: Document) -> Job:
        return cls(id=doc["_id"], status=doc["status"], request=ExportRequest.from_document(doc["request"]),
                   request_url=doc["request_url"], transaction_time=utc(doc["transaction_time"]),
                   created=utc(doc["created"]), attempts=doc.get("attempts", 0), owner=doc.get("owner"),
                   lease_until=utc(doc["lease_until"]) if doc.get("lease_until") else None,
                   progress=dict(doc.get("progress") or {}), output=list(doc.get("output") or []),
                   error=doc.get("error"), completed=utc(doc["completed"]) if doc.get("completed") else None,
                   requested_by=doc.get("requested_by"))


class JobQueue:
    """The `jobs` collection: submit, claim with a lease, renew, finish, cancel."""

    def __init__(self, db: AsyncDatabase[Document], *, lease: timedelta = DEFAULT_LEASE,
                 max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> None:
        self.jobs = db["jobs"]
        self.lease = lease
        self.max_attempts = max_attempts

    async def ensure_indexes(self) -> None:
        await self.jobs.create_indexes([IndexModel([("status", ASCENDING), ("created", ASCENDING)],
                                                   name="status_created")])

    async def submit(self, request: ExportRequest, request_url: str,
                     transaction_time: datetime | None = None, *, requested_by: str | None = None) -> Job:
        """Record a new job; its transaction time is now unless given."""
        moment = now()
        doc: Document = {"_id": uuid.uuid4().hex, "kind": "export", "status": "queued",
                         "request": request.to_document(), "request_url": request_url,
                         "transaction_time": transaction_time or moment, "created": moment, "attempts": 0,
                         "requested_by": requested_by}
        await self.jobs.insert_one(doc)
        return Job.from_document(doc)

    async def get(self, job_id: str) -> Job | None:
        doc = await self.jobs.find_one({"_id": job_id})
        return Job.from_document(doc) if doc is not None else None

    async def claim(self, owner: str) -> Job | None:
        """Take the oldest job that is queued or whose worker's lease has run out."""
        moment = now()
        await self.jobs.update_many(
            {"status": "running", "lease_until": {"$lt": moment}, "attempts": {"$gte": self.max_attempts}},
            {"$set": {"status": "failed", "owner": None, "lease_until": None,
                      "error": f"The export was abandoned by {self.max_attempts} workers in a row "
                               "(each stopped without finishing); see the server log"}})
        doc = await self.jobs.find_one_and_update(
            {"$or": [{"status": "queued"}, {"status": "running", "lease_until": {"$lt": moment}}]},
            {"$set": {"status": "running", "owner": owner, "lease_until": moment + self.lease, "started": moment},
             "$inc": {"attempts": 1}},
            sort=[("created", ASCENDING)], return_document=ReturnDocument.AFTER)
        return Job.from_document(doc) if doc is not None else None

    async def renew(self, job_id: str, owner: str, progress: dict[str, int] | None = None) -> bool:
        """Extend the lease; False when the job is no longer ours (cancelled, or taken over)."""
        update: Document = {"lease_until": now() + self.lease}
        if progress is not None:
            update["progress"] = progress
        result = await self.jobs.update_one({"_id": job_id, "owner": owner, "status": "running"}, {"$set": update})
        return result.matched_count == 1

    async def complete(self, job_id: str, owner: str, output: list[dict[str, Any]],
                       progress: dict[str, int]) -> bool:
        return await self._finish(job_id, owner, {"status": "complete", "output": output, "progress": progress,
                                                  "completed": now()})

    async def fail(self, job_id: str, owner: str, error: str) -> bool:
        return await self._finish(job_id, owner, {"status": "failed", "error": error, "completed": now()})

    async def release(self, job_id: str, owner: str) -> bool:
        """Hand a job back to the queue (its worker is shutting down), so the next worker starts it at once."""
        return await self._finish(job_id, owner, {"status": "queued", "progress": {}})

    async def delete(self, job_id: str) -> bool:
        return (await self.jobs.delete_one({"_id": job_id})).deleted_count == 1

    async def finished_before(self, moment: datetime) -> list[str]:
        """Ids of the jobs that finished (complete or failed) before `moment`."""
        cursor = self.jobs.find({"status": {"$in": ["complete", "failed"]}, "completed": {"$lt": moment}},
                                {"_id": True})
        return [str(doc["_id"]) async for doc in cursor]

    async def expire_lease(self, job_id: str) -> None:
        """Make a running job claimable now, as if its worker had died long ago (operators, tests)."""
        await self.jobs.update_one({"_id": job_id, "status": "running"},
                                   {"$set": {"lease_until": now() - timedelta(seconds=1)}})

    async def _finish(self, job_id: str, owner: str, values: Document) -> bool:
        result = await self.jobs.update_one({"_id": job_id, "owner": owner, "status": "running"},
                                            {"$set": {**values, "owner": None, "lease_until": None}})
        return result.matched_count == 1


@dataclass
class _Attempt:
    """The worker's live view of the job it is running."""

    job: Job
    task: asyncio.Task[Any] | None = None
    progress: dict[str, int] = field(default_factory=dict)
    lost: bool = False


class ExportWorker:
    """Claims export jobs and runs them, one at a time, as an asyncio task of the server process."""

    def __init__(self, store: FhirStore, exports_dir: Path, *, queue: JobQueue | None = None,
                 poll_interval: float = 1.0, settle: timedelta = DEFAULT_SETTLE,
                 retention: timedelta = DEFAULT_RETENTION, owner: str | None = None) -> None:
        self.store = store
        self.queue = queue or JobQueue(store.db)
        self.exports_dir = exports_dir
        self.poll_interval = poll_interval
        self.settle = settle
        self.retention = retention
        self._purged_at = float("-inf")
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._current: _Attempt | None = None

    # ---- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="export-worker")

    async def stop(self) -> None:
        """Stop; a job in progress goes back to the queue."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    def wake(self) -> None:
        """A job was just submitted: look now instead of at the next poll."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                await self.purge()
                job = await self.run_once()
            except asyncio.CancelledError:
                raise
            except ConnectionFailure as exc:  # the database is away: one line, and try again at the next poll
                log.warning("the export worker waits for the database (%s)", type(exc).__name__)
                job = None
            except Exception:  # a bug: keep the worker alive, and say where
                log.exception("the export worker could not claim or run a job")
                job = None
            if job is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_interval)
                self._wake.clear()

    # ---- jobs ----------------------------------------------------------------------------

    def job_dir(self, job_id: str) -> Path:
        return self.exports_dir / job_id

    async def cancel(self, job_id: str) -> bool:
        """Delete a job and its files; stop it if this worker is running it. False if there was no such job."""
        existed = await self.queue.delete(job_id)
        current = self._current
        if current is not None and current.job.id == job_id and current.task is not None:
            current.lost = True
            current.task.cancel()
        await asyncio.to_thread(shutil.rmtree, self.job_dir(job_id), True)
        return existed

    async def purge(self, *, force: bool = False) -> int:
        """Delete the jobs (and files) finished longer than `retention` ago; looks at most once a minute
        (or as often as the retention is short) unless `force`. How many were deleted."""
        moment = time.monotonic()
        if not force and moment - self._purged_at < min(_PURGE_EVERY_SECONDS, self.retention.total_seconds()):
            return 0
        self._purged_at = moment
        expired = await self.queue.finished_before(now() - self.retention)
        for job_id in expired:
            await self.cancel(job_id)
            log.info("export %s: deleted with its files, finished more than %s ago", job_id, self.retention)
        return len(expired)

    def expires(self, job: Job) -> datetime | None:
        """When a finished job and its files will be deleted."""
        return job.completed + self.retention if job.completed is not None else None

    async def run_once(self) -> Job | None:
        """Claim one job and run it to the end; the job as it ended, or None when nothing was waiting."""
        job = await self.queue.claim(self.owner)
        if job is None:
            return None
        await self._process(job)
        return await self.queue.get(job.id) or job

    async def _process(self, job: Job) -> None:
        final = self.job_dir(job.id)
        staging = final / f".partial-{uuid.uuid4().hex[:12]}"
        attempt = _Attempt(job)

        async def progress(rtype: str, count: int, done: bool) -> None:
            attempt.progress[rtype] = count

        # Earlier attempts' workers lost their lease: whatever they left half-written goes.
        await asyncio.to_thread(_clear_partials, final)
        exporter = Exporter(self.store)
        attempt.task = asyncio.create_task(exporter.export(job.request, staging, transaction_time=job.transaction_time,
                                                           settle=self.settle, progress=progress))
        heartbeat = asyncio.create_task(self._heartbeat(attempt))
        self._current = attempt
        log.info("export %s: started (attempt %d, transaction time %s)", job.id, job.attempts, job.transaction_time)
        try:
            result = await attempt.task
        except asyncio.CancelledError:
            await asyncio.to_thread(shutil.rmtree, staging, True)
            if not attempt.lost:  # shutting down: hand the job back, then let the cancellation through
                await self.queue.release(job.id, self.owner)
                raise
            log.info("export %s: stopped (cancelled, or taken over by another worker)", job.id)
            await self._forget_if_cancelled(job.id)
            return
        except Exception as exc:
            await asyncio.to_thread(shutil.rmtree, staging, True)
            if isinstance(exc, StoreError):
                message = str(exc)
            else:
                log.exception("export %s failed", job.id)
                message = "The export failed with an internal error; the details are in the server log"
            await self.queue.fail(job.id, self.owner, message)
            return
        finally:
            heartbeat.cancel()
            self._current = None
        await asyncio.to_thread(_publish, [f.path for f in result.files], staging, final)
        output = [{"type": f.type, "file": f.path.name, "count": f.count} for f in result.files]
        if await self.queue.complete(job.id, self.owner, output, attempt.progress):
            log.info("export %s: complete, %d resources in %d files", job.id, result.total, len(output))
        else:
            await self._forget_if_cancelled(job.id)

    async def _heartbeat(self, attempt: _Attempt) -> None:
        interval = min(self.queue.lease.total_seconds() / 3, 5.0)
        while True:
            await asyncio.sleep(interval)
            try:
                ours = await self.queue.renew(attempt.job.id, self.owner, dict(attempt.progress))
            except Exception:  # the database is away for a moment: try again; the lease covers several misses
                log.warning("export %s: could not renew the lease", attempt.job.id, exc_info=True)
                continue
            if not ours:
                attempt.lost = True
                if attempt.task is not None:
                    attempt.task.cancel()
                return

    async def _forget_if_cancelled(self, job_id: str) -> None:
        """Files of a job cancelled while it ran would be orphans: remove them."""
        if await self.queue.get(job_id) is None:
            await asyncio.to_thread(shutil.rmtree, self.job_dir(job_id), True)


def _clear_partials(final: Path) -> None:
    for folder in final.glob(".partial-*"):
        shutil.rmtree(folder, ignore_errors=True)


def _publish(files: list[Path], staging: Path, final: Path) -> None:
    """Move finished files from the staging folder into the job's folder (each move is atomic)."""
    for path in files:
        os.replace(path, final / path.name)
    shutil.rmtree(staging, ignore_errors=True)
