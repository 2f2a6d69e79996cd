"""`emr clients`: the system clients (partner hospitals, the sync worker, jobs) that sign in without a person.

A client is `security.Accounts.add_client`: an id, SMART system scopes and a
secret that is shown once, here, and kept only as its hash. Disabling goes
through `security.Security`, which also ends the client's tokens. Heavy imports
happen inside the commands so that `emr --help` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from emr.commands.account_helpers import fail, print_json, run, when

if TYPE_CHECKING:
    from security import Client


_SIGN_IN = ("A client signs in at the server's token endpoint, POST /auth/token with grant_type=client_credentials, "
            "sending its client id and secret as HTTP Basic authentication (or as client_id and client_secret "
            "in the form).")

app = typer.Typer(help="System clients: programs (partner hospitals, the sync worker, scheduled jobs) that sign in "
                       f"without a person, each with its own id, secret and scopes. {_SIGN_IN}",
                  no_args_is_help=True, rich_markup_mode=None)

JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON on standard output.")]
ClientId = Annotated[str, typer.Argument(help="The client's id, as 'emr clients add' printed it "
                                              "(see 'emr clients list').", metavar="CLIENT_ID",
                                        show_default=False)]






@app.command()
def add(
    name: Annotated[str, typer.Argument(help="What the client is, for people reading the list and the audit "
                                             "trail, e.g. \"BV Đa khoa Châu Đốc\" or \"sync worker\".",
                                        metavar="NAME", show_default=False)],
    scope: Annotated[str, typer.Option("--scope", help="What it may do: SMART system scopes, space-separated, "
                                                       "e.g. \"system/Patient.rs system/Task.cru\".",
                                       show_default=False)],
    json_output: Annotated[bool, typer.Option("--json", help="Print exactly {\"client_id\": ..., "
                                                             "\"client_secret\": ...} on standard output.")]
    = False,
) -> None:
    """Add a system client; print its id and its secret, shown only this once.

    \b
    Scopes are context/Type.permissions with the context 'system':
      Type         a FHIR resource type, or * for every type (AuditEvent only by name)
      permissions  c create, r read, u update, d delete, s search
      e.g.         --scope "system/Patient.rs system/Encounter.rs system/Task.cru"
    Give a client only what its work needs.

    The secret is kept only as a hash: copy it into the system's configuration
    now. If it is lost, disable the client and add a new one.

    A client signs in at POST /auth/token with grant_type=client_credentials,
    its id and secret sent as HTTP Basic authentication.
    """
    if not name.strip():
        raise fail("clients add", "give the client a name that says what it is")
    added: tuple[Client, str] = run("clients add", lambda security: security.accounts.add_client(name.strip(), scope))
    client, secret = added
    if json_output:
        print_json({"client_id": client.client_id, "client_secret": secret})
        typer.echo("The client secret is not shown again: keep it now.", err=True)
        return
    typer.echo(f"Added client '{client.name}'.")
    typer.echo(f"  client_id:     {client.client_id}")
    typer.echo(f"  client_secret: {secret}")
    typer.echo(f"  scope:         {' '.join(map(str, client.scopes))}")
    typer.echo("")
    typer.echo("WARNING: the client secret is not shown again. Copy it into the system's configuration now; "
               "if it is lost, disable this client and add a new one.")
    typer.echo(_SIGN_IN)


@app.command("list")
def list_(json_output: JsonOption = False) -> None:
    """List the system clients.

    A table of client id, name, scopes, enabled or disabled, and when each was
    created (dd/mm/yyyy HH:MM, this computer's time). Secrets are never shown.
    """
    clients: list[Client] = run("clients list", lambda security: security.accounts.list_clients())
    if json_output:
        print_json([c.to_json() for c in clients])
        return
    if not clients:
        typer.echo("No clients yet. Add one with: emr clients add NAME --scope \"system/...\"")
        return

    from rich.table import Table

    from emr.commands.output import stdout_console

    table = Table(title=f"{len(clients)} client{'' if len(clients) == 1 else 's'}", title_justify="left")
    table.add_column("client id", no_wrap=True)
    table.add_column("name")
    table.add_column("scope")
    table.add_column("status", no_wrap=True)
    table.add_column("created", no_wrap=True)
    for c in clients:
        table.add_row(c.client_id, c.name, " ".join(map(str, c.scopes)), "disabled" if c.disabled else "enabled",
                      when(c.created))
    stdout_console().print(table)


@app.command()
def disable(client_id: ClientId, json_output: JsonOption = False) -> None:
    """Disable a system client and end its tokens.

    For a client whose secret leaked, or that is no longer used. It can no longer
    sign in, and the tokens it holds stop working on every server within a
    second. The client stays in the list (the audit trail names it); to let the
    system in again, add a new client with a new secret.
    """
    client: Client = run("clients disable", lambda security: security.disable_client(client_id.strip()))
    if json_output:
        print_json(client.to_json())
        return
    typer.echo(f"Client '{client.client_id}' ({client.name}) is disabled: it cannot sign in, and its tokens "
               "have ended.")
