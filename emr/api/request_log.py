"""A request id on every answer, one log line per request, and unexpected errors answered without dropping
the connection.

Installed with `app.add_middleware`, so it runs inside Starlette's error
middleware and outside the exception handlers: an exception that reaches it is
a bug. It is answered here (500, an OperationOutcome naming the request id),
logged once with its traceback, and not raised further — Starlette's error
middleware would re-raise it, uvicorn would log it a second time and close the
client's keep-alive connection.

The id is the client's `X-Request-Id` when it sends a sane one (a proxy or a
terminal tying its own logs to ours), else a new one; the answer carries it in
`X-Request-Id`, and IT staff find the request's log line by it. A 4xx line
says why (the handlers put the reason in `request.state.reason`).
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from emr.api.responses import outcome_response
from fhir_store import Issue

REQUEST_ID = "X-Request-Id"
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
log = logging.getLogger("emr.request")


class RequestLog:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get("x-request-id", "")
        request_id = given if _SANE_ID.fullmatch(given) else uuid.uuid4().hex[:16]
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID] = request_id
            await send(message)

        method, path = scope.get("method", ""), scope.get("path", "")
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("request %s: unexpected error on %s %s", request_id, method, path)
            if status:  # the answer had begun: nothing more can be said on this connection
                raise
            state["reason"] = "unexpected error, traceback above"
            answer = outcome_response(500, [Issue("exception", f"Internal server error (request {request_id}): "
                                                               "the server log has the details under that id")])
            await answer(scope, receive, send_with_id)
        finally:
            elapsed = (time.perf_counter() - started) * 1000
            reason = state.get("reason")
            said = reason if reason and status >= 400 else None
            log.info("%s %s %s %d %.1f ms%s", request_id, method, path, status, elapsed, f" ({said})" if said else "",
                     extra={"request_id": request_id, "method": method, "path": path, "status": status,
                            "ms": round(elapsed, 1), "reason": said})
