"""The one path every FHIR interaction takes, so cross-cutting rules live in one place.

Each route turns its HTTP request into an `Interaction` and hands it to
`Pipeline.run`. Interceptors (authentication, authorisation, the audit trail)
are registered once on the pipeline and see every interaction, in order, before
and after the handler — the shape of HAPI FHIR's interceptors and of ASGI
middleware, but with the FHIR meaning of the request already parsed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request, Response

Handler = Callable[["Interaction"], Awaitable[Response]]
Interceptor = Callable[["Interaction", Handler], Awaitable[Response]]


@dataclass
class Interaction:
    """What a request asks for, in FHIR terms (`kind` is a FHIR interaction code)."""

    kind: str
    request: Request
    resource_type: str | None = None
    resource_id: str | None = None
    version_id: str | None = None
    conditional: bool = False
    #: Free space for interceptors (e.g. the authenticated user).
    context: dict[str, Any] = field(default_factory=dict)


class Pipeline:
    def __init__(self, interceptors: list[Interceptor] | None = None) -> None:
        self.interceptors: list[Interceptor] = list(interceptors or [])

    def add(self, interceptor: Interceptor) -> None:
        self.interceptors.append(interceptor)

    async def run(self, interaction: Interaction, handler: Handler) -> Response:
        call = handler
        for interceptor in reversed(self.interceptors):
            call = _bind(interceptor, call)
        return await call(interaction)


def _bind(interceptor: Interceptor, nxt: Handler) -> Handler:
    async def call(interaction: Interaction) -> Response:
        return await interceptor(interaction, nxt)

    return call
