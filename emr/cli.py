"""The `emr` command line for IT staff."""

from __future__ import annotations

import fcntl
import logging
import os
import re
import socket
from pathlib import Path
from typing import NoReturn, TextIO

import typer

from emr import __version__
from emr.commands import clients_command, export_command, keys_command, terminology_command, users_command
from emr.commands.import_command import import_
from emr.log_format import log_to_stderr
from emr.settings import Settings, get_settings

app = typer.Typer(help="An Giang EMR: run the FHIR server and look after its data.", no_args_is_help=True,
                  rich_markup_mode=None)


@app.callback()
def main() -> None:
    """An Giang EMR. Configure with EMR_* environment variables (see README: Configuration)."""


@app.command()
def serve(
    host: str = typer.Option(None, help="Address to listen on (default: EMR_HOST or 127.0.0.1)."),
    port: int = typer.Option(None, help="Port to listen on (default: EMR_PORT or 8080)."),
) -> None:
    """Run the FHIR server. Without EMR_MONGODB_URI it starts the embedded database in EMR_DATA_DIR."""
    import uvicorn

    from emr.app import create_app

    settings = get_settings()
    log_to_stderr(settings.log_format)
    where = host or settings.host, port or settings.port
    _check_can_start(settings, *where)
    lock = None if settings.mongodb_uri else _serve_alone(settings.data_dir)  # held until this process ends
    database = settings.mongodb_uri and _without_password(settings.mongodb_uri) or \
        f"the embedded database (python -m emr.embedded_db) in {settings.data_dir.resolve() / 'db'}"
    logging.getLogger("emr").info("An Giang EMR %s on http://%s:%d/fhir; facility %s; database %s", __version__,
                                  *where, settings.facility_code or "not set (EMR_FACILITY_CODE)", database)
    # Our own request log (emr.request: request id, status, time, the reason for a 4xx) replaces uvicorn's.
    uvicorn.run(create_app(settings), host=where[0], port=where[1], log_level="info", proxy_headers=True,
                access_log=False)
    del lock


def _check_can_start(settings: Settings, host: str, port: int) -> None:
    """The common reasons a server cannot start, each said in one sentence with its fix (not a traceback)."""
    if settings.mongodb_uri is None:
        try:
            import secantus  # noqa: F401
        except ImportError:
            _refuse("the embedded database is not installed. Install it with: .venv/bin/pip install -e "
                    "\".[embedded]\" — or set EMR_MONGODB_URI to a MongoDB server.")
    else:
        from pymongo import MongoClient
        from pymongo.errors import PyMongoError

        client: MongoClient[dict[str, object]] = MongoClient(settings.mongodb_uri, serverSelectionTimeoutMS=5000)
        try:
            client.admin.command("ping")
        except PyMongoError as exc:
            _refuse(f"cannot reach the database at {_without_password(settings.mongodb_uri)} "
                    f"({type(exc).__name__}). Check EMR_MONGODB_URI, that MongoDB is running, and the "
                    "network or firewall between them.")
        finally:
            client.close()
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            _refuse(f"cannot listen on {host}:{port} ({exc.strerror}): another program (another emr serve?) "
                    "uses that port. Choose another with --port or EMR_PORT.")


def _refuse(message: str) -> NoReturn:
    typer.echo(f"emr serve: {message}", err=True)
    raise typer.Exit(1)


def _serve_alone(data_dir: Path) -> TextIO:
    """The one `emr serve` of an embedded database, or a clear refusal naming the one already running.

    A second server would share the first one's database process, and lose it when the first stops; with
    EMR_MONGODB_URI (a real MongoDB) any number of servers may run.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = (data_dir / "serve.lock").open("a+", encoding="ascii")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        other = lock.read().strip() or "unknown"
        _refuse(f"another emr serve (process {other}) already serves the embedded database in "
                f"{data_dir.resolve()}. Stop it first, or give this one its own EMR_DATA_DIR; several servers "
                "on one database need a real MongoDB (EMR_MONGODB_URI).")
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


def _without_password(uri: str) -> str:
    return re.sub(r"//[^@/]*@", "//***@", uri)


# Commands that live in their own modules (one module per command), registered here.
# -- command registrations: keep one line per command below --
app.command("export")(export_command.export)
app.command("import")(import_)
app.add_typer(terminology_command.app, name="terminology")
app.add_typer(users_command.app, name="users")
app.add_typer(clients_command.app, name="clients")
app.add_typer(keys_command.app, name="keys")


if __name__ == "__main__":
    app()
