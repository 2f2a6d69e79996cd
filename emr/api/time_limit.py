"""Every request answers within `EMR_REQUEST_TIME_LIMIT`: past it, a 503 OperationOutcome says so.

The other limits (body size, search time, database timeout) bound each kind of work; this one
bounds a request as a whole, whatever it waits for, so a ward terminal is never left hanging. It
counts until the answer begins: a large export file streams for as long as the link needs. The
handler is cancelled at the limit: a transaction cut off there is rolled back; a single write
is one database command sent after validation, so it was most likely never sent, but a client
should read before repeating it.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from emr.api.responses import outcome_response
from fhir_store import Issue


class TimeLimit:
    def __init__(self, app: ASGIApp, *, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        deadline = asyncio.timeout(self.seconds)

        async def send_and_stop_counting(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                deadline.reschedule(None)
            await send(message)

        try:
            async with deadline:
                await self.app(scope, receive, send_and_stop_counting)
            return
        except TimeoutError:
            if started or not deadline.expired():
                raise
        scope.setdefault("state", {})["reason"] = f"over the request time limit of {self.seconds:g} s"
        answer = outcome_response(503, [Issue("timeout", f"The request took longer than this server's limit of "
                                                         f"{self.seconds:g} s (EMR_REQUEST_TIME_LIMIT) and was "
                                                         "stopped; read before repeating a write")],
                                  headers={"Retry-After": "10"})
        await answer(scope, receive, send)
