"""Signing in (OAuth 2.0 token requests) and out (RFC 7009), each recorded in the audit trail.

- `password`: the hospital's own ward terminals and scripts send the user's
  name and password and get an access token and a refresh token. The scopes are
  those asked for (`scope`) cut down to the user's role, or the whole role.
- `client_credentials`: systems (partner hospitals, the sync worker, jobs)
  authenticate with their client id and secret and get an access token only.
- `refresh_token`: a new pair for the same user, the old refresh token used up;
  a disabled user cannot refresh.

Failures say as little as OAuth allows (`invalid_grant` whether the name or the
password was wrong) and are throttled (`throttle.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fhir_store import AuditTrail, format_instant, now
from security.accounts import Accounts
from security.audit import LOGIN, agent, outcome_code
from security.roles import role
from security.scopes import Scope, ScopeError, narrow, parse_scopes
from security.throttle import Throttle
from security.tokens import InvalidToken, Subject, TokenPair, TokenService

_LOGIN_SUBTYPE = {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110122", "display": "Login"}
_LOGOUT_SUBTYPE = {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110123", "display": "Logout"}


class SignInRefused(Exception):
    """An OAuth error answer: `error` is the RFC 6749 code, `status` the HTTP status."""

    def __init__(self, error: str, description: str, status: int = 400, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status
        self.retry_after = retry_after

    def to_json(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


@dataclass(frozen=True)
class Source:
    site: str
    observer: str


class SignIn:
    def __init__(self, accounts: Accounts, tokens: TokenService, throttle: Throttle, trail: AuditTrail,
                 source: Source) -> None:
        self.accounts = accounts
        self.tokens = tokens
        self.throttle = throttle
        self.trail = trail
        self.source = source

    async def token(self, form: dict[str, str], address: str | None,
                    basic: tuple[str, str] | None = None) -> TokenPair:
        grant = form.get("grant_type", "")
        if grant == "password":
            return await self._password(form.get("username", ""), form.get("password", ""), form.get("scope"),
                                        address)
        if grant == "client_credentials":
            client_id, secret = basic or (form.get("client_id", ""), form.get("client_secret", ""))
            return await self._client(client_id, secret, form.get("scope"), address)
        if grant == "refresh_token":
            return await self._refresh(form.get("refresh_token", ""), address)
        raise SignInRefused("unsupported_grant_type",
                            "grant_type must be password, client_credentials or refresh_token")

    async def revoke(self, token: str, address: str | None) -> None:
        await self.tokens.revoke(token)
        await self._record("anonymous", "user", None, address, 200, None, logout=True)

    # ---- grants ---------------------------------------------------------------------------------

    async def _password(self, username: str, password: str, scope: str | None, address: str | None) -> TokenPair:
        if not username or not password:
            raise SignInRefused("invalid_request", "username and password are required")
        await self._not_throttled(username, address)
        user = await self.accounts.check_password(username, password)
        if user is None:
            await self.throttle.failed(username, address)
            await self._record(username, "user", None, address, 400, "wrong user name or password, or disabled")
            raise SignInRefused("invalid_grant", "The user name or password is wrong, or the account is disabled")
        await self.throttle.succeeded(username)
        scopes = _granted(role(user.role).scopes, scope)
        pair = await self.tokens.issue(Subject("user", user.username, user.role, " ".join(map(str, scopes))),
                                       refresh=True)
        await self._record(user.username, "user", user.role, address, 200, None)
        return pair

    async def _client(self, client_id: str, secret: str, scope: str | None, address: str | None) -> TokenPair:
        if not client_id or not secret:
            raise SignInRefused("invalid_client", "client_id and client_secret are required", 401)
        await self._not_throttled(f"client:{client_id}", address)
        client = await self.accounts.check_client_secret(client_id, secret)
        if client is None:
            await self.throttle.failed(f"client:{client_id}", address)
            await self._record(client_id, "client", None, address, 401, "unknown client, wrong secret or disabled")
            raise SignInRefused("invalid_client", "The client is unknown or disabled, or the secret is wrong", 401)
        scopes = _granted(client.scopes, scope)
        pair = await self.tokens.issue(Subject("client", client.client_id, None, " ".join(map(str, scopes)),
                                               client.facility, client.organization), refresh=False)
        await self._record(client.client_id, "client", None, address, 200, None)
        return pair

    async def _refresh(self, refresh_token: str, address: str | None) -> TokenPair:
        try:
            subject, family = await self.tokens.refresh(refresh_token)
        except InvalidToken as exc:
            await self._record("anonymous", "user", None, address, 400, str(exc))
            raise SignInRefused("invalid_grant", f"The refresh token is refused: {exc}") from None
        user = await self.accounts.user(subject.id) if subject.kind == "user" else None
        if user is None or user.disabled:
            await self._record(subject.id, subject.kind, subject.role, address, 400, "the account is disabled")
            raise SignInRefused("invalid_grant", "The account is disabled")
        held = role(user.role).scopes
        scopes = narrow(held, parse_scopes(subject.scope))  # a role cut down since sign-in stays cut down
        pair = await self.tokens.issue(Subject("user", user.username, user.role, " ".join(map(str, scopes))),
                                       refresh=True, family=family)
        await self._record(user.username, "user", user.role, address, 200, None)
        return pair

    async def _not_throttled(self, name: str, address: str | None) -> None:
        wait = await self.throttle.wait(name, address)
        if wait:
            await self._record(name, "user", None, address, 429, "too many failed sign-ins: throttled")
            raise SignInRefused("slow_down", f"Too many failed sign-ins; try again in {wait} seconds", 429, wait)

    # ---- audit ----------------------------------------------------------------------------------

    async def _record(self, name: str, kind: str, role_name: str | None, address: str | None, status: int,
                      problem: str | None, *, logout: bool = False) -> None:
        event: dict[str, Any] = {
            "resourceType": "AuditEvent", "type": LOGIN, "subtype": [_LOGOUT_SUBTYPE if logout else _LOGIN_SUBTYPE],
            "action": "E", "recorded": format_instant(now()), "outcome": outcome_code(status),
            "agent": [agent(kind, name, role_name, address)],
            "source": {"site": self.source.site, "observer": {"display": self.source.observer}}}
        if problem:
            event["outcomeDesc"] = f"{status}: {problem}"
        await self.trail.record([event])


def _granted(held: tuple[Scope, ...], asked: str | None) -> list[Scope]:
    if not asked:
        return list(held)
    try:
        wanted = parse_scopes(asked)
    except ScopeError as exc:
        raise SignInRefused("invalid_scope", str(exc)) from None
    granted = narrow(held, wanted)
    if not granted:
        raise SignInRefused("invalid_scope", "None of the scopes asked for is allowed for this account")
    return granted
