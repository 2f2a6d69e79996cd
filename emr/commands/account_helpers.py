"""What `emr users` and `emr clients` share: running one action on the security services, refusals, output.

Imports that cost start-up time happen inside the functions, so `emr --help` stays fast.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import typer

if TYPE_CHECKING:
    from security import Security

T = TypeVar("T")


def fail(command: str, message: object) -> typer.Exit:
    """Print why `command` (e.g. "users add") cannot be done; the caller raises the exit (code 1)."""
    typer.echo(f"{command}: {message}", err=True)
    return typer.Exit(1)


def when(instant: datetime) -> str:
    """dd/mm/yyyy HH:MM in this computer's time zone."""
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)
    return instant.astimezone().strftime("%d/%m/%Y %H:%M")


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, ensure_ascii=False))


def run(command: str, action: Callable[[Security], Awaitable[T]]) -> T:
    """`action(security)` on the configured database; a refusal (bad name, weak password, bad scope…) is
    printed and ends the command with exit code 1."""
    from emr.services import open_services
    from emr.settings import get_settings
    from security import AccountError, ScopeError, WeakPassword

    async def go() -> T:
        async with open_services(get_settings()) as services:
            return await action(services.security)

    try:
        return asyncio.run(go())
    except (AccountError, ScopeError, WeakPassword) as exc:
        raise fail(command, exc) from None
