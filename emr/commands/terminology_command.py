"""`emr terminology`: load the national code lists (and FHIR's own) into the store, and list what is loaded.

The reading is `fhir_store.terminology.sources`, the writing `loader`; this
module opens the database, shows progress and prints the report.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from fhir_store import SourceReport

app = typer.Typer(help="Code systems, value sets and concept maps: ICD-10, national lists, FHIR's own.",
                  no_args_is_help=True, rich_markup_mode=None)


@app.command()
def load(
    path: Annotated[Path | None, typer.Argument(
        help="A list file, or a folder of them. Default: the lists shipped with the EMR.", show_default=False)]
    = None,
    version: Annotated[str | None, typer.Option(
        "--version", help="Edition of the list, when the file does not say it (one file only).")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON on standard output.")]
    = False,
) -> None:
    """Load code lists into the database. Safe to run again: unchanged lists stay as they are.

    \b
    Files are recognised by their header row, whatever their name:
      ICD-10 of the Ministry of Health (Appendix 1 of QĐ 4469/QĐ-BYT) as published,
          22 columns from STT CHƯƠNG to NGÀY CẬP NHẬT, title lines above the header;
          the edition is the decision's date, or --version
      ICD-10 of WHO (code, level, title_en, parent_code, chapter, block)
      ethnic groups (code_source, code_2digit, name)
      administrative units 2025 (the province and the commune files, together)
      administrative units before July 2025 (province, district, ward codes)
      old → new commune mapping (becomes a ConceptMap for $translate)
      FHIR JSON: CodeSystem, ValueSet, ConceptMap, or a Bundle of them (*.json, *.json.gz)

    A new edition of a list is kept beside the old one (records keep the edition
    they were coded with; lookups without a version use the newest). Loading the
    same edition again updates it in place, as a new version of the resource.
    """
    from emr.settings import get_settings
    from fhir_store import SHIPPED_TERMINOLOGY as SHIPPED
    from fhir_store import SourceError
    from fhir_store import read_terminology_source as read

    where = path or SHIPPED
    try:
        sources = read(where, version=version)
    except SourceError as exc:
        typer.echo(f"terminology load: {exc}", err=True)
        raise typer.Exit(2) from None
    if version and len(sources) > 1:
        typer.echo("terminology load: --version names the edition of one list; give one file", err=True)
        raise typer.Exit(2)
    reports = asyncio.run(_load(get_settings(), sources, show_progress=not json_output))
    if json_output:
        typer.echo(json.dumps([r.to_json() for r in reports], ensure_ascii=False))
        return
    _print_reports(reports)


async def _load(settings: Any, sources: list[Any], *, show_progress: bool) -> list[SourceReport]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from emr.services import open_services
    from fhir_store import load_terminology as load_sources

    total = sum(len(s.resources) for s in sources)
    console = Console(stderr=True)
    async with open_services(settings) as services:
        columns = (TextColumn("loading {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, disable=not show_progress or not console.is_terminal) as bar:
            task = bar.add_task("terminology", total=total)

            def progress(source: Any, resource: dict[str, Any]) -> None:
                bar.update(task, advance=1, description=f"{resource['resourceType']}/{resource['id']}")

            return await load_sources(services.store, sources, progress)


def _print_reports(reports: list[SourceReport]) -> None:

    from rich.table import Table

    from emr.commands.output import stdout_console

    table = Table(title="emr terminology load", title_justify="left")
    for column in ("list", "resource", "url | version", "concepts", "outcome"):
        table.add_column(column, justify="right" if column == "concepts" else "left")
    for report in reports:
        for i, r in enumerate(report.resources):
            table.add_row(report.name if i == 0 else "", f"{r.resource_type}/{r.id}",
                          f"{r.url}|{r.version}" if r.version else r.url, f"{r.concepts:,}" if r.concepts else "",
                          r.outcome)
    console = stdout_console()
    console.print(table)
    for report in reports:
        for note in report.notes:
            console.print(f"note ({report.name}): {note}", soft_wrap=True)


@app.command("list", help="List the code systems, value sets and concept maps loaded, newest edition first.")
def list_(
    json_output: Annotated[bool, typer.Option("--json", help="Print the catalog as JSON on standard output.")]
    = False,
) -> None:
    """List the code systems, value sets and concept maps loaded, newest edition first."""
    from emr.settings import get_settings

    entries = asyncio.run(_catalog(get_settings()))
    if json_output:
        typer.echo(json.dumps([{"resourceType": e.kind, "id": e.id, "url": e.url, "version": e.version,
                                "title": e.title, "status": e.status, "count": e.count, "date": e.date}
                               for e in entries], ensure_ascii=False))
        return

    from rich.table import Table

    from emr.commands.output import stdout_console

    table = Table(title=f"{len(entries)} terminology resources", title_justify="left")
    for column in ("resource", "url", "version", "title", "count"):
        table.add_column(column, justify="right" if column == "count" else "left")
    for e in entries:
        table.add_row(e.key, e.url, e.version or "", e.title, f"{e.count:,}")
    stdout_console().print(table)


@app.command(help="Rebuild the terminology catalog from the stored resources (after a restore without it).")
def reindex() -> None:
    """Rebuild the terminology catalog from the stored CodeSystem, ValueSet and ConceptMap resources.

    The catalog is kept up to date by every write; this is for a database restored without it.
    """
    from emr.settings import get_settings

    count = asyncio.run(_reindex(get_settings()))
    typer.echo(f"catalog rebuilt: {count} terminology resources")


async def _reindex(settings: Any) -> int:
    from emr.services import open_services

    async with open_services(settings) as services:
        return await services.terminology.rebuild_catalog()


async def _catalog(settings: Any) -> list[Any]:
    from emr.services import open_services

    async with open_services(settings) as services:
        return await services.terminology.loaded()
