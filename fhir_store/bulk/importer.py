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
"""

from __future__ import annotations

import asyncio
import gzip
import io
import logging
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import IO, Any

import ijson
import orjson
from pymongo.errors import ConnectionFailure, DuplicateKeyError, PyMongoError

from fhir_store.errors import StoreError
from fhir_store.ids import check_id
from fhir_store.resource_types import model_class
from fhir_store.store import FhirStore, parse_criteria

log = logging.getLogger(__name__)

#: (bytes done, bytes total, resources done): enough for a progress bar with a bytes-based ETA.
Progress = Callable[[int, int, int], None]

BUNDLE_SUFFIXES = (".json", ".json.gz")
NDJSON_SUFFIXES = (".ndjson", ".ndjson.gz")
#: Bundle types whose entries are imported one by one; any other Bundle is stored whole.
ENTRY_BUNDLE_TYPES = frozenset({"transaction", "batch", "collection", "searchset", "history",
                                "transaction-response", "batch-response"})
#: Name prefixes of files that others refer to, imported first (see "File order").
FIRST_FILE_PREFIXES = ("hospitalinformation", "practitionerinformation", "organization", "location",
                       "practitioner")

_BOM = b"\xef\xbb\xbf"
_CHUNK = 1 << 16
_PROGRESS_EVERY = 0.1  # seconds between progress callbacks
_CACHE_LIMIT = 100_000  # conditional references remembered per run
_CONTENT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:angiang-emr:bulk-import:content")
_CORRUPT = (ijson.JSONError, EOFError, OSError, zlib.error, ValueError)


@dataclass(frozen=True)
class Rejection:
    """Something that was not imported, and why: one line of the error file."""

    file: str
    position: str  # "line 12", "Bundle.entry[5]", "resource", "file"
    resource_type: str | None
    id: str | None
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "position": self.position, "resourceType": self.resource_type, "id": self.id,
                "reason": self.reason}


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


class Mode(Enum):
    UPDATE = "update"  # store.update under a known id
    CREATE_ONCE = "create-once"  # store.create under a derived id; an existing id is left alone
    CONDITIONAL_CREATE = "conditional-create"  # store.create(if_none_exist=...)
    CONDITIONAL_UPDATE = "conditional-update"  # store.conditional_update(criteria)


@dataclass
class _Plan:
    """How one Bundle entry is written: decided from the entry alone, so every pass agrees."""

    mode: Mode
    resource_type: str
    resource_id: str | None
    criteria: str | None = None

    @property
    def conditional(self) -> bool:
        return self.mode in (Mode.CONDITIONAL_CREATE, Mode.CONDITIONAL_UPDATE)


@dataclass
class _Item:
    file: str
    position: str
    resource: dict[str, Any]
    plan: _Plan
    full_url: str | None = None
    urls: dict[str, str | None] | None = None  # the Bundle's fullUrl -> "Type/id" (None: not importable)
    truncated: bool = False  # the Bundle's file breaks before its end


class _Rejected(Exception):
    """A resource refused by the importer itself (not by the store)."""


class _Unresolved(_Rejected):
    """A urn: reference to no entry of the Bundle (which a truncated file explains)."""


class _Corrupt(Exception):
    def __init__(self, position: str, reason: str) -> None:
        super().__init__(reason)
        self.position = position
        self.reason = reason


@dataclass
class _Head:
    """A JSON file's top-level resourceType and Bundle.type, read without parsing the rest."""

    resource_type: str | None = None
    bundle_type: str | None = None
    error: str | None = None


@dataclass
class _Scan:
    """Pass 1 over a Bundle."""

    urls: dict[str, str | None] = field(default_factory=dict)
    duplicates: set[int] = field(default_factory=set)
    conditional: int = 0
    others: int = 0
    complete: int = 0  # entries read whole before the end of the file (or a break)
    corrupt: _Corrupt | None = None


# ---- files ---------------------------------------------------------------------------------


def file_kind(path: Path) -> str | None:
    """'bundle' (any .json), 'ndjson', or None for a file the importer does not read."""
    name = path.name.lower()
    if name.endswith(NDJSON_SUFFIXES):
        return "ndjson"
    if name.endswith(BUNDLE_SUFFIXES):
        return "bundle"
    return None


def import_order(paths: Iterable[Path]) -> tuple[list[Path], list[Rejection]]:
    """The files to import, in the order they must go (see "File order"), and the paths that are not usable."""
    problems: list[Rejection] = []
    found: dict[Path, None] = {}
    for path in paths:
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                if child.is_file() and file_kind(child):
                    found.setdefault(child, None)
        elif path.is_file():
            if file_kind(path):
                found.setdefault(path, None)
            else:
                problems.append(Rejection(str(path), "file", None, None,
                                          "not a .json, .json.gz, .ndjson or .ndjson.gz file"))
        else:
            problems.append(Rejection(str(path), "file", None, None, "no such file or folder"))
    seen: set[Path] = set()
    unique = []
    for path in found:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return sorted(unique, key=lambda p: (0 if _goes_first(p) else 1, str(p))), problems


def _goes_first(path: Path) -> bool:
    if path.name.lower().startswith(FIRST_FILE_PREFIXES):
        return True
    return file_kind(path) == "bundle" and _peek(path).bundle_type == "batch"


class _Chunks:
    """A readable whose `read(n)` is one `read1(n)` of the stream below.

    A buffered `read(n)` gathers several underlying reads, and when a later one
    fails (a truncated gzip member) the data the earlier ones decompressed is
    lost with the exception; `read1` hands over each piece before the next read
    can fail, so everything before a break is parsed.
    """

    def __init__(self, stream: io.BufferedIOBase) -> None:
        self.stream = stream

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return b"".join(iter(lambda: self.stream.read1(_CHUNK), b""))
        return self.stream.read1(size) if size else b""


@contextmanager
def _open(path: Path) -> Iterator[tuple[IO[bytes], _Chunks]]:
    """(the file on disk, for progress; the stream to parse: decompressed, without a BOM)."""
    with open(path, "rb") as raw:
        stream: io.BufferedIOBase = raw
        if path.name.lower().endswith(".gz"):
            stream = gzip.GzipFile(fileobj=raw, mode="rb")
        if stream.read(3) != _BOM:
            stream.seek(0)
        yield raw, _Chunks(stream)


def _peek(path: Path) -> _Head:
    head = _Head()
    try:
        with _open(path) as (_raw, stream):
            for prefix, event, value in ijson.parse(stream, use_float=True):
                if prefix == "" and event == "start_array":
                    head.error = "the file holds a JSON array, not a FHIR resource or Bundle"
                    break
                if prefix == "resourceType" and event == "string":
                    head.resource_type = value
                elif prefix == "type" and event == "string":
                    head.bundle_type = value
                if head.resource_type is not None and (head.resource_type != "Bundle" or head.bundle_type):
                    break
    except _CORRUPT as exc:
        head.error = f"not valid JSON: {exc}"
    return head


# ---- ids and references --------------------------------------------------------------------


def valid_id(value: Any) -> bool:
    try:
        check_id(value)
    except (StoreError, TypeError):
        return False
    return isinstance(value, str)


def id_from_full_url(full_url: str, resource_type: str) -> str:
    """The id an entry gets from its fullUrl: X of urn:uuid:X / urn:oid:X, the id of `.../Type/id`, else a uuid5."""
    for prefix in ("urn:uuid:", "urn:oid:"):
        if full_url.startswith(prefix):
            candidate = full_url[len(prefix):]
            return candidate if valid_id(candidate) else str(uuid.uuid5(uuid.NAMESPACE_URL, full_url))
    parts = full_url.split("?", 1)[0].rstrip("/").split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) >= 2 and parts[-2] == resource_type and valid_id(parts[-1]):
        return parts[-1]
    return str(uuid.uuid5(uuid.NAMESPACE_URL, full_url))


def content_id(resource: dict[str, Any]) -> str:
    """A stable id for a resource that has none: the same content gets the same id on every run."""
    return str(uuid.uuid5(_CONTENT_NAMESPACE, orjson.dumps(resource, option=orjson.OPT_SORT_KEYS).decode()))


def _conditional_reference(ref: str) -> bool:
    rtype, sep, query = ref.partition("?")
    return bool(sep and query) and model_class(rtype) is not None


def _rewrite(value: Any, urls: dict[str, str | None] | None, pending: list[dict[str, Any]]) -> None:
    """Rewrite fullUrl references in place; collect the Reference objects holding a conditional reference."""
    if isinstance(value, dict):
        ref = value.get("reference")
        if isinstance(ref, str):
            if urls is not None and ref in urls:
                target = urls[ref]
                if target is None:
                    raise _Rejected(f"it refers to '{ref}', an entry of the same Bundle that was not imported")
                value["reference"] = target
            elif urls is not None and ref.startswith(("urn:uuid:", "urn:oid:")):
                # Stored as it is, it would point nowhere, and a re-run would not fix a created-once resource.
                raise _Unresolved(f"it refers to '{ref}', which is the fullUrl of no entry of the Bundle")
            elif "?" in ref and _conditional_reference(ref):
                pending.append(value)
        for child in value.values():
            if isinstance(child, dict | list):
                _rewrite(child, urls, pending)
    elif isinstance(value, list):
        for child in value:
            if isinstance(child, dict | list):
                _rewrite(child, urls, pending)


def _plan_entry(entry: Any) -> _Plan:
    """How a Bundle entry is imported; raises _Rejected for an entry the import cannot write."""
    if not isinstance(entry, dict):
        raise _Rejected("the entry is not a JSON object")
    resource = entry.get("resource")
    request = entry.get("request") if isinstance(entry.get("request"), dict) else None
    method = str(request.get("method", "")).upper() if request else ""
    url = str(request.get("url", "")) if request else ""
    if not isinstance(resource, dict):
        what = f"a {method} {url} request" if request else "an entry"
        raise _Rejected(f"{what} without a resource: the import writes resources only "
                        "(send other requests to the API as a batch or transaction)")
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        raise _Rejected("the resource has no resourceType")
    full_url = entry.get("fullUrl") if isinstance(entry.get("fullUrl"), str) else None
    path, _, query = url.partition("?")
    segments = [s for s in path.split("/") if s]
    # An absolute request URL ends in Type or Type/id like a relative one.
    if len(segments) >= 2 and model_class(segments[-2]) is not None:
        url_type, url_id = segments[-2], segments[-1]
    else:
        url_type, url_id = (segments[-1] if segments else rtype), None
    derived = id_from_full_url(full_url, rtype) if full_url else None
    body_id = resource.get("id") if valid_id(resource.get("id")) else None
    if method == "PUT":
        if query:
            return _Plan(Mode.CONDITIONAL_UPDATE, url_type, body_id, query)
        if url_id is None:
            raise _Rejected(f"PUT {url}: the URL names no resource id")
        return _Plan(Mode.UPDATE, url_type, url_id)
    if method == "POST":
        if_none_exist = request.get("ifNoneExist") if request else None
        if isinstance(if_none_exist, str) and if_none_exist.strip():
            return _Plan(Mode.CONDITIONAL_CREATE, url_type, derived or body_id, if_none_exist)
        return _Plan(Mode.CREATE_ONCE, url_type, derived or body_id)
    if method:
        raise _Rejected(f"a {method} {url} request: the import writes resources only "
                        "(send other requests to the API as a batch or transaction)")
    return _Plan(Mode.UPDATE, rtype, derived or body_id)


def _issues_text(exc: StoreError) -> str:
    return "; ".join(issue.diagnostics for issue in exc.issues) or str(exc)


# ---- the importer --------------------------------------------------------------------------


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
        self._references: dict[str, str] = {}
        self._semaphore = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._fatal: BaseException | None = None
        self._bytes_total = 0
        self._bytes_before = 0  # bytes of the files finished
        self._file_size = 0
        self._raw: IO[bytes] | None = None
        self._pass_start = 0.0  # share of the current file done before this pass
        self._pass_share = 1.0  # share of the current file this pass covers
        self._file_done = 0.0  # share of the current file done (never goes back)
        self._last_tick = 0.0

    async def run(self, paths: Sequence[Path]) -> ImportSummary:
        """Import every file under `paths` (in `import_order`) and return what happened."""
        started = time.monotonic()
        files, problems = import_order(paths)
        for problem in problems:
            self._reject(problem)
        sizes = {path: path.stat().st_size for path in files}
        self._bytes_total = sum(sizes.values())
        self.summary.bytes = self._bytes_total
        try:
            for path in files:
                self._file_size = sizes[path]
                self.summary.files += 1
                try:
                    await self._import_file(path)
                finally:
                    self._raw = None
                    self._bytes_before += sizes[path]
                    self._pass_start, self._pass_share, self._file_done = 0.0, 1.0, 0.0
        finally:
            self.summary.seconds = time.monotonic() - started
            self._tick(force=True)
        return self.summary

    # ---- per file ---------------------------------------------------------------------------

    async def _import_file(self, path: Path) -> None:
        if file_kind(path) == "ndjson":
            await self._ndjson(path)
            return
        head = _peek(path)
        if head.resource_type == "Bundle" and (head.bundle_type in ENTRY_BUNDLE_TYPES or head.bundle_type is None):
            await self._bundle(path)
        elif head.resource_type is not None or head.error is None:
            await self._single(path)
        else:
            self._reject(Rejection(str(path), "file", None, None, head.error))

    async def _single(self, path: Path) -> None:
        """A file holding one resource (or a document/message Bundle): read whole, written as it is."""
        try:
            with _open(path) as (_raw, stream):
                data = orjson.loads(stream.read())
        except (orjson.JSONDecodeError, *_CORRUPT) as exc:
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
            with _open(path) as (raw, stream):
                self._raw = raw
                for number, line in _lines(stream):
                    if not line.strip():
                        continue
                    self.summary.read += 1
                    position = f"line {number}"
                    try:
                        data = orjson.loads(line)
                    except orjson.JSONDecodeError as exc:
                        self._reject(Rejection(name, position, None, None, f"not valid JSON: {exc}"))
                        continue
                    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
                        self._reject(Rejection(name, position, None, None, "the line holds no FHIR resource"))
                        continue
                    await self._submit(self._standalone_item(name, position, data))
        except _Corrupt as exc:
            self._reject(Rejection(name, exc.position, None, None, exc.reason))
        finally:
            self._raw = None
        await self._drain()

    def _standalone_item(self, name: str, position: str, data: dict[str, Any]) -> _Item:
        rid = data.get("id") if isinstance(data.get("id"), str) else None
        plan = _Plan(Mode.UPDATE, data["resourceType"], rid or content_id(data))
        return _Item(name, position, data, plan)

    async def _bundle(self, path: Path) -> None:
        name = str(path)
        scan = self._scan(path)
        todo = scan.conditional + scan.others or 1
        if scan.conditional:
            self._pass_start, self._pass_share = 0.1, 0.9 * scan.conditional / todo
            await self._write_entries(path, scan, conditional=True)
        self._pass_start = 0.1 + 0.9 * scan.conditional / todo
        self._pass_share = 0.9 * scan.others / todo
        await self._write_entries(path, scan, conditional=False)
        if scan.corrupt is not None:
            self._reject(Rejection(name, scan.corrupt.position, None, None, scan.corrupt.reason))

    def _scan(self, path: Path) -> _Scan:
        """Pass 1: the fullUrl map, which entries are conditional, and where the file ends or breaks."""
        scan = _Scan()
        self._pass_start, self._pass_share = 0.0, 0.1
        for index, entry in self._entries(path, scan):
            scan.complete = index + 1
            try:
                plan = _plan_entry(entry)
            except _Rejected:
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
            self._tick()
        return scan

    def _entries(self, path: Path, scan: _Scan | None = None, limit: int | None = None) -> Iterator[tuple[int, Any]]:
        """The Bundle's entries, streamed. A break in the file is recorded in `scan` (pass 1) and ends the stream."""
        index = 0
        try:
            with _open(path) as (raw, stream):
                self._raw = raw
                for entry in ijson.items(stream, "entry.item", use_float=True):
                    if limit is not None and index >= limit:
                        return
                    yield index, entry
                    index += 1
        except _CORRUPT as exc:
            if scan is not None:
                where = self._raw.tell() if self._raw is not None and not self._raw.closed else None
                near = f" near byte {where:,}" if where is not None else ""
                scan.corrupt = _Corrupt(
                    f"Bundle.entry[{index}]",
                    f"the file is cut short or corrupt{near} ({type(exc).__name__}: {exc}); "
                    f"the {index} entries before it were read")
        finally:
            self._raw = None

    async def _write_entries(self, path: Path, scan: _Scan, *, conditional: bool) -> None:
        """Pass 2 (conditional entries) or pass 3 (the others)."""
        name = str(path)
        for index, entry in self._entries(path, limit=scan.complete):
            position = f"Bundle.entry[{index}]"
            try:
                plan = _plan_entry(entry)
            except _Rejected as exc:
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
        except _Rejected as exc:
            cut = isinstance(exc, _Unresolved) and item.truncated
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
            self._tick()

    def _failed(self, item: _Item, reason: str) -> None:
        if item.full_url and item.urls is not None and item.plan.conditional:
            item.urls[item.full_url] = None
        rid = item.plan.resource_id or (item.resource.get("id") if isinstance(item.resource.get("id"), str) else None)
        self._reject(Rejection(item.file, item.position, item.plan.resource_type, rid, reason))

    async def _resolve_references(self, item: _Item) -> None:
        pending: list[dict[str, Any]] = []
        _rewrite(item.resource, item.urls, pending)
        for reference in pending:
            reference["reference"] = await self._resolve(reference["reference"])

    async def _resolve(self, ref: str) -> str:
        known = self._references.get(ref)
        if known is not None:
            return known
        rtype, _, query = ref.partition("?")
        matches = await self.store.find(rtype, parse_criteria(query))
        if len(matches) != 1:
            how = "several resources" if matches else "no resource"
            raise _Rejected(f"the conditional reference '{ref}' matches {how}; it must match exactly one "
                            "(import the files that define it first)")
        if len(self._references) >= _CACHE_LIMIT:
            self._references.clear()
        target = self._references[ref] = f"{rtype}/{matches[0].id}"
        return target

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
            except DuplicateKeyError:
                return "existing", rid  # already stored (maybe deleted since): a POST never changes it
            return "created", rid
        if plan.mode is Mode.CONDITIONAL_CREATE:
            try:
                result = await store.create(resource, resource_type=rtype, if_none_exist=plan.criteria,
                                            resource_id=rid)
            except DuplicateKeyError:
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

    def _tick(self, force: bool = False) -> None:
        if self.progress is None:
            return
        moment = time.monotonic()
        if not force and moment - self._last_tick < _PROGRESS_EVERY:
            return
        self._last_tick = moment
        raw = self._raw
        if raw is not None and not raw.closed and self._file_size:
            fraction = min(raw.tell() / self._file_size, 1.0)
            self._file_done = max(self._file_done, self._pass_start + self._pass_share * fraction)
        done = self._bytes_before + int(self._file_size * self._file_done)
        finished = self.summary.read - len(self._tasks)  # read, and written or rejected
        self.progress(min(done, self._bytes_total), self._bytes_total, finished)


def _type_and_id(resource: Any) -> tuple[str | None, str | None]:
    if not isinstance(resource, dict):
        return None, None
    rtype, rid = resource.get("resourceType"), resource.get("id")
    return (rtype if isinstance(rtype, str) else None), (rid if isinstance(rid, str) else None)


def _lines(stream: _Chunks) -> Iterator[tuple[int, bytes]]:
    """Numbered lines of a (possibly compressed) stream; a break in the stream raises _Corrupt."""
    number = 0
    rest = b""
    while True:
        try:
            chunk = stream.read(_CHUNK)
        except _CORRUPT as exc:
            cut = f"line {number + 1}"
            raise _Corrupt(cut, f"the file is cut short or corrupt at {cut} ({type(exc).__name__}: {exc}); "
                                f"the {number} lines before it were read") from None
        if not chunk:
            break
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        for line in lines:
            number += 1
            yield number, line
    if rest:
        yield number + 1, rest
