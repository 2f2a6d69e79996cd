"""Sign-in, authorisation and the audit trail: who may reach the record, and the trace of every access.

This is the package's one public face; `emr/` wires it in (`emr/services.py`) and
the HTTP layer exposes the token endpoints (`emr/api/auth.py`). No web
framework in here: authentication, authorisation and audit are interceptors of
the store's `Pipeline`, so they see every interaction, each Bundle entry included.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from fhir_store import FhirStore, Interceptor
from security.accounts import AccountError, Accounts, Client, User, normalise_username
from security.audit import AuditRecorder
from security.authentication import Authenticator
from security.authorisation import Authoriser
from security.confinement import FACILITY_SYSTEM, PARTNER_SCOPE, Confinement, partner_writes
from security.passwords import WeakPassword, check_strength
from security.roles import ROLES, Role, role
from security.scopes import Scope, ScopeError, parse_scopes
from security.signin import SignIn, SignInRefused, Source
from security.throttle import Throttle
from security.tokens import InvalidToken, Subject, TokenPair, TokenService

__all__ = [
    "FACILITY_SYSTEM", "PARTNER_SCOPE", "ROLES", "AccountError", "Accounts", "Client", "InvalidToken", "Role",
    "Scope", "ScopeError", "Security", "SignIn", "SignInRefused", "Subject", "TokenPair", "TokenService", "User",
    "WeakPassword", "check_strength", "normalise_username", "parse_scopes", "partner_writes", "role",
    "server_secret",
]


def server_secret(configured: str | None, data_dir: Path) -> bytes:
    """The secret that seals the signing keys: `EMR_SECRET_KEY`, else `secret.key` in the data directory
    (made on first use, readable by its owner only). Every API process of a site must share it."""
    if configured:
        return configured.encode()
    path = data_dir / "secret.key"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(32), encoding="ascii")
    return path.read_text(encoding="ascii").strip().encode()


@dataclass
class Security:
    """Everything sign-in and access control need, built once per process by the composition root.

    The store is built first, with `partner_writes` among its write checks: the write side of a partner
    client's confinement, which must see each resource as it will be stored.
    """

    accounts: Accounts
    tokens: TokenService
    throttle: Throttle
    signin: SignIn
    interceptors: list[Interceptor] = field(default_factory=list)

    @classmethod
    def build(cls, db: AsyncDatabase[dict[str, Any]], store: FhirStore, *, secret: Callable[[], bytes], issuer: str,
              site: str,
              access_ttl: timedelta, refresh_ttl: timedelta) -> Security:
        accounts = Accounts(db)
        tokens = TokenService(db, secret, issuer=issuer, access_ttl=access_ttl, refresh_ttl=refresh_ttl)
        throttle = Throttle(db)
        source = Source(site, "An Giang EMR")
        signin = SignIn(accounts, tokens, throttle, store.audit_trail, source)
        interceptors: list[Interceptor] = [
            AuditRecorder(store.audit_trail, store.patients_of, site=site, observer=source.observer),
            Authenticator(tokens),
            Authoriser(lambda: store.registry),
            Confinement(store),
        ]
        return cls(accounts, tokens, throttle, signin, interceptors)

    async def ensure_indexes(self) -> None:
        await self.tokens.ensure_indexes()
        await self.throttle.ensure_indexes()

    async def disable_user(self, username: str) -> User:
        """Disable an account and end its tokens at once."""
        user = await self.accounts.set_disabled(username, True)
        await self.tokens.revoke_subject(f"user/{user.username}")
        return user

    async def reset_password(self, username: str, password: str) -> User:
        """A new password; the old sign-ins end (a reset is often because the old one leaked)."""
        user = await self.accounts.reset_password(username, password)
        await self.tokens.revoke_subject(f"user/{user.username}")
        return user

    async def disable_client(self, client_id: str) -> Client:
        client = await self.accounts.set_client_disabled(client_id, True)
        await self.tokens.revoke_subject(f"client/{client.client_id}")
        return client
