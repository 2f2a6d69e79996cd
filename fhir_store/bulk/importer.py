"""Bulk import: FHIR Bundles, NDJSON and single resources from files, into the store.

What it reads
    - `*.json`, `*.json.gz`: a FHIR Bundle (transaction, batch, collection,
      searchset, history), read entry by entry with `ijson` so a 2 GB Bundle
      never sits in memory; or a single resource (read whole). A `document` or
      `message` Bundle is one resource in its own right (its entries refer to
      each other within it) and is stored whole, as a Bundle.
    - `*.ndjson`, `*.ndjson.gz`: one resource per line (FHIR Bulk Data format).
    Folders are searched recursively for those suffixes.

How it writes
    Through the `FhirStore` methods, so every resource gets the API's
    validation, NFC normalisation, search-index values and versioning. Writes
    run `concurrency` at a time (an asyncio semaphore): validation is CPU in
    this process while the database works on the previous writes. Files are
    imported one after the other, so a later file sees everything an earlier
    one wrote.

Idempotency: re-running the same files creates nothing and makes no version
    Every resource is written under an id that depends only on the file's
    content, never on a server-assigned one:
    - a resource with an `id` (NDJSON, single files, PUT entries, collection
      entries) is written with `store.update` (update-as-create); an update
      that changes nothing makes no version;
    - a Bundle entry whose `fullUrl` is `urn:uuid:X` gets id X (or, when X is
      not a valid FHIR id, a uuid5 of the fullUrl); an absolute fullUrl ending
      in `Type/id` gets that id; and every `reference` to the fullUrl anywhere
      in the Bundle's resources becomes `Type/id`;
    - a resource with neither gets a uuid5 of its canonical JSON, so the same
      content gets the same id on every run.
    POST entries (without `ifNoneExist`) are *created once*: created with
    their derived id, and left as stored when that id already exists (counted
    as `existing`). A POST never changes an existing resource, and the same
    resource often comes in several files with different content: Synthea's
    smart-on-fhir patient Bundles embed their Organizations and Practitioners
    without Synthea's utilisation extensions that `hospitalInformation*` has.
    With update semantics those copies would overwrite each other in turn and
    every re-run would add versions; created once, the first copy imported is
    kept and a re-run changes nothing. To correct data, import it as PUT
    entries or NDJSON (updates).

    Entries with `request.ifNoneExist` use conditional-create semantics: they
    are created with their derived id unless a resource matching the criteria
    *or* that id already exists. Updating by the derived id instead would be
    idempotent for files imported here but would ignore what the sender asked
    for: an Organization already registered under another id (by the API, or
    by another archive) would be duplicated, and every conditional reference
    to it (`Organization?identifier=...`) would then match two resources and
    fail. Conditional creates still have a stable id when they create, and a
    re-run finds the match (or the id) and writes nothing. Without a fullUrl
    or id the server assigns the id; the criteria keep re-runs idempotent.

    `PUT Type?criteria` entries are conditional updates. The ids of
    conditional creates and updates are known only once they have run, so a
    Bundle's conditional entries are written first (a pass of their own), and
    references to their fullUrls are rewritten to the resources they created
    or matched. (A conditional entry's own references to another conditional
    entry use that entry's fullUrl id.)

Conditional references
    A `reference` like `Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|123`
    is resolved with `store.find`: exactly one match becomes `Practitioner/<id>`;
    none or several reject the resource with that reason. The resource it
    names must already be stored: by an earlier file, or by a conditional
    entry of the same Bundle (those go first). Other resources of the same file
    are written concurrently, so they may not be there yet; hence the file
    order below.

    A `urn:uuid:` / `urn:oid:` reference that is the fullUrl of no entry of its
    Bundle rejects the resource: stored as it is it would point nowhere, and
    since a POST entry is created once, a re-run with the file mended would
    not correct it. (A truncated file's resources that refer past the break
    are rejected this way, and come in with the mended file.)

File order
    Files that others point at are imported first: batch Bundles, Synthea's
    `hospitalInformation*` / `practitionerInformation*` files, and files named
    after a directory resource type (`Organization*`, `Location*`,
    `Practitioner*`); then everything else, each group in path order. That is
    what Synthea's fhir-data-pipes output needs (its patient Bundles refer to
    the hospital and practitioner batch files by conditional references), and
    for smart-on-fhir it keeps the hospital files' richer Organization and
    Practitioner copies. Data with other dependencies can be imported in two
    runs, the referenced files first.

Streaming a Bundle
    Pass 1 reads every entry to build the fullUrl -> `Type/id` map (and finds
    the conditional entries); pass 2 writes the conditional entries; pass 3
    writes the rest. Only the map (about 100 bytes per entry with a fullUrl)
    stays in memory; reading the file again is cheap next to validating and
    writing it.

Failures
    A resource that cannot be stored is reported (file, `line N` or
    `Bundle.entry[N]`, type, id, the store's reasons) and the run goes on. A
    truncated or corrupt file is reported with where it breaks; everything
    before the break is imported. Losing the database connection ends the
    run (it would fail every write).

Where the parts live
    `files` finds and reads the files (and puts them in order), `planning`
    decides from each entry alone how it is written (and derives the ids),
    `progress` turns bytes read into progress calls; this module writes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from pymongo.errors import ConnectionFailure, PyMongoError

from fhir_store import fhir_json
from fhir_store.bulk.files import (
    CORRUPT_ERRORS,
    CorruptFile,
    bundle_entries,
    file_kind,
    import_order,
    numbered_lines,
    open_file,
    peek,
)
from fhir_store.bulk.planning import Mode, Plan, Rejected, Scan, Unresolved, content_id, plan_entry, rewrite_full_urls
from fhir_store.bulk.progress import ImportProgress, Progress
from fhir_store.bulk.rejection import Rejection
from fhir_store.errors import ResourceExists, StoreError
from fhir_store.references import ConditionalReferences
from fhir_store.store import FhirStore

__all__ = ["BulkImporter", "ImportSummary", "Progress", "Rejection", "import_order"]

log = logging.getLogger(__name__)

#: Bundle types whose entries are imported one by one; any other Bundle is stored whole.
ENTRY_BUNDLE_TYPES = frozenset({"transaction", "batch", "collection", "searchset", "history",
                                "transaction-response", "batch-response"})

_CACHE_LIMIT = 100_000  # conditional references remembered per run


@dataclass
class ImportSummary:
    """What a run did. `written` = created + updated (resources that got a new version)."""

    files: int = 0
    read: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0  # an update that found the same content
    existing: int = 0  # a create (POST / ifNoneExist) whose resource was already stored: left as is
    rejected: list[Rejection] = field(default_factory=list)
    by_type: dict[str, Counter[str]] = field(default_factory=dict)  # type -> outcome -> count
    bytes: int = 0
    seconds: float = 0.0

    @property
    def written(self) -> int:
        return self.created + self.updated

    @property
    def resources_per_second(self) -> float:
        return self.read / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"files": self.files, "read": self.read, "written": self.written, "created": self.created,
                "updated": self.updated, "unchanged": self.unchanged, "existing": self.existing,
                "rejected": len(self.rejected), "bytes": self.bytes, "seconds": round(self.seconds, 3),
                "resourcesPerSecond": round(self.resources_per_second, 1),
                "byType": {t: dict(sorted(c.items())) for t, c in sorted(self.by_type.items())}}


@dataclass
class _Item:
    file: str
    position: str
    resource: dict[str, Any]
    plan: Plan
    full_url: str | None = None
    urls: dict[str, str | None] | None = None  # the Bundle's fullUrl -> "Type/id" (None: not importable)
    truncated: bool = False  # the Bundle's file breaks before its end


class BulkImporter:
    """Imports files into one store; one instance per run.

    `progress` is called at most every 0.1 s (and at the end) with (bytes
    done, bytes total, resources done). `on_reject` is called with each
    rejection as it happens, so a caller can write them out while the run
    goes on; they are also collected in the summary.
    """

    def __init__(self, store: FhirStore, *, concurrency: int = 8, progress: Progress | None = None,
                 on_reject: Callable[[Rejection], None] | None = None) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.store = store
        self.concurrency = concurrency
        self.progress = progress
        self.on_reject = on_reject
        self.summary = ImportSummary()
        self._references = ConditionalReferences(store.find, limit=_CACHE_LIMIT)
        self._semaphore = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._fatal: BaseException | None = None
        # Resources done: read, and written or rejected.
        self._progress = ImportProgress(progress, lambda: self.summary.read - len(self._tasks))

    async def run(self, paths: Sequence[Path]) -> ImportSummary:
        """Import every file under `paths` (in `import_order`) and return what happened."""
        started = time.monotonic()
        files, problems = import_order(paths)
        for problem in problems:
            self._reject(problem)
        sizes = {path: path.stat().st_size for path in files}
        self.summary.bytes = sum(sizes.values())
        self._progress.start_run(self.summary.bytes)
        try:
            for path in files:
                self._progress.start_file(sizes[path])
                self.summary.files += 1
                try:
                    await self._import_file(path)
                finally:
                    self._progress.finish_file()
        finally:
            self.summary.seconds = time.monotonic() - started
            self._progress.tick(force=True)
        return self.summary

    # ---- per file ---------------------------------------------------------------------------

    async def _import_file(self, path: Path) -> None:
        if file_kind(path) == "ndjson":
            await self._ndjson(path)
            return
        head = peek(path)
        if head.resource_type == "Bundle" and (head.bundle_type in ENTRY_BUNDLE_TYPES or head.bundle_type is None):
            await self._bundle(path)
        elif head.resource_type is not None or head.error is None:
            await self._single(path)
        else:
            self._reject(Rejection(str(path), "file", None, None, head.error))

    async def _single(self, path: Path) -> None:
        """A file holding one resource (or a document/message Bundle): read whole, written as it is."""
        try:
            with open_file(path) as (_raw, stream):
                data = fhir_json.loads(stream.read())
        except (orjson.JSONDecodeError, *CORRUPT_ERRORS) as exc:
            self._reject(Rejection(str(path), "file", None, None, f"not valid JSON: {exc}"))
            return
        self.summary.read += 1
        if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
            self._reject(Rejection(str(path), "resource", None, None, "the file holds no FHIR resource"))
            return
        await self._submit(self._standalone_item(str(path), "resource", data))
        await self._drain()

    async def _ndjson(self, path: Path) -> None:
        name = str(path)
        try:
            with open_file(path) as (raw, stream):
                self._progress.reading(raw)
                for number, line in numbered_lines(stream):
                    if not line.strip():
                        continue
                    self.summary.read += 1
                    position = f"line {number}"
                    try:
                        data = fhir_json.loads(line)
                    except orjson.JSONDecodeError as exc:
                        self._reject(Rejection(name, position, None, None, f"not valid JSON: {exc}"))
                        continue
                    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
                        self._reject(Rejection(name, position, None, None, "the line holds no FHIR resource"))
                        continue
                    await self._submit(self._standalone_item(name, position, data))
        except CorruptFile as exc:
            self._reject(Rejection(name, exc.position, None, None, exc.reason))
        finally:
            self._progress.reading(None)
        await self._drain()

    def _standalone_item(self, name: str, position: str, data: dict[str, Any]) -> _Item:
        rid = data.get("id") if isinstance(data.get("id"), str) else None
        plan = Plan(Mode.UPDATE, data["resourceType"], rid or content_id(data))
        return _Item(name, position, data, plan)

    async def _bundle(self, path: Path) -> None:
        name = str(path)
        scan = self._scan(path)
        todo = scan.conditional + scan.others or 1
        if scan.conditional:
            self._progress.start_pass(0.1, 0.9 * scan.conditional / todo)
            await self._write_entries(path, scan, conditional=True)
        self._progress.start_pass(0.1 + 0.9 * scan.conditional / todo, 0.9 * scan.others / todo)
        await self._write_entries(path, scan, conditional=False)
        if scan.corrupt is not None:
            self._reject(Rejection(name, scan.corrupt.position, None, None, scan.corrupt.reason))

    def _scan(self, path: Path) -> Scan:
        """Pass 1: the fullUrl map, which entries are conditional, and where the file ends or breaks."""
        scan = Scan()
        self._progress.start_pass(0.0, 0.1)
        try:
            for index, entry in self._entries(path):
                scan.complete = index + 1
                try:
                    plan = plan_entry(entry)
                except Rejected:
                    full_url = entry.get("fullUrl") if isinstance(entry, dict) else None
                    if isinstance(full_url, str):
                        scan.urls.setdefault(full_url, None)
                    scan.others += 1
                    continue
                full_url = entry.get("fullUrl")
                if isinstance(full_url, str):
                    if full_url in scan.urls:
                        scan.duplicates.add(index)
                    else:
                        rid = plan.resource_id
                        scan.urls[full_url] = f"{plan.resource_type}/{rid}" if rid else None
                if plan.conditional and index not in scan.duplicates:
                    scan.conditional += 1
                else:
                    scan.others += 1
                self._progress.tick()
        except CorruptFile as exc:
            scan.corrupt = exc
        return scan

    def _entries(self, path: Path, limit: int | None = None) -> Iterator[tuple[int, Any]]:
        """The Bundle's entries, streamed, with progress following the file."""
        return bundle_entries(path, limit=limit, reading=self._progress.reading)

    async def _write_entries(self, path: Path, scan: Scan, *, conditional: bool) -> None:
        """Pass 2 (conditional entries) or pass 3 (the others)."""
        name = str(path)
        with suppress(CorruptFile):  # the scan found the break and reports it
            for index, entry in self._entries(path, limit=scan.complete):
                position = f"Bundle.entry[{index}]"
                try:
                    plan = plan_entry(entry)
                except Rejected as exc:
                    if not conditional:
                        self.summary.read += 1
                        resource = entry.get("resource") if isinstance(entry, dict) else None
                        rtype, rid = _type_and_id(resource)
                        self._reject(Rejection(name, position, rtype, rid, str(exc)))
                    continue
                is_conditional = plan.conditional and index not in scan.duplicates
                if is_conditional != conditional:
                    continue
                self.summary.read += 1
                if index in scan.duplicates:
                    self._reject(Rejection(name, position, plan.resource_type, plan.resource_id,
                                           f"the fullUrl '{entry.get('fullUrl')}' is used by an earlier entry too"))
                    continue
                full_url = entry.get("fullUrl") if isinstance(entry.get("fullUrl"), str) else None
                await self._submit(_Item(name, position, entry["resource"], plan, full_url, scan.urls,
                                         scan.corrupt is not None))
        await self._drain()

    # ---- writing ----------------------------------------------------------------------------

    async def _submit(self, item: _Item) -> None:
        if self._fatal is not None:
            raise self._fatal
        await self._semaphore.acquire()
        task = asyncio.create_task(self._process(item))
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._semaphore.release()
        if not task.cancelled() and task.exception() is not None and self._fatal is None:
            self._fatal = task.exception()

    async def _drain(self) -> None:
        try:
            while self._tasks:
                await asyncio.wait(set(self._tasks))
        finally:
            if self._fatal is not None:
                for task in self._tasks:
                    task.cancel()
        if self._fatal is not None:
            raise self._fatal

    async def _process(self, item: _Item) -> None:
        plan = item.plan
        rtype = plan.resource_type
        try:
            await self._resolve_references(item)
            outcome, final_id = await self._write(item)
        except Rejected as exc:
            cut = isinstance(exc, Unresolved) and item.truncated
            self._failed(item, str(exc) + (" read before the file breaks" if cut else ""))
        except StoreError as exc:
            self._failed(item, _issues_text(exc))
        except ConnectionFailure:
            raise  # the database is gone: every further write would fail too
        except PyMongoError as exc:
            self._failed(item, f"the database refused it: {exc}")
        except Exception as exc:  # a bug must not stop a night's import; it is logged and reported
            log.exception("unexpected error importing %s %s", item.file, item.position)
            self._failed(item, f"unexpected error ({type(exc).__name__}): {exc}")
        else:
            setattr(self.summary, outcome, getattr(self.summary, outcome) + 1)
            self.summary.by_type.setdefault(rtype, Counter())[outcome] += 1
            if item.full_url and item.urls is not None and plan.conditional:
                item.urls[item.full_url] = f"{rtype}/{final_id}"
        finally:
            self._progress.tick()

    def _failed(self, item: _Item, reason: str) -> None:
        if item.full_url and item.urls is not None and item.plan.conditional:
            item.urls[item.full_url] = None
        rid = item.plan.resource_id or (item.resource.get("id") if isinstance(item.resource.get("id"), str) else None)
        self._reject(Rejection(item.file, item.position, item.plan.resource_type, rid, reason))

    async def _resolve_references(self, item: _Item) -> None:
        rewrite_full_urls(item.resource, item.urls)
        try:
            await self._references.resolve_all(item.resource)
        except StoreError as exc:
            raise Rejected(f"{_issues_text(exc)} (import the files that define it first)") from None

    async def _write(self, item: _Item) -> tuple[str, str]:
        """Write one resource; (outcome counter name, the id it is stored under)."""
        plan, resource, store = item.plan, item.resource, self.store
        rtype, rid = plan.resource_type, plan.resource_id
        if plan.mode is Mode.UPDATE:
            assert rid is not None
            resource["id"] = rid
            result = await store.update(resource, resource_type=rtype, resource_id=rid)
            return ("created" if result.created else "updated" if result.changed else "unchanged"), rid
        if plan.mode is Mode.CREATE_ONCE:
            rid = rid or content_id(resource)
            try:
                result = await store.create(resource, resource_type=rtype, resource_id=rid)
            except ResourceExists:
                return "existing", rid  # already stored (maybe deleted since): a POST never changes it
            return "created", rid
        if plan.mode is Mode.CONDITIONAL_CREATE:
            try:
                result = await store.create(resource, resource_type=rtype, if_none_exist=plan.criteria,
                                            resource_id=rid)
            except ResourceExists:
                assert rid is not None
                return "existing", rid  # the id exists, though it does not match the criteria
            return ("created" if result.created else "existing"), result.version.id
        assert plan.criteria is not None
        if rid is not None:
            resource["id"] = rid
        result = await store.conditional_update(resource, resource_type=rtype, criteria=plan.criteria)
        return ("created" if result.created else "updated" if result.changed else "unchanged"), result.version.id

    # ---- reporting --------------------------------------------------------------------------

    def _reject(self, rejection: Rejection) -> None:
        self.summary.rejected.append(rejection)
        if rejection.resource_type and rejection.position not in ("file",):
            self.summary.by_type.setdefault(rejection.resource_type, Counter())["rejected"] += 1
        if self.on_reject is not None:
            self.on_reject(rejection)


def _type_and_id(resource: Any) -> tuple[str | None, str | None]:
    if not isinstance(resource, dict):
        return None, None
    rtype, rid = resource.get("resourceType"), resource.get("id")
    return (rtype if isinstance(rtype, str) else None), (rid if isinstance(rid, str) else None)


def _issues_text(exc: StoreError) -> str:
    return "; ".join(issue.diagnostics for issue in exc.issues) or str(exc)
