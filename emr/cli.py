"""The `emr` command line for IT staff."""

from __future__ import annotations

import logging
import re

import typer

from emr import __version__
from emr.commands import clients_command, export_command, keys_command, terminology_command, users_command
from emr.commands.import_command import import_
from emr.settings import get_settings

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
    _log_to_stderr()
    where = host or settings.host, port or settings.port
    database = settings.mongodb_uri and _without_password(settings.mongodb_uri) or \
        f"the embedded database (python -m emr.embedded_db) in {settings.data_dir.resolve() / 'db'}"
    logging.getLogger("emr").info("An Giang EMR %s on http://%s:%d/fhir; facility %s; database %s", __version__,
                                  *where, settings.facility_code or "not set (EMR_FACILITY_CODE)", database)
    # Our own request log (emr.request: request id, status, time, the reason for a 4xx) replaces uvicorn's.
    uvicorn.run(create_app(settings), host=where[0], port=where[1], log_level="info", proxy_headers=True,
                access_log=False)


def _log_to_stderr() -> None:
    """The `emr` loggers at INFO on standard error, in lines an IT person can read and grep."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    emr_log = logging.getLogger("emr")
    emr_log.addHandler(handler)
    emr_log.setLevel(logging.INFO)
    emr_log.propagate = False


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
