"""The one path every FHIR interaction takes, Bundle entries included, so cross-cutting rules live once.

The HTTP layer turns each request into an `Interaction` and runs its handler
through `Pipeline.run`; the Bundle processor does the same for every entry of a
batch or transaction, with the Bundle's own interaction as `bundle`. So an
interceptor (authorisation, the audit trail) sees a `DELETE` inside a batch
exactly as it sees a plain `DELETE`. This is HAPI FHIR's interceptor idea
with the shape of ASGI middleware: an interceptor wraps the rest of the chain,
refuses by raising a `StoreError` (e.g. `Forbidden`), and learns the outcome
from the result's `status_code` or the exception that came back.

Nothing here knows HTTP: `headers` is the request's headers as a mapping (an
entry carries its Bundle's), and the result type is whatever the caller's
handler returns, as long as it has a `status_code`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar


@dataclass(frozen=True)
class Caller:
    """Who asks: a signed-in user or a system client (a partner hospital, a job); set by authentication."""

    kind: str  # "user" | "client"
    name: str  # the user name or client id
    role: str | None = None  # a user's role
    scope: str = ""  # the SMART scopes granted, space-separated
    address: str | None = None  # where the request came from
    #: A partner hospital's client acts for that facility: its facility code and its Organization here
    #: ("Organization/12"). None for the hospital's own staff and jobs.
    facility: str | None = None
    organization: str | None = None


@dataclass
class Interaction:
    """What a request asks for, in FHIR terms (`kind` is a FHIR interaction code, e.g. `read`, `search-type`)."""

    kind: str
    resource_type: str | None = None
    resource_id: str | None = None
    version_id: str | None = None
    conditional: bool = False
    #: For `kind == "operation"`: the operation's name without `$` (`export`, `lookup`, …).
    operation: str | None = None
    #: Search parameters or conditional criteria, as sent.
    query: tuple[tuple[str, str], ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    caller: Caller | None = None
    #: The network address the request came from (for the audit trail; a Bundle entry has its Bundle's).
    address: str | None = None
    #: For `search-compartment`: the compartment (`("Patient", "1")`); `resource_type` is the type searched.
    compartment: tuple[str, str] | None = None
    #: Set by an interceptor to narrow a search: only resources whose index holds one of the values under
    #: one of the keys (`{"owner": ["Organization/12"], "requester": [...]}`) are found.
    within: Mapping[str, Sequence[str]] | None = None
    #: The batch or transaction this interaction is an entry of, and its index there.
    bundle: Interaction | None = None
    entry: int | None = None
    #: Free space for interceptors (e.g. what authorisation decided, for the audit record).
    context: dict[str, Any] = field(default_factory=dict)


class Result(Protocol):
    """What a handler answers: an HTTP response, or a Bundle entry's outcome."""

    @property
    def status_code(self) -> int: ...


R = TypeVar("R", bound=Result)


class Interceptor(Protocol):
    async def __call__(self, interaction: Interaction, call_next: Callable[[Interaction], Awaitable[R]], /) -> R: ...


class Pipeline:
    def __init__(self, interceptors: Sequence[Interceptor] = ()) -> None:
        self.interceptors: list[Interceptor] = list(interceptors)

    def add(self, interceptor: Interceptor) -> None:
        self.interceptors.append(interceptor)

    async def run(self, interaction: Interaction, handler: Callable[[Interaction], Awaitable[R]]) -> R:
        call = handler
        for interceptor in reversed(self.interceptors):
            call = _bind(interceptor, call)
        return await call(interaction)


def _bind(interceptor: Interceptor, call_next: Callable[[Interaction], Awaitable[R]]) -> Callable[
        [Interaction], Awaitable[R]]:
    async def call(interaction: Interaction) -> R:
        return await interceptor(interaction, call_next)

    return call
