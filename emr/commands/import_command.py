"""`emr import`: load FHIR Bundles and NDJSON files into the database, safely re-runnable.

IT staff load whole archives (Synthea runs, another hospital's export, a
backup made with `emr export`) without the HTTP server and its request limits.
The work is `fhir_store.bulk.importer.BulkImporter`; this module only opens
the configured database, shows progress, prints the summary and writes the
error file. Heavy imports happen inside the command so that `emr --help` stays
fast.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from fhir_store import ImportSummary, Rejection

DEFAULT_ERROR_FILE = Path("import-errors.ndjson")


def import_(
    paths: Annotated[list[Path], typer.Argument(
        help="Files or folders (searched recursively) to import.", metavar="PATH...", show_default=False)],
    error_file: Annotated[Path, typer.Option(
        "--error-file", help="Where every rejected resource is written, one JSON object per line.")]
    = DEFAULT_ERROR_FILE,
    concurrency: Annotated[int, typer.Option(
        "--concurrency", min=1, max=64, help="Resources written at once.")] = 8,
    json_output: Annotated[bool, typer.Option(
        "--json", help="Print the summary as JSON on standard output instead of a table.")] = False,
) -> None:
    """Import FHIR resources from files into the database. Safe to run again on the same files.

    \b
    Formats (folders are searched recursively for these suffixes):
      *.json, *.json.gz      a FHIR Bundle (transaction, batch, collection,
                             searchset, history), read entry by entry, so
                             files of any size work; or a single resource.
                             document and message Bundles are stored whole.
      *.ndjson, *.ndjson.gz  one resource per line (FHIR Bulk Data, emr export)

    Every resource is validated and indexed exactly as the FHIR API does it.
    Inside a Bundle, a urn:uuid:X fullUrl gives the resource the id X and every
    reference to it is rewritten to Type/X; conditional references such as
    Practitioner?identifier=SYSTEM|VALUE must match exactly one stored resource.

    Idempotent: ids come from the files (the resource's id, its fullUrl, or a
    hash of its content), so a second run on the same files creates nothing and
    adds no version. POST entries create a resource once and never change an
    existing one (counted as "existing"); ifNoneExist entries create only when
    nothing matches; resources with an id (NDJSON, PUT) are updated, and an
    unchanged one keeps its version.

    Order: files that others refer to go first (batch Bundles, Synthea's
    hospitalInformation* and practitionerInformation*, files named Organization*,
    Location*, Practitioner*), then the rest by path. Give the whole Synthea
    folder at once and its conditional references resolve.

    A resource that cannot be stored is skipped and the run goes on; a truncated
    or corrupt file is imported up to the break. Each rejection goes to the error
    file as {"file", "position" ("line N" or "Bundle.entry[N]"), "resourceType",
    "id", "reason"}; the file is replaced when anything was rejected and emptied
    when nothing was. Exit code: 0 when everything was imported, 1 when anything
    was rejected.

    The database is EMR_MONGODB_URI, or the embedded one in EMR_DATA_DIR (the one
    a running `emr serve` uses, if any).
    """
    from emr.settings import get_settings

    errors = _ErrorFile(error_file)
    try:
        summary = asyncio.run(_run(get_settings(), paths, concurrency, errors, show_progress=not json_output))
    except _DatabaseAway as exc:
        typer.echo(f"import stopped: the database cannot be reached ({exc})", err=True)
        raise typer.Exit(2) from None
    finally:
        errors.close()
    if json_output:
        payload = summary.to_json()
        payload["errorFile"] = str(error_file) if summary.rejected else None
        typer.echo(json.dumps(payload, ensure_ascii=False))
    else:
        _print_table(summary, error_file)
    if summary.rejected:
        raise typer.Exit(1)


class _DatabaseAway(Exception):
    """The database could not be reached or went away: nothing more can be imported."""


class _ErrorFile:
    """The error file, opened at the first rejection so a clean run leaves no new file behind."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle: IO[str] | None = None

    def write(self, rejection: Rejection) -> None:
        if self.handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = self.path.open("w", encoding="utf-8")
        self.handle.write(json.dumps(rejection.to_json(), ensure_ascii=False) + "\n")
        self.handle.flush()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
        elif self.path.is_file():
            self.path.write_text("", encoding="utf-8")  # no rejection: an older run's errors must not linger


async def _run(settings: Any, paths: list[Path], concurrency: int, errors: _ErrorFile, *,
               show_progress: bool) -> ImportSummary:
    from pymongo.errors import ConnectionFailure
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

    from emr.services import open_services
    from fhir_store import BulkImporter

    try:
        async with open_services(settings) as services:
            store = services.store
            console = Console(stderr=True)
            columns = (TextColumn("importing"), BarColumn(), TaskProgressColumn(),
                       TextColumn("{task.fields[resources]:>9,} resources  {task.fields[rate]:>6,.0f}/s  ETA"),
                       TimeRemainingColumn())
            with Progress(*columns, console=console, disable=not show_progress or not console.is_terminal) as bar:
                task = bar.add_task("import", total=None, resources=0, rate=0.0)
                loop = asyncio.get_running_loop()
                started = loop.time()

                def progress(done: int, total: int, resources: int) -> None:
                    rate = resources / max(loop.time() - started, 1e-6)
                    bar.update(task, completed=done, total=total, resources=resources, rate=rate)

                importer = BulkImporter(store, concurrency=concurrency, progress=progress, on_reject=errors.write)
                return await importer.run(paths)
    except ConnectionFailure as exc:
        raise _DatabaseAway(str(exc)) from None


def _print_table(summary: ImportSummary, error_file: Path) -> None:

    from rich.table import Table

    from emr.commands.output import stdout_console

    columns = ("created", "updated", "unchanged", "existing", "rejected")
    table = Table(title="emr import", title_justify="left")
    table.add_column("resource type")
    for column in columns:
        table.add_column(column, justify="right")
    for rtype, counts in sorted(summary.by_type.items()):
        table.add_row(rtype, *(f"{counts.get(c, 0):,}" for c in columns))
    resource_rejections = sum(c.get("rejected", 0) for c in summary.by_type.values())
    table.add_section()
    table.add_row("total", f"{summary.created:,}", f"{summary.updated:,}", f"{summary.unchanged:,}",
                  f"{summary.existing:,}", f"{resource_rejections:,}")
    console = stdout_console()
    console.print(table)
    console.print(f"{summary.files:,} files, {summary.read:,} resources read in {summary.seconds:,.1f} s "
                  f"({summary.resources_per_second:,.0f} resources/s)", soft_wrap=True)
    if summary.rejected:
        other = len(summary.rejected) - resource_rejections
        console.print(f"{len(summary.rejected):,} rejected ({resource_rejections:,} resources, {other:,} unreadable "
                      f"lines or files): see {error_file}", soft_wrap=True)
