"""Authentication: the bearer token of each request becomes the interaction's `Caller`.

Runs in the pipeline before authorisation. A Bundle entry is its Bundle's
caller (checked once per Bundle, not per entry); the interactions a client
needs before it can sign in (`metadata`, `$versions`) need no token.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fhir_store import Caller, Interaction, ResultT, Unauthorized
from security.authorisation import is_public
from security.tokens import InvalidToken, TokenService


class Authenticator:
    def __init__(self, tokens: TokenService) -> None:
        self.tokens = tokens

    async def __call__(self, it: Interaction, call_next: Callable[[Interaction], Awaitable[ResultT]]) -> ResultT:
        if it.bundle is not None:
            it.caller = it.bundle.caller
        elif not is_public(it):
            it.caller = await self.caller(it.headers.get("authorization"), it.address)
        return await call_next(it)

    async def caller(self, authorization: str | None, address: str | None) -> Caller:
        if not authorization:
            raise Unauthorized("Sign in first: this request needs an access token (Authorization: Bearer …), "
                               "from the token endpoint named in /fhir/.well-known/smart-configuration")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("The Authorization header must be 'Bearer <access token>'")
        try:
            claims = await self.tokens.verify(token.strip())
        except InvalidToken as exc:
            raise Unauthorized(f"The access token is refused: {exc}") from None
        subject = claims.subject
        return Caller(subject.kind, subject.id, subject.role, subject.scope, address, subject.facility,
                      subject.organization)
