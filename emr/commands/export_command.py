"""`emr export`: write every resource to NDJSON files, one per type, as of one instant.

The same point-in-time exporter as `$export` (`fhir_store.bulk.exporter`), run
in this process against the configured database, so IT staff can take an
export (for a backup, a migration, or a referral hospital) without the HTTP
server, and while it keeps running. Heavy imports happen inside the command so
that `emr --help` stays fast.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from fhir_store import ExportRequest, ExportResult


def export(
    out: Annotated[Path, typer.Option("--out", help="Folder for the NDJSON files (created if missing; "
                                                    "must hold none).")],
    types: Annotated[str | None, typer.Option("--type", help="Only these resource types, comma-separated "
                                                            "(default: all).")] = None,
    since: Annotated[str | None, typer.Option("--since", help="Only resources last updated at or after this "
                                                             "instant, e.g. 2025-01-31T08:00:00Z.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON (and no progress display).")]
    = False,
    settle: Annotated[float, typer.Option("--settle", help="At most this many seconds to wait before reading, "
                                                          "until writes (and transactions) in flight at the start "
                                                          "have landed; usually milliseconds. 0: do not wait "
                                                          "(safe when nothing else writes).")] = 65.0,
) -> None:
    """Export resources to OUT/<Type>.ndjson as they were when the command started, while writes go on."""
    if out.exists() and (not out.is_dir() or any(out.glob("*.ndjson"))):
        raise typer.BadParameter(f"{out} already holds NDJSON files (or is not a folder); choose an empty folder",
                                 param_hint="--out")
    since_instant = _instant(since) if since else None

    from emr.settings import get_settings
    from fhir_store import ExportRequest, StoreError

    try:
        request = ExportRequest("system", tuple(t.strip() for t in (types or "").split(",") if t.strip()),
                                since_instant)
    except StoreError as exc:
        raise typer.BadParameter(str(exc), param_hint="--type") from None
    try:
        result, seconds = asyncio.run(_run(get_settings(), request, out, timedelta(seconds=max(settle, 0.0)),
                                           show_progress=not as_json))
    except StoreError as exc:
        typer.echo(f"export failed: {exc}", err=True)
        raise typer.Exit(1) from None
    _report(result, seconds, as_json)


async def _run(settings: Any, request: ExportRequest, out: Path, settle: timedelta, *,
               show_progress: bool) -> tuple[ExportResult, float]:
    """Export as of now, once writes in flight have landed (at most `settle`); the result and the seconds spent."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    from emr.services import open_services
    from fhir_store import Exporter, format_instant, now

    async with open_services(settings) as services:
        store = services.store  # indexes too: the export walks them
        exporter = Exporter(store)
        at = now()
        console = Console(stderr=True)
        if show_progress and settle.total_seconds() > 0:
            console.print(f"Exporting as of {format_instant(at)}; reading starts once writes in flight at that "
                          f"instant have landed (at most {settle.total_seconds():g} s, --settle).", soft_wrap=True)
        if settle.total_seconds() > 0 and not await store.settled(at, timeout=settle):
            console.print(f"Writes begun before {format_instant(at)} are still open after {settle.total_seconds():g} s"
                          " (a writer that stopped mid-write?); exporting anyway.", soft_wrap=True)
        started = time.perf_counter()
        if not show_progress:
            result = await exporter.export(request, out, transaction_time=at, settle=timedelta(0))
            return result, time.perf_counter() - started
        tasks: dict[str, TaskID] = {}
        begun: set[str] = set()
        columns = (TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=False) as bars:

            async def progress(rtype: str, count: int, done: bool) -> None:
                if rtype not in begun:  # a type starts: a bar only for types that hold anything
                    begun.add(rtype)
                    estimate = await exporter.estimate(rtype)
                    if estimate:
                        tasks[rtype] = bars.add_task(rtype, total=estimate)
                elif rtype in tasks and done and count == 0:
                    bars.remove_task(tasks.pop(rtype))  # only deletions or later resources: nothing as of then
                elif rtype in tasks:
                    bars.update(tasks[rtype], completed=count, total=count if done else None)

            result = await exporter.export(request, out, transaction_time=at, settle=timedelta(0), progress=progress)
        return result, time.perf_counter() - started


def _report(result: ExportResult, seconds: float, as_json: bool) -> None:
    from fhir_store import format_instant

    rate = result.total / seconds if seconds > 0 else 0.0
    if as_json:
        summary = {"transactionTime": format_instant(result.transaction_time),
                   "output": [{"type": f.type, "path": str(f.path), "count": f.count} for f in result.files],
                   "total": result.total, "seconds": round(seconds, 3)}
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("type", "resources", "file")
    for f in result.files:
        table.add_row(f.type, str(f.count), str(f.path))
    console = Console()
    console.print(table)
    console.print(f"{result.total} resources in {len(result.files)} files, as of "
                  f"{format_instant(result.transaction_time)}; read in {seconds:.1f} s ({rate:.0f} resources/s)",
                  soft_wrap=True)


def _instant(raw: str) -> datetime:
    from fhir_store import InvalidRequest, parse_instant

    try:
        return parse_instant("--since", raw)
    except InvalidRequest:
        raise typer.BadParameter(f"'{raw}' is not an instant like 2025-01-31T08:00:00Z",
                                 param_hint="--since") from None
