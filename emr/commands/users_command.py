"""`emr users`: the staff accounts IT staff look after: add, list, disable, enable, reset a password; the roles.

The accounts themselves are `security.Accounts`; disabling and resetting go through
`security.Security`, which also ends the account's tokens. A password is read
from standard input when that is not a terminal (so a script can pipe it in),
else asked for twice without echo; it is never printed, logged or kept in clear.
Heavy imports happen inside the commands so that `emr --help` stays fast.
"""

from __future__ import annotations

import os
import sys
import textwrap
from typing import TYPE_CHECKING, Annotated

import typer

from emr.commands.account_helpers import fail, print_json, run, when

if TYPE_CHECKING:
    from security import User


_SIGN_IN = ("Staff sign in at the server's token endpoint, POST /auth/token with grant_type=password "
            "(their user name and password); ward terminals and scripts do this for them.")

app = typer.Typer(help=f"Staff accounts: who may sign in, with which role. {_SIGN_IN} "
                       "Run 'emr users roles' to see what each role may do.",
                  no_args_is_help=True, rich_markup_mode=None)

Username = Annotated[str, typer.Argument(help="The user's sign-in name: 2 to 64 of a-z, 0-9, '.', '_', '-' "
                                              "(no accents, no spaces), e.g. nguyen.van.an.", metavar="USERNAME",
                                        show_default=False)]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON on standard output.")]


def _read_password(command: str) -> str:
    """The new password: the first line of standard input when it is not a terminal, else asked twice."""
    if not sys.stdin.isatty():
        password = _first_line().removesuffix("\r")
        if not password:
            raise fail(f"users {command}", "no password on standard input (the first line is the password)")
        return password
    while True:
        first = typer.prompt("New password", hide_input=True, err=True)
        again = typer.prompt("The same password again", hide_input=True, err=True)
        if first == again:
            return str(first)
        typer.echo("The two passwords differ; type them again.", err=True)


def _first_line() -> str:
    """One line of standard input and not a byte more (a buffered read would take the lines after it from
    the next program of a script, e.g. the README's sign-in that reads the password again)."""
    data = bytearray()
    while (byte := os.read(sys.stdin.fileno(), 1)) and byte != b"\n":
        data += byte
    return data.decode("utf-8", "replace")


def _checked_password(command: str, username: str) -> str:
    """A password read and checked against the strength rule before the database is opened."""
    from security import WeakPassword, check_strength

    password = _read_password(command)
    try:
        check_strength(password, username)
    except WeakPassword as exc:
        raise fail(f"users {command}", f"{exc}. Nothing was changed.") from None
    return password


def _username(command: str, raw: str) -> str:
    from security import AccountError, normalise_username

    try:
        return normalise_username(raw)
    except AccountError as exc:
        raise fail(f"users {command}", exc) from None






@app.command()
def add(
    username: Username,
    role_name: Annotated[str, typer.Option("--role", help="The user's role, e.g. clinician, nurse, clerk; "
                                                          "'emr users roles' lists them and what each may do.",
                                           show_default=False)],
    json_output: JsonOption = False,
) -> None:
    """Add a staff account with a role.

    \b
    The password is
      - the first line of standard input, when that is not a terminal:
            printf '%s\\n' "$PASSWORD" | emr users add nguyen.van.an --role nurse
      - else asked for twice, without showing it.
    A password must be at least 10 characters (a phrase is best), not one of the
    commonest passwords and not contain the user name; a weak one is refused with
    the reason and nothing is created. The password is never printed.

    Staff sign in at POST /auth/token with grant_type=password.
    """
    from security import role

    name = _username("add", username)
    try:
        role(role_name)
    except KeyError as exc:
        raise fail("users add", exc.args[0]) from None
    password = _checked_password("add", name)
    user: User = run("users add", lambda security: security.accounts.add_user(name, role_name, password))
    if json_output:
        print_json(user.to_json())
        return
    typer.echo(f"Added user '{user.username}' with role {user.role} ({role(user.role).title}).")
    typer.echo(_SIGN_IN)


@app.command("list")
def list_(json_output: JsonOption = False) -> None:
    """List the staff accounts.

    A table of user name, role, enabled or disabled, and when each was created
    (dd/mm/yyyy HH:MM, this computer's time); --json gives the same as a list.
    """
    users: list[User] = run("users list", lambda security: security.accounts.list_users())
    if json_output:
        print_json([u.to_json() for u in users])
        return
    if not users:
        typer.echo("No users yet. Add one with: emr users add USERNAME --role ROLE")
        return

    from rich.table import Table

    from emr.commands.output import stdout_console

    table = Table(title=f"{len(users)} user{'' if len(users) == 1 else 's'}", title_justify="left")
    table.add_column("username", no_wrap=True)
    table.add_column("role", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("created", no_wrap=True)
    for u in users:
        table.add_row(u.username, u.role, "disabled" if u.disabled else "enabled", when(u.created))
    stdout_console().print(table)


@app.command()
def disable(username: Username, json_output: JsonOption = False) -> None:
    """Disable a staff account and end its sign-ins.

    For someone who left, or whose password leaked. The user can no longer sign
    in, and the tokens they hold stop working on every server within a second.
    The account stays (the audit trail names it); 'emr users enable' undoes this.
    """
    name = _username("disable", username)
    user: User = run("users disable", lambda security: security.disable_user(name))
    if json_output:
        print_json(user.to_json())
        return
    typer.echo(f"User '{user.username}' is disabled: they cannot sign in, and their sign-ins have ended.")


@app.command()
def enable(username: Username, json_output: JsonOption = False) -> None:
    """Enable a disabled staff account again.

    The user can sign in with their (unchanged) password. If it may have leaked,
    also run 'emr users reset-password'.
    """
    name = _username("enable", username)
    user: User = run("users enable", lambda security: security.accounts.set_disabled(name, False))
    if json_output:
        print_json(user.to_json())
        return
    typer.echo(f"User '{user.username}' is enabled: they can sign in again.")


@app.command("reset-password")
def reset_password(username: Username, json_output: JsonOption = False) -> None:
    """Give a staff account a new password and end its sign-ins.

    A reset is often because the old password leaked, so the tokens the user
    holds stop working and they sign in again with the new one (POST /auth/token,
    grant_type=password).

    \b
    The new password is
      - the first line of standard input, when that is not a terminal,
      - else asked for twice, without showing it.
    A weak password is refused with the reason and nothing is changed.
    """
    name = _username("reset-password", username)
    password = _checked_password("reset-password", name)
    user: User = run("users reset-password", lambda security: security.reset_password(name, password))
    if json_output:
        print_json(user.to_json())
        return
    typer.echo(f"User '{user.username}' has a new password; their earlier sign-ins have ended.")


_SCOPE_SYNTAX = """\
How to read a scope: context/Type.permissions, e.g. user/Patient.rs
  context      user: a member of staff, signed in with grant_type=password;
               system: a system client ('emr clients'), grant_type=client_credentials
  Type         a FHIR resource type, or * for every type -- except AuditEvent:
               the audit trail is granted only by name (user/AuditEvent.rs)
  permissions  c create, r read, u update, d delete, s search
A token holds at most its role's scopes (fewer when the sign-in asks for fewer,
with scope=...). Tokens come from POST /auth/token."""


@app.command()
def roles(json_output: JsonOption = False) -> None:
    """Show what each role may do: its SMART scopes. Needs no database.

    For each role: its name (for 'emr users add --role'), its title, its work and
    the scopes its tokens carry; then how to read a scope.
    """
    from security import ROLES

    if json_output:
        print_json([{"name": r.name, "title": r.title, "does": r.does, "scopes": [str(s) for s in r.scopes],
                      "manages_accounts": r.manages_accounts, "bulk_export": r.bulk_export}
                     for r in ROLES.values()])
        return
    for r in ROLES.values():
        typer.echo(f"{r.name}: {r.title}")
        typer.echo(textwrap.fill(r.does, width=100, initial_indent="  ", subsequent_indent="  "))
        typer.echo(textwrap.fill(" ".join(str(s) for s in r.scopes), width=100, initial_indent="  scopes: ",
                                 subsequent_indent="          ", break_on_hyphens=False))
        extras = [what for what, yes in (("manages users and clients", r.manages_accounts),
                                         ("may run bulk exports", r.bulk_export)) if yes]
        if extras:
            typer.echo(f"  also: {', '.join(extras)}")
        typer.echo("")
    typer.echo(_SCOPE_SYNTAX)
