"""`emr keys`: the keys that sign access tokens.

Rotating adds a new signing key and signs with it from then on; tokens signed
with an older key keep working until they expire (minutes), so rotation needs
no downtime. Every API process picks the new key up when it first sees a token
signed with it, or when it restarts.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer

app = typer.Typer(help="The keys that sign access tokens (sealed at rest with EMR_SECRET_KEY).",
                  no_args_is_help=True, rich_markup_mode=None)


@app.command()
def rotate(json_output: Annotated[bool, typer.Option("--json", help="Print the new key's id as JSON.")] = False,
           ) -> None:
    """Make a new signing key and sign new tokens with it.

    Do it after someone with access to the database or to EMR_SECRET_KEY leaves, and at least once a year.
    Tokens already given out keep working until they expire; nobody is signed out.
    """
    from emr.services import open_services
    from emr.settings import get_settings

    async def run() -> str:
        async with open_services(get_settings()) as services:
            return await services.security.tokens.rotate_key()

    kid = asyncio.run(run())
    typer.echo(json.dumps({"kid": kid}) if json_output else f"New signing key {kid}: new tokens are signed with it.")
