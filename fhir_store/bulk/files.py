"""Finding and reading the files of an import: which files, in what order, and their bytes.

Apart from the writing so that the reading rules (suffixes, gzip, a BOM, a
file cut short) live in one place, and the importer only sees resources,
lines and Bundle entries. See the importer's docstring for "What it reads"
and "File order".
"""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import ijson

from fhir_store.bulk.rejection import Rejection

BUNDLE_SUFFIXES = (".json", ".json.gz")
NDJSON_SUFFIXES = (".ndjson", ".ndjson.gz")
#: Name prefixes of files that others refer to, imported first (see "File order" in the importer's docstring).
FIRST_FILE_PREFIXES = ("hospitalinformation", "practitionerinformation", "organization", "location",
                       "practitioner")
#: What reading a truncated or corrupt file raises (gzip, zlib, ijson, the disk).
CORRUPT_ERRORS = (ijson.JSONError, EOFError, OSError, zlib.error, ValueError)

_BOM = b"\xef\xbb\xbf"
_CHUNK = 1 << 16


class CorruptFile(Exception):
    """Where a file breaks (`position`) and what is known of it (`reason`)."""

    def __init__(self, position: str, reason: str) -> None:
        super().__init__(reason)
        self.position = position
        self.reason = reason


@dataclass
class Head:
    """A JSON file's top-level resourceType and Bundle.type, read without parsing the rest."""

    resource_type: str | None = None
    bundle_type: str | None = None
    error: str | None = None


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
    return file_kind(path) == "bundle" and peek(path).bundle_type == "batch"


class Chunks:
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
def open_file(path: Path) -> Iterator[tuple[IO[bytes], Chunks]]:
    """(the file on disk, for progress; the stream to parse: decompressed, without a BOM)."""
    with open(path, "rb") as raw:
        stream: io.BufferedIOBase = raw
        if path.name.lower().endswith(".gz"):
            stream = gzip.GzipFile(fileobj=raw, mode="rb")
        if stream.read(3) != _BOM:
            stream.seek(0)
        yield raw, Chunks(stream)


def peek(path: Path) -> Head:
    """What the file holds, from its first tokens: enough to choose how to read it without parsing it all."""
    head = Head()
    try:
        with open_file(path) as (_raw, stream):
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
    except CORRUPT_ERRORS as exc:
        head.error = f"not valid JSON: {exc}"
    return head


def numbered_lines(stream: Chunks) -> Iterator[tuple[int, bytes]]:
    """Numbered lines of a (possibly compressed) stream; a break in the stream raises CorruptFile."""
    number = 0
    rest = b""
    while True:
        try:
            chunk = stream.read(_CHUNK)
        except CORRUPT_ERRORS as exc:
            cut = f"line {number + 1}"
            raise CorruptFile(cut, f"the file is cut short or corrupt at {cut} ({type(exc).__name__}: {exc}); "
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


def bundle_entries(path: Path, *, limit: int | None = None,
                   reading: Callable[[IO[bytes] | None], None] | None = None) -> Iterator[tuple[int, Any]]:
    """The Bundle's entries, streamed, at most `limit`; a break in the file raises CorruptFile.

    `reading` is given the file on disk while it is read, and None after, so progress can follow it.
    """
    index = 0
    raw: IO[bytes] | None = None
    try:
        with open_file(path) as (raw, stream):
            if reading is not None:
                reading(raw)
            for entry in ijson.items(stream, "entry.item", use_float=True):
                if limit is not None and index >= limit:
                    return
                yield index, entry
                index += 1
    except CORRUPT_ERRORS as exc:
        where = raw.tell() if raw is not None and not raw.closed else None
        near = f" near byte {where:,}" if where is not None else ""
        raise CorruptFile(
            f"Bundle.entry[{index}]",
            f"the file is cut short or corrupt{near} ({type(exc).__name__}: {exc}); "
            f"the {index} entries before it were read") from None
    finally:
        if reading is not None:
            reading(None)
