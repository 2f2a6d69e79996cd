"""Bulk export: every resource as it was at one instant, as NDJSON files, one per resource type.

Why a point in time
    An export of a live hospital database takes minutes, and clinicians keep
    writing meanwhile. A plain scan would mix old and new states (an Encounter
    exported before its update, the Observations written after it exported
    after theirs), so the files would describe no moment that ever existed.
    FHIR Bulk Data asks for a `transactionTime`: everything as of that instant,
    nothing later.

Why not a database snapshot
    MongoDB can read at a snapshot, but a snapshot read is bounded by the
    server's history window (`minSnapshotHistoryWindowInSeconds`, 5 minutes by
    default), pins WiredTiger history in memory while it lasts, and is not
    offered by every server we run on. The store keeps every version anyway, so
    the snapshot is rebuilt from versions instead:

    - T (`transaction_time`) is recorded at kick-off;
    - each type's current documents in `resources` are walked once;
    - a document with `ts <= T` is the version that was current at T: it is
      emitted as is (a deletion, i.e. a tombstone, emits nothing);
    - a document with `ts > T` was written after T: the version current at T is
      the latest one in `history` with `ts <= T` (emitted unless it is a
      deletion; none at all means the resource was created after T).

    Versions are archived in `history` *before* the current document is
    replaced (see `store.py`), so whenever the walk sees a document newer than
    T, the version it superseded is already there. The walk is a range of the
    `type_id` index (see `_type_range`): an update never changes `_id`, so
    every document is met exactly once however many writes happen during the
    export. Each batch reads the latest data; no snapshot or transaction is
    held, so an export may take hours without weighing on the database.

Writes in flight at T
    A write stamps its version (`ts`) before storing it, and a transaction
    Bundle stamps each entry as it runs but makes them all visible only at its
    commit. A version stamped before T but made visible after T would be missed
    if the walk read its document in between; worse, a transaction committing
    while the walk runs would appear half. So an export starts reading only
    once the store's write horizon (`horizon.py`) has passed T: every writer,
    in every process, has finished what it stamped before T. That is
    milliseconds, or as long as the slowest transaction open at T. `settle`
    (65 s by default: MongoDB aborts a transaction older than 60 s) caps the
    wait, for a writer that died mid-write and whose record has not expired.
    T is still the kick-off instant.

Memory
    Documents are read `batch_size` at a time, the superseded versions of a
    batch's late documents are fetched in one query, and lines go straight to
    the file: memory use does not grow with the database. A selective export
    (group, `_since`) walks only the small fields (`ts`, `cp`, ...) and
    fetches the resources it keeps by `_id`, a batch at a time.

Levels
    - system: every resource of the requested types;
    - patient: every resource in any Patient compartment (the Patients
      themselves included, each being in its own compartment);
    - group: the compartments of the Group's Patient members, as the Group was
      at T (members marked `inactive` are no longer members).

    Membership and `_since` are judged on the version exported (the version at
    T), so an Observation moved from one patient to another after T is
    exported with the patient it had at T. A `_typeFilter` is a search, and
    searches see current versions: a resource is exported (as it was at T)
    when its current version matches the filter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Literal

from fhir_store import fhir_json
from fhir_store.compartments import compartments
from fhir_store.documents import STAMP_AND_RESOURCE, STAMP_FIELDS, Document, Stamp, stamp, type_range
from fhir_store.errors import InvalidRequest, ResourceNotFound
from fhir_store.ids import check_id, current_key
from fhir_store.instants import now, utc
from fhir_store.resource_types import resource_types
from fhir_store.search.extract import normalise_reference
from fhir_store.search.indexing import indexer
from fhir_store.store import FhirStore

Level = Literal["system", "patient", "group"]
LEVELS: tuple[Level, ...] = ("system", "patient", "group")

#: Wait this long after T before reading, so writes stamped before T have landed (see the module docstring):
#: MongoDB's default transaction lifetime limit (60 s) and a margin.
DEFAULT_SETTLE = timedelta(seconds=65)

#: Called when a type with documents starts (count 0), after each batch, and at its end (done=True).
Progress = Callable[[str, int, bool], Awaitable[None]]



@dataclass(frozen=True)
class ExportRequest:
    """What to export: level, types (empty: all the level covers), `_since`, the Group of a group export, and
    `_typeFilter`s: (type, search query) pairs; a type with filters exports only what one of them matches."""

    level: Level = "system"
    types: tuple[str, ...] = ()
    since: datetime | None = None
    group_id: str | None = None
    type_filters: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise InvalidRequest(f"Unknown export level '{self.level}'")
        if (self.level == "group") != (self.group_id is not None):
            raise InvalidRequest("A group export, and only a group export, names a Group")
        if self.group_id is not None:
            check_id(self.group_id)
        known = resource_types()
        for rtype in self.types:
            if rtype not in known:
                raise InvalidRequest(f"_type names an unknown resource type '{rtype}'")
        for rtype, query in self.type_filters:
            if rtype not in known or not query:
                raise InvalidRequest(f"_typeFilter takes Type?criteria with a known type, not '{rtype}?{query}'")
        if self.since is not None:
            object.__setattr__(self, "since", utc(self.since))

    @classmethod
    def parse_type_filter(cls, value: str) -> tuple[str, str]:
        rtype, _, query = value.partition("?")
        return rtype.strip(), query

    def to_document(self) -> Document:
        return {"level": self.level, "types": list(self.types), "since": self.since, "group_id": self.group_id,
                "type_filters": [list(f) for f in self.type_filters]}

    @classmethod
    def from_document(cls, doc: Document) -> ExportRequest:
        return cls(level=doc["level"], types=tuple(doc.get("types") or ()), since=doc.get("since"),
                   group_id=doc.get("group_id"),
                   type_filters=tuple((str(t), str(q)) for t, q in doc.get("type_filters") or ()))


@dataclass(frozen=True)
class ExportFile:
    """One output file: a resource type, where its NDJSON is, and how many resources (lines) it holds."""

    type: str
    path: Path
    count: int


@dataclass(frozen=True)
class ExportResult:
    transaction_time: datetime
    files: list[ExportFile] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(f.count for f in self.files)


class Exporter:
    """Writes the resources as they were at a transaction time into `<out_dir>/<Type>.ndjson` files."""

    def __init__(self, store: FhirStore, *, batch_size: int = 500) -> None:
        self._store = store
        self.resources = store.resources
        self.history = store.history_versions
        self.batch_size = batch_size
        self._index = indexer(store.registry)

    @staticmethod
    def types_for(request: ExportRequest) -> list[str]:
        """The types an export covers, in the order they are written."""
        if request.level == "system":
            covered = list(resource_types())
        else:  # only these types can be in a Patient compartment
            covered = [t for t, params in compartments()["Patient"].items() if params] + ["Patient"]
        wanted = set(request.types) if request.types else None
        return sorted({t for t in covered if wanted is None or t in wanted})

    async def estimate(self, resource_type: str) -> int:
        """Documents of a type, deletions and later versions included: an upper bound, for progress bars."""
        return await self.resources.count_documents(_walk(resource_type))

    async def export(self, request: ExportRequest, out_dir: Path, *, transaction_time: datetime | None = None,
                     settle: timedelta = DEFAULT_SETTLE, progress: Progress | None = None) -> ExportResult:
        """Export everything `request` selects as it was at `transaction_time` (default: now).

        Types with nothing to export get no file. The caller owns `out_dir` and
        should hand over an empty one: existing files of exported types are
        overwritten, others are left alone.
        """
        at = utc(transaction_time) if transaction_time is not None else now()
        at = at.replace(microsecond=at.microsecond // 1000 * 1000)  # what BSON dates keep
        types = self.types_for(request)
        members = await self._group_members(str(request.group_id), at) if request.level == "group" else None
        await self._store.settled(at, timeout=settle)
        out_dir.mkdir(parents=True, exist_ok=True)
        files = []
        for rtype in types:
            written = await self._export_type(rtype, request, at, members, out_dir, progress)
            if written is not None:
                files.append(written)
        return ExportResult(at, files)

    # ---- one type ----------------------------------------------------------------------

    async def _export_type(self, rtype: str, request: ExportRequest, at: datetime, members: frozenset[str] | None,
                           out_dir: Path, progress: Progress | None) -> ExportFile | None:
        walk = _walk(rtype)
        # Most of the 141 types are empty: one cheap probe, and no progress noise for them. (Documents are
        # never removed, only tombstoned, so a type without documents now had none at T either.)
        if await self.resources.find_one(walk, {"_id": True}) is None:
            return None
        if progress:
            await progress(rtype, 0, False)
        # `_typeFilter`: the ids its searches match now (searches see current versions; see the docstring).
        filters = [query for t, query in request.type_filters if t == rtype]
        wanted = set().union(*[await self._store.ids_matching(rtype, q) for q in filters]) if filters else None
        # A selective export (a Group, `_since`, a filter) walks the small fields and fetches the resources it
        # keeps; one that keeps most of them (system, patient) reads them all in the walk.
        lean = request.level == "group" or request.since is not None or wanted is not None
        cursor = self.resources.find(walk, STAMP_FIELDS if lean else STAMP_AND_RESOURCE, batch_size=self.batch_size)
        path = out_dir / f"{rtype}.ndjson"
        out: IO[bytes] | None = None
        count = 0
        try:
            batch: list[Stamp] = []
            async for doc in cursor:
                if wanted is not None and doc["id"] not in wanted:
                    continue
                batch.append(stamp(doc))
                if len(batch) < self.batch_size:
                    continue
                lines = await self._lines(rtype, batch, request, at, members, lean)
                batch = []
                out = await _write(out, path, lines)
                count += len(lines)
                if progress:
                    await progress(rtype, count, False)
            lines = await self._lines(rtype, batch, request, at, members, lean) if batch else []
            out = await _write(out, path, lines)
            count += len(lines)
        finally:
            await cursor.close()
            if out is not None:
                await asyncio.to_thread(out.close)
        if progress:
            await progress(rtype, count, True)
        return ExportFile(rtype, path, count) if count else None

    async def _lines(self, rtype: str, batch: list[Stamp], request: ExportRequest, at: datetime,
                     members: frozenset[str] | None, lean: bool) -> list[bytes]:
        """NDJSON lines of a batch of walked documents, each replaced by its version at T when newer."""
        kept = [d for d in batch if d.ts <= at and not d.deleted and _in_scope(request, members, d.ts, d.cp)]
        late = [d.id for d in batch if d.ts > at]
        fetched: dict[str, Stamp] = {}
        if lean and kept:
            keys = [current_key(rtype, d.id) for d in kept]
            found = self.resources.find({"_id": {"$in": keys}}, STAMP_AND_RESOURCE)
            fetched = {d.id: d for d in [stamp(doc) async for doc in found]}
            # Updated between the walk and the fetch: the version the walk selected is in history now.
            late += [rid for rid, d in fetched.items() if d.ts > at]
        at_t = await self._versions_at(rtype, late, at) if late else {}
        selected = {d.id for d in kept}
        lines = []
        for walked in batch:
            rid = walked.id
            version: Stamp | None
            if rid in selected:
                current = fetched.get(rid, walked) if lean else walked
                version = current if current.ts <= at else at_t.get(rid)
            elif walked.ts > at:
                version = at_t.get(rid)
                if version is not None and not version.deleted and not self._archived_in_scope(
                        version, request, members):
                    version = None
            else:
                continue
            if version is None or version.deleted:
                continue  # created after T, or deleted at T
            lines.append(fhir_json.dumps(version.res, newline=True))
        return lines

    async def _versions_at(self, rtype: str, ids: Iterable[str], at: datetime) -> dict[str, Stamp]:
        """For each id, its latest archived version with lastUpdated <= T (absent: created after T)."""
        found: dict[str, Stamp] = {}
        async for doc in self.history.find({"type": rtype, "id": {"$in": list(ids)}}, STAMP_AND_RESOURCE):
            version = stamp(doc)
            best = found.get(version.id)
            if version.ts <= at and (best is None or version.vid > best.vid):
                found[version.id] = version
        return found

    def _archived_in_scope(self, version: Stamp, request: ExportRequest, members: frozenset[str] | None) -> bool:
        """`_since` and the level's rule for an archived version, whose compartments are not stored."""
        if request.level == "system" or version.res is None:
            return _in_scope(request, members, version.ts, [])
        return _in_scope(request, members, version.ts, self._index(version.res).cp)

    async def _group_members(self, group_id: str, at: datetime) -> frozenset[str]:
        """The Group's Patient members ("Patient/id") as the Group was at T."""
        doc = await self.resources.find_one({"_id": current_key("Group", group_id)}, STAMP_AND_RESOURCE)
        version = stamp(doc) if doc is not None else None
        if version is not None and version.ts > at:
            version = (await self._versions_at("Group", [group_id], at)).get(group_id)
        if version is None or version.deleted or version.res is None:
            raise ResourceNotFound(f"Group/{group_id} did not exist at the export's transaction time")
        group = version.res
        refs = []
        for member in group.get("member") or []:
            reference = (member.get("entity") or {}).get("reference")
            if member.get("inactive") is True or not isinstance(reference, str):
                continue
            ref = normalise_reference(reference)
            if ref.startswith("Patient/") and ref.count("/") == 1:
                refs.append(ref)
        return frozenset(refs)


def _walk(rtype: str) -> Document:
    """Every document of a type (`documents.type_range`), and nothing else.

    No other condition goes into the walk's query, so every planner (MongoDB's, the embedded server's)
    walks an index whose keys no update changes — `type_id` or `_id_` — and meets each document exactly
    once. A condition on `ts` or `cp` could let a planner walk an index whose entry moves when a resource
    is updated during the export, and miss it. Filtering happens here instead, and index hints are not
    used: the embedded server ignores the bounds of a hinted index and reads all of it.
    """
    return type_range(rtype)


def _in_scope(request: ExportRequest, members: frozenset[str] | None, ts: datetime, cp: list[str]) -> bool:
    """`_since` and the level's compartment rule, for a version's lastUpdated and compartments."""
    if request.since is not None and utc(ts) < request.since:
        return False
    if request.level == "patient":
        return any(c.startswith("Patient/") for c in cp)
    if members is not None:
        return not members.isdisjoint(cp)
    return True


async def _write(out: IO[bytes] | None, path: Path, lines: list[bytes]) -> IO[bytes] | None:
    """Append lines, opening the file on the first ones (a type with nothing to export gets no file).

    File I/O runs in a thread: the export shares its event loop with the API.
    """
    if not lines:
        return out
    if out is None:
        out = await asyncio.to_thread(path.open, "wb")
    await asyncio.to_thread(out.write, b"".join(lines))
    return out
